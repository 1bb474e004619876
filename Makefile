# streamsolve — one-command setup, solve, tests and benchmarks.
#   make solve                       the main job on the embedded default corpus
#   make solve CORPUS='a.txt.gz b/'  the same on your shards (files, dirs, globs, URLs)
#   make test                        the test suite (what CI runs)
#   make test-fast                   every test not marked slow
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STORE  ?= out/model.zarr
CORPUS ?=
ARGS   ?=

.PHONY: setup solve test test-fast bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

solve: setup
	@case '$(STORE)' in *://*) ;; *) mkdir -p '$(dir $(STORE))' ;; esac
	$(BIN)/streamsolve solve $(CORPUS) --store $(STORE) --overwrite $(ARGS)

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python -m bench $(if $(FULL),--full,)

clean:
	rm -rf $(VENV) out .pytest_cache
