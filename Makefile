# Two commands do all the setup on a fresh machine with Python 3:
#   make run    create .venv, install, start the service and show demo cards
#   make test   create .venv, install with test extras, run the test suite
#   make lint   ruff (rules in ruff.toml) and mypy on the public modules (setup.cfg [mypy])
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8080

.PHONY: run test lint install demo serve clean bench reliability browser-deps ci-deps

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# make run needs only the service; make test and make lint add the test and lint extras
$(VENV)/.installed-run: $(BIN)/activate setup.cfg
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed: $(BIN)/activate setup.cfg
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed-run
	$(BIN)/mg-cds demo

run: demo
	CDS_AUTH_MODE=$${CDS_AUTH_MODE:-off} CDS_PREVIEW=$${CDS_PREVIEW:-true} $(BIN)/mg-cds serve --host 127.0.0.1 --port $(PORT)

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# Headless chromium + chromedriver for the preview page's browser test (Debian; needs root or sudo).
browser-deps:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# Everything CI needs besides Python (Debian, as root): chromium + chromedriver (preview browser test),
# PostgreSQL server binaries (the replica tests start their own cluster with initdb), Node.js 20+ and npm
# (the Medplum suite's npm ci; NodeSource's nodejs ships npm, Debian's needs the npm package), and
# util-linux's setpriv (the image-user test). Fails when anything is still missing afterwards.
CI_PACKAGES := chromium chromium-driver postgresql nodejs util-linux
ci-deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CI_PACKAGES) >/dev/null
	command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
	command -v chromium && command -v chromedriver && command -v npm && command -v setpriv
	node -e 'const v = +process.versions.node.split(".")[0]; if (v < 20) { console.error("Node " + v + ": 20 or later needed"); process.exit(1) }'
	ls /usr/lib/postgresql/*/bin/initdb

# Benchmarks (figures, not pass/fail): in-process, gunicorn over HTTP, fallback fetch, memory.
# The plot goes to $TMPDIR/mg-cds-bench/; `make bench PLOT=benchmarks/latency.png` updates the committed one.
bench: install
	$(BIN)/python -m pip install --quiet 'matplotlib>=3.7'
	$(BIN)/python benchmarks/run.py $(if $(PLOT),--plot $(PLOT))
	$(BIN)/python benchmarks/bench_state.py

# Long reliability checks (minutes): fuzzing at volume, load, soak, SIGKILL durability.
# Their output is the tables in docs/RELIABILITY.md; exits non-zero when any check failed.
reliability: install
	$(BIN)/python reliability/run.py

clean:
	rm -rf $(VENV) *.egg-info instance test-artifacts
