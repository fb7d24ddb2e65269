# The two commands of the README: `make demo` (the main job) and `make test` (the suite).
# Both run `make setup` first, which is a no-op when nothing changed.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= runs/demo
# Measured on the 2-core machines: idle OpenMP threads must not spin on shared cores (2-10x
# slower otherwise), and huge pages cut the page-fault cost of the simulator's day buffers.
export OMP_WAIT_POLICY ?= PASSIVE
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: setup demo test test-slow bench lint clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m recsys_onpolicy.cli run configs/quickstart.yaml --out $(DEMO_OUT) --overwrite

test: setup
	$(PY) -m pytest -n 2 --dist loadfile

test-slow: setup
	$(PY) -m pytest -m slow

bench: setup
	$(PY) bench/simulator.py
	$(PY) bench/train.py

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
