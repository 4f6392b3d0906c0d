.PHONY: setup test demo bench clean
PY := .venv/bin/python

setup:
	@bash tools/setup.sh

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) -m sbnn pipeline examples/quickstart.toml

bench: setup
	$(PY) benchmarks/hw_sim_vs_lava.py

clean:
	rm -rf .venv .venv-lava .pytest_cache
