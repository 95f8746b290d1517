# Two commands do all the setup on a fresh machine with Python 3:
#   make run    create .venv, install, start the service and show demo cards
#   make test   create .venv, install with test extras, run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8080

.PHONY: run test install demo serve clean bench reliability browser-deps

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
	CDS_AUTH_MODE=$${CDS_AUTH_MODE:-off} CDS_PREVIEW=$${CDS_PREVIEW:-true} $(BIN)/mg-cds serve --host 127.0.0.1 --port $(PORT)

test: install
	$(BIN)/python -m pytest

# Headless chromium + chromedriver for the preview page's browser test (Debian; needs root or sudo).
browser-deps:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# Benchmarks (figures, not pass/fail): in-process, gunicorn over HTTP, fallback fetch, memory.
bench: install
	$(BIN)/python -m pip install --quiet 'matplotlib>=3.7'
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/bench_state.py

# Long reliability checks (minutes): fuzzing at volume, load, soak, SIGKILL durability.
# Their output is the tables in docs/RELIABILITY.md.
reliability: install
	$(BIN)/python reliability/run.py

clean:
	rm -rf $(VENV) *.egg-info instance test-artifacts
