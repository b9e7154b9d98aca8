# Two entry points (see README): `make reproduce` and `make test` (which lints first; CI runs it).
# Both create .venv/ on first use; later runs reuse it until pyproject or the install scripts change.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: reproduce test lint deps env clean-env

env: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh scripts/install_mmseg.sh scripts/install_detectron2.sh
	bash scripts/install.sh $(PYTHON) $(VENV)
	touch $(STAMP)

reproduce: $(STAMP)
	dvc repro
	@echo
	@cat results/results.md
	@echo
	@cat results/teachers.md

# ruff, and dvc.yaml's code dependencies against the import graph of each stage's command
lint: $(STAMP)
	ruff check .
	python scripts/dvc_deps.py --check

# rewrite dvc.yaml's code dependencies from the import graph (after adding or moving an import)
deps: $(STAMP)
	python scripts/dvc_deps.py

test: lint
	pytest -q

clean-env:
	rm -rf $(VENV)
