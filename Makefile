# The two commands of the README: `make demo` (the main job) and `make test` (the suite).
# Both run `make setup` first, which is a no-op when nothing changed.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= runs/demo

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
