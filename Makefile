# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first if needed.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.bootstrap-stamp
SCALE  ?= 1
WORKDIR ?= demo_run
PYTEST_ARGS ?=

export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
export RAY_USAGE_STATS_ENABLED = 0

.PHONY: env demo test test-all bench lock clean

env: $(STAMP)

$(STAMP): requirements.lock scripts/bootstrap.sh pyproject.toml
	PYTHON=$(PYTHON) bash scripts/bootstrap.sh
	@touch $@

## the main job on built-in sample data: generate the sample pyramid, ingest it, compute flow, print the funnel
demo: $(STAMP)
	$(VENV)/bin/pyramid demo --config configs/demo.yaml --workdir $(WORKDIR) --scale $(SCALE)

## the test suite (slow tests excluded; `make test-all` runs them too)
test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/bench_ingest.py
	$(PY) bench/bench_flow.py
	$(PY) bench/bench_vae.py

## re-resolve requirements.lock from pyproject.toml + overrides.txt (needs the torch CPU wheel in find-links)
lock: $(STAMP)
	$(VENV)/.tools/bin/uv pip compile pyproject.toml --override overrides.txt -p 3.11 \
	  --python-platform x86_64-manylinux_2_28 $(foreach f,$(or $(UV_FIND_LINKS),$(PIP_FIND_LINKS)),--find-links $(f)) \
	  --no-header -o requirements.lock

clean:
	rm -rf $(WORKDIR) .pytest_cache
