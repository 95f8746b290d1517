# Two commands do all the setup on a fresh machine with Python 3:
#   make run    create .venv, install, start the service and show demo cards
#   make test   create .venv, install with test extras, run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8080

.PHONY: run test install demo serve clean bench

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/activate setup.cfg
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/mg-cds demo

run: demo
	CDS_AUTH_MODE=$${CDS_AUTH_MODE:-off} $(BIN)/mg-cds serve --host 127.0.0.1 --port $(PORT)

test: install
	$(BIN)/python -m pytest

# Benchmarks (figures, not pass/fail): in-process, gunicorn over HTTP, fallback fetch, memory.
bench: install
	$(BIN)/python -m pip install --quiet 'matplotlib>=3.7'
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/bench_state.py

clean:
	rm -rf $(VENV) *.egg-info instance test-artifacts
