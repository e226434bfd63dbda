# The two commands the README gives: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= ../shared/data
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1

# The Debian packages of tools/system-packages.sh: `make demo` needs fewer than the tests.
PACKAGES ?= test

.PHONY: system-packages install demo test test-fast lint bench

system-packages:
	@sh tools/system-packages.sh $(PACKAGES)

$(VENV)/.installed: pyproject.toml tools/pyproject.toml | system-packages
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' -e tools
	touch $@

install: $(VENV)/.installed

demo: PACKAGES = demo
demo: install
	$(PY) -m sleepfed_tools.demo --data $(DATA)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	SLEEPFED_DATA=$(abspath $(DATA)) $(PY) -m pytest -q --durations=30 -n 2 --dist loadgroup

test-fast: install
	SLEEPFED_DATA=$(abspath $(DATA)) $(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) benchmarks/bench_ingest.py
	$(PY) benchmarks/bench_memory.py --data $(abspath $(DATA))
	$(PY) benchmarks/bench_ble.py
	$(PY) benchmarks/bench_fuzz.py
	$(PY) benchmarks/bench_qemu_round.py --data $(abspath $(DATA))
	$(PY) benchmarks/bench_federated.py --data $(abspath $(DATA))
	# a small fleet of real boards (its 20-board figures: the same scripts with their defaults)
	$(PY) benchmarks/bench_load.py --data $(abspath $(DATA)) --boards 2 --rounds 3 --rate 20 --compare-sqlite
	$(PY) benchmarks/bench_real_nodes.py --data $(abspath $(DATA)) --nodes 4 --rounds 3
	# the same small fleet on the earlier design's code (commit ba0bc07), then on this one
	$(PY) benchmarks/bench_before_after.py --data $(abspath $(DATA)) --boards 2 --rounds 3 --rate 20
	# the docs' generated tables from benchmarks/results/*.json (tests/unit/test_docs.py checks them)
	$(PY) -m sleepfed_tools.bench_tables --write
