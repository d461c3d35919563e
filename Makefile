# Two commands for a newcomer (see README.md): `make demo` and `make test`.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed
# Blender 4.5 LTS side environment: the render tests run against it too.
VENV45_STAMP := .venv45/.installed
BPY45 := bpy==4.5.15

$(VENV_STAMP): pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	.venv/bin/pip install --quiet -e ".[test]"
	touch $@

$(VENV45_STAMP): pyproject.toml
	python3 -m venv .venv45
	.venv45/bin/pip install --quiet "$(BPY45)" "numpy>=1.26,<2" imageio trimesh rtree pytest openexr
	touch $@

.PHONY: setup demo test lint test-bpy45 bench
setup: $(VENV_STAMP)

# Render a small Domain A data set from the bundled patients and write its preview sheet.
demo: $(VENV_STAMP)
	$(PY) blender_addon/render.py --meshes meshes --out data/A --frames-per-scene 2 --preview-frames 10
	@echo "open data/A/preview.png"

test: $(VENV_STAMP) $(VENV45_STAMP)
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest
	$(MAKE) --no-print-directory test-bpy45

# Lint (pyflakes, import order, bugbear; pyproject.toml) and the layout's rules: what may import what,
# no import cycles (tests/test_architecture.py, also part of the full pytest run).
lint: $(VENV_STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -p no:cacheprovider tests/test_architecture.py

test-bpy45: $(VENV45_STAMP)
	PYTHONPATH=. .venv45/bin/python -m pytest -q -p no:cacheprovider tests/test_render.py tests/test_png_exr.py

bench: $(VENV_STAMP)
	$(PY) bench/render_bench.py
