# The two quick-start commands: `make demo` (set up, then a complete audit demo in embedded
# mode) and `make test` (set up, then lint and the whole test suite). Both are idempotent.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and torchvision are installed as a matched pair first, so pip never pairs the
# machine's local CPU-only torch wheel with a torchvision built for another torch.
TORCH_PAIR ?= torch==2.9.1 torchvision==0.24.1
# PyPI's Linux wheels of torch are the CUDA build (about 7 GB in .venv, even on a CPU-only
# machine). Where PyTorch's own CPU index can be reached, `make demo TORCH_INDEX=<its URL>`
# (the CPU wheel index PyTorch's install page gives) installs the CPU build instead.
TORCH_INDEX ?=

.PHONY: setup demo test lint bench browser servers openapi

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH_PAIR)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: browser tests will be skipped (set PPR_REQUIRE_BROWSER=1 to fail instead)"; }

# the fault tests start their own Redis: the redis-server binary must be on PATH
servers:
	@command -v redis-server >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; } || { echo "make test needs the redis-server binary (Debian: apt-get install redis-server)" >&2; exit 1; }

demo: setup
	$(VENV)/bin/ppr demo --out out/demo

lint: setup
	$(VENV)/bin/ruff check .

test: setup browser servers
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q -ra --durations=25

openapi: setup
	$(VENV)/bin/python -m service.openapi_dump openapi/openapi.json

bench: setup
	$(VENV)/bin/python bench/make_backdoor_cpu.py
	$(VENV)/bin/python bench/demo_walltime.py
	$(VENV)/bin/python bench/train_throughput.py --arch small_cnn --images 8000 --workers 2
