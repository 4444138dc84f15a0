PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: install lint typecheck redis-server unit test demo limits faults bench bench-smoke clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,fast]'
	touch $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy --strict batchpoll

# The shared-budget tests start their own redis-server on a free loopback port; this only makes
# sure the binary is there (from Debian's packages), and never starts a system service.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server from Debian's packages for the shared-budget tests"; \
		if [ "$$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi; \
		$$sudo apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends redis-server; \
	}

unit: install redis-server
	$(BIN)/pytest -q

test: lint typecheck unit

demo: install
	$(BIN)/batchpoll demo

limits: install
	$(BIN)/python benchmarks/limits.py

faults: install
	$(BIN)/python benchmarks/faults.py

# Full sizes, every client side by side; writes benchmarks/results.md and results.png.
bench: install $(BENCH_STAMP)
	$(BIN)/python benchmarks/run.py

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,fast,bench]'
	touch $(BENCH_STAMP)

# The tiny sizes that tests/test_bench_smoke.py runs inside `make test`: checks ids, never speed.
bench-smoke: install
	$(BIN)/python benchmarks/run.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
