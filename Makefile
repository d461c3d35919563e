# Two commands for a newcomer (see README.md): `make demo` and `make test`.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed
# Blender side environments: the render subset also runs against Blender 4.5 LTS (Python 3.11) and 5.3 (Python 3.13).
VENV45_STAMP := .venv45/.installed
BPY45 := bpy==4.5.15
VENV53_STAMP := .venv53/.installed
BPY53 := bpy==5.3.0
# What runs on the other Blender versions: renders end to end, the EXR reader, the extension installed by Blender.
BPY_SUBSET := tests/test_render.py tests/test_png_exr.py tests/test_addon.py::test_installs_and_enables_as_an_extension_headlessly tests/test_motion.py::test_cycles_vector_pass_gives_the_flow_of_a_known_camera_and_tool_move
BPY_SIDE_PACKAGES := imageio trimesh rtree pytest openexr

# The first interpreter that is Python $(1): pythonX.Y on PATH (pyenv's shims answer only for the selected
# version), pyenv's own copies, then python3. Empty when none is.
PYENV_ROOT ?= $(HOME)/.pyenv
find_python = $(firstword $(foreach c,python$(1) $(sort $(wildcard $(PYENV_ROOT)/versions/$(1).*/bin/python$(1))) python3,\
  $(if $(filter $(1),$(shell $(c) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)),$(c))))
PY311 = $(call find_python,3.11)
PY313 = $(call find_python,3.13)

# The main environment: the backend, bpy 5.0.1 (the [render] extra on 3.11) and the test tools, at the versions
# CI tests (constraints-py311.txt).
$(VENV_STAMP): pyproject.toml constraints-py311.txt
	@test -n "$(PY311)" || { echo "make: no Python 3.11 found (python3.11, pyenv or python3); bpy 5.0.1 needs it"; exit 1; }
	$(PY311) -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	.venv/bin/pip install --quiet -e ".[render,test]" -c constraints-py311.txt
	touch $@

$(VENV45_STAMP): pyproject.toml
	@test -n "$(PY311)" || { echo "make: no Python 3.11 found (python3.11, pyenv or python3); bpy 4.5 needs it"; exit 1; }
	$(PY311) -m venv .venv45
	.venv45/bin/pip install --quiet "$(BPY45)" "numpy>=1.26,<2" $(BPY_SIDE_PACKAGES)
	touch $@

$(VENV53_STAMP): pyproject.toml
	$(PY313) -m venv .venv53
	.venv53/bin/pip install --quiet "$(BPY53)" $(BPY_SIDE_PACKAGES)
	touch $@

.PHONY: setup demo test lint test-bpy45 test-bpy53 bench
setup: $(VENV_STAMP)

# Render a small Domain A data set from the bundled patients and write its preview sheet.
demo: $(VENV_STAMP)
	$(PY) blender_addon/render.py --meshes meshes --out data/A --frames-per-scene 2 --preview-frames 10
	@echo "open data/A/preview.png"

test: $(VENV_STAMP) $(VENV45_STAMP)
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest
	$(MAKE) --no-print-directory test-bpy45
	$(MAKE) --no-print-directory test-bpy53

# Lint (pyflakes, import order, bugbear; pyproject.toml) and the layout's rules: what may import what,
# no import cycles (tests/test_architecture.py, also part of the full pytest run).
lint: $(VENV_STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -p no:cacheprovider tests/test_architecture.py

test-bpy45: $(VENV45_STAMP)
	PYTHONPATH=. .venv45/bin/python -m pytest -q -p no:cacheprovider $(BPY_SUBSET)

# Blender 5.3 (bpy wheels for it exist on Python 3.13 only): skipped, with one line, where no Python 3.13 is found.
test-bpy53:
	@py="$(PY313)"; if [ -z "$$py" ]; then \
	  echo "test-bpy53: skipped, no Python 3.13 found (python3.13 or pyenv): Blender 5.3 is not tested here"; \
	else \
	  $(MAKE) --no-print-directory $(VENV53_STAMP) && \
	  PYTHONPATH=. .venv53/bin/python -m pytest -q -p no:cacheprovider $(BPY_SUBSET); \
	fi

bench: $(VENV_STAMP)
	$(PY) bench/render_bench.py
