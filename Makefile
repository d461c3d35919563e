# Two commands for a newcomer (see README.md): `make demo` and `make test`.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

$(VENV_STAMP): pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	.venv/bin/pip install --quiet -e ".[test]"
	touch $@

.PHONY: setup demo test bench
setup: $(VENV_STAMP)

# Render a small Domain A data set from the bundled patients and write its preview sheet.
demo: $(VENV_STAMP)
	$(PY) blender_addon/render.py --meshes meshes --out data/A --frames-per-scene 2 --preview-frames 10
	@echo "open data/A/preview.png"

test: $(VENV_STAMP)
	$(PY) -m pytest

bench: $(VENV_STAMP)
	$(PY) bench/render_bench.py
