# The sparsekit book: `make book` builds it, `make test` runs every check.
# Nothing needs activating: every tool is called from .venv/bin.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 >/dev/null 2>&1 && echo python3.11 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JB_FLAGS := -n -W --keep-going --all
LINT_PATHS := sparsekit tests benchmarks .ci

# Same results on every run (set iteration order), and the kernel named python3 is always
# the one installed in .venv, even where a user-wide kernel of that name exists.
export PYTHONHASHSEED := 0
export JUPYTER_PREFER_ENV_PATH := 1
# Quiet the debugger's note about frozen modules that new kernels print on start-up.
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: help venv book book-committed lint unit nbval browser test notebooks mutants lab explore test-live model clean distclean

help:
	@echo "make book       create .venv, install, build the HTML book into _build/html"
	@echo "make test       venv, lint, unit, nbval, book-committed, browser and test-live, stopping at the first failure"
	@echo "make book-committed  build the book from the committed outputs (nbval verifies them)"
	@echo "make lint       ruff check and ruff format --check"
	@echo "make unit       pytest tests (COMPILE_TESTS=0: without the compiled FlexAttention tests)"
	@echo "make nbval      pytest --nbval on every notebook (committed outputs must reproduce)"
	@echo "make browser    check the built book in Chromium (installs Debian's chromium if missing)"
	@echo "make notebooks  re-execute every notebook in place and save its outputs"
	@echo "make mutants    plant faults in a copy of sparsekit and check the unit tests catch each"
	@echo "make lab        live sliders: install JupyterLab (pinned) and open the introduction (Ctrl-C stops)"
	@echo "make explore    live sliders without code: serve the pattern explorer page (Voila)"
	@echo "make test-live  move every live slider in JupyterLab and the explorer in Chromium"
	@echo "make model      retrain the model shipped for chapter 10 (sparsekit/models/views_llama, minutes)"
	@echo "make clean      remove _build and runs;  make distclean  also removes .venv"

venv: $(STAMP)

# Re-install only when the requirements or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --no-input -r requirements.txt
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 \
		--display-name "Python 3 (sparsekit)"
	touch $@

book: venv
	$(BIN)/jupyter-book build . $(JB_FLAGS)
	@echo "The book is in _build/html/index.html"

# The book from the notebooks' committed outputs, without executing them: `make test` runs this right
# after `make nbval`, which executed every notebook and failed on any output that differs from the
# committed one, so each notebook is executed once per `make test`. Same configuration as `make book`
# except `execute_notebooks: "off"` (a copy in _build/; the check fails if that line ever changes).
VERIFIED_CONFIG := _build/_config_committed_outputs.yml
book-committed: venv
	mkdir -p _build
	sed 's/^  execute_notebooks: force$$/  execute_notebooks: "off"/' _config.yml > $(VERIFIED_CONFIG)
	grep -q '^  execute_notebooks: "off"$$' $(VERIFIED_CONFIG)
	$(BIN)/jupyter-book build . --config $(VERIFIED_CONFIG) $(JB_FLAGS)
	@echo "The book (committed outputs) is in _build/html/index.html"

# The workflow is checked offline against GitHub's workflow schema (check-jsonschema's vendored
# copy); actionlint itself runs in the workflow, where it can download its binary.
lint: venv
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

# COMPILE_TESTS=1 (the default): also compile FlexAttention's C++ CPU kernel (the proof that the
# compiled kernel reads sparsekit's tile tables); about 20 s more with a cold compiler cache.
# `make unit COMPILE_TESTS=0` is the quick suite, about a minute on two cores.
# -n: pytest-xdist workers (one test file each at a time, so a file's module fixtures run once), the
# files in collection order (--no-loadscope-reorder: tests/conftest.py puts the longest first);
# UNIT_WORKERS=0 runs in this process. -p no:nbval: the unit tests need no nbval, whose import costs
# each pytest process about 2 s.
UNIT_WORKERS ?= 2
COMPILE_TESTS ?= 1
unit: venv
	SPARSEKIT_COMPILE_TESTS=$(COMPILE_TESTS) $(BIN)/python -m pytest tests -q --ignore=tests/browser \
		--ignore=tests/live -n $(UNIT_WORKERS) --dist loadfile --no-loadscope-reorder -p no:nbval

# By hand, not part of `make test`: plant each fault of tests/mutants.py in a copy of the package and
# run the unit suite on it (-x, a time limit per test); prints which test caught each fault and when.
# MUTANTS_ARGS="--ref HEAD -k strided" checks the last commit, only the faults named "strided".
mutants: venv
	$(BIN)/python tests/mutants.py $(MUTANTS_ARGS)

# The built book in a real browser (tests/browser): Debian's Chromium driven by Playwright's
# Python package, pages served on 127.0.0.1. Run after `make book`; no browser is downloaded.
# CHROMIUM=/path/to/chrome uses another Chromium build (the workflow uses the runner's Chrome).
CHROMIUM ?= /usr/bin/chromium
export CHROMIUM
BROWSER_STAMP := $(VENV)/.browser-installed
$(BROWSER_STAMP): tests/browser/requirements.txt $(STAMP)
	$(BIN)/python -m pip install --disable-pip-version-check --no-input -q -r $<
	touch $@

browser: venv $(BROWSER_STAMP)
	test -x $(CHROMIUM) || { apt-get update -qq && apt-get install -y -qq chromium; }
	$(BIN)/python -m pytest tests/browser -q

# Live sliders (issue 17): JupyterLab and Voila from requirements-live.txt, installed into .venv by
# these targets only, so `make book` stays lean. Both listen on 127.0.0.1 only; Ctrl-C shuts the server
# and its kernels down (answer_yes: no "Shut down? y/n" question). LAB_ARGS / EXPLORE_ARGS add options,
# e.g. make lab LAB_ARGS="--no-browser --port=9999".
LIVE_STAMP := $(VENV)/.live-installed
# Jupyter refuses to run as root unless told (containers and CI runners often are root).
AS_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
$(LIVE_STAMP): requirements-live.txt $(STAMP)
	$(BIN)/python -m pip install --disable-pip-version-check --no-input -q -r $<
	touch $@

lab: venv $(LIVE_STAMP)
	exec $(BIN)/jupyter-lab --ServerApp.ip=127.0.0.1 --ServerApp.answer_yes=True $(AS_ROOT) $(LAB_ARGS) \
		notebooks/00_introduction.ipynb

explore: venv $(LIVE_STAMP)
	exec $(BIN)/voila explore/explorer.ipynb --Voila.ip=127.0.0.1 $(EXPLORE_ARGS)

# Each chapter in JupyterLab up to its live cell, every slider in view moved by keyboard and mouse (the
# picture must change, the printed numbers be sparsekit's), and the explorer page, in Debian's Chromium.
# Part of `make test`: about 7 to 14 minutes on two shared cores.
test-live: venv $(LIVE_STAMP) $(BROWSER_STAMP)
	test -x $(CHROMIUM) || { apt-get update -qq && apt-get install -y -qq chromium; }
	$(BIN)/python -m pytest tests/live/test_live_sliders.py -q -p no:randomly

nbval: venv
	@if compgen -G "notebooks/*.ipynb" >/dev/null; then \
		echo "$(BIN)/python -m pytest --nbval --nbval-current-env --timeout=900 notebooks -q"; \
		$(BIN)/python -m pytest --nbval --nbval-current-env --timeout=900 notebooks -q; \
	else \
		echo "nbval: no notebooks in notebooks/ yet"; \
	fi

# Every check, in order, stopping at the first failure, with the time each one took.
test:
	@total=$$(date +%s); \
	for step in venv lint unit nbval book-committed browser test-live; do \
		start=$$(date +%s); \
		echo "==> make $$step"; \
		$(MAKE) --no-print-directory $$step || { echo "==> make $$step FAILED"; exit 1; }; \
		echo "==> make $$step: ok in $$(( $$(date +%s) - start )) s"; \
	done; \
	echo "==> make test: all checks passed in $$(( $$(date +%s) - total )) s"

# Re-execute every notebook in notebooks/ and save it in place: each runs in notebooks/ with
# the .venv kernel (python3), 600 s per cell, and no execution timestamps are written, so the
# saved notebooks change only where their outputs do. (nbclient does the work: `jupyter
# nbconvert` is not among the requirements, and `jupyter execute` always records timings.)
define EXECUTE_NOTEBOOKS
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

for name in sys.argv[1:]:
    path = Path(name)
    print(f"==> executing {path}", flush=True)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", record_timing=False,
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    nbformat.write(nb, path)
endef
export EXECUTE_NOTEBOOKS

# `make notebooks NOTEBOOKS=notebooks/02_strided.ipynb` re-executes only the ones named.
NOTEBOOKS ?= notebooks/*.ipynb
notebooks: venv
	@if compgen -G "$(firstword $(NOTEBOOKS))" >/dev/null; then \
		$(BIN)/python -c "$$EXECUTE_NOTEBOOKS" $(NOTEBOOKS); \
	else \
		echo "no notebooks in notebooks/ yet"; \
	fi

# Retrain the small Llama shipped in sparsekit/models/views_llama (sparsekit.fusion_task); the same seed and
# steps give the same weights. OMP_WAIT_POLICY=PASSIVE: on a machine busier than its cores, spinning
# OpenMP threads made each step up to 19 times slower (measured on the shared 2-core machine).
model: venv
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m sparsekit.torch.train_fusion --out sparsekit/models/views_llama

clean:
	rm -rf _build runs generated .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
