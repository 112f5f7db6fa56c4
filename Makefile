# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv on first use.
# The ros-jazzy-* wheels are built for CPython 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# vision_msgs has no wheel: interfaces/build_vision_msgs.py builds it into the venv (needs cmake
# and a C/C++ compiler). VISION_MSGS=0 skips that; the node then publishes its JSON fallback.
VISION_MSGS ?= 1
INTERFACE_SOURCES := interfaces/build_vision_msgs.py $(wildcard interfaces/vision_msgs/*.*) \
	$(wildcard interfaces/vision_msgs/msg/*.msg)

.PHONY: venv test test-fast lint format demo bench clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.py $(INTERFACE_SOURCES)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@if [ "$(VISION_MSGS)" != 0 ]; then $(BIN)/python interfaces/build_vision_msgs.py; fi
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# pytest-xdist: each module runs whole on one worker (test/conftest.py); the node tests mostly
# wait on DDS, so two workers fill two cores (docs/performance.md, "Test suite"). Tests marked
# `serial` race a child process on timing and run alone afterwards.
PYTEST_WORKERS ?= 2

test: lint
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -m "not serial"
	$(BIN)/python -m pytest -m serial

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -m "not slow and not serial"
	$(BIN)/python -m pytest -m "serial and not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: $(STAMP)
	$(BIN)/tl-perception demo

bench: $(STAMP)  # results go to docs/performance.md by hand; each takes 2-5 minutes
	$(BIN)/python bench/bench_node.py
	$(BIN)/python bench/bench_extract.py
	$(BIN)/python bench/bench_feature_cache.py
	$(BIN)/python bench/bench_node_rois.py
	$(BIN)/python bench/bench_node_cameras.py
	$(BIN)/python bench/bench_smoothing.py

clean:
	rm -rf $(VENV) build install log *.egg-info
