PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test install demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The whole test suite (both kernel backends), a few minutes on 2 cores.
test: $(STAMP)
	$(PY) -m pytest tests

bench: $(STAMP)
	$(PY) -m benchmarks kernels

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
