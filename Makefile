PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint format install demo bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "npgrad needs Python 3.11+, but $(PYTHON) is " + sys.version.split()[0] + ": run make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint,plot,dist,export,rouge,bench]'
	touch $(STAMP)

install: $(STAMP)

# The whole test suite (both kernel backends), a few minutes on 2 cores.
test: $(STAMP)
	$(PY) -m pytest tests

# Lint (ruff), the format check (ruff format) and the type check (mypy) of the public modules.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# Rewrite the code in the project's format (what `make lint` checks).
format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# The main job in a few minutes: Multi30k de->en read from $$TRANSFORMER_DATA or the download cache (downloaded
# once when missing), the tiny config trained for DEMO_MINUTES, sacreBLEU on the test set, a few sentences
# translated. It learns little in that time; configs/multi30k_de_en.toml is the real recipe (see the README).
DEMO_DIR ?= runs/demo
DEMO_MINUTES ?= 3

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(PY) -m transformer prepare --config tiny --run-dir $(DEMO_DIR)
	$(PY) -m transformer train --config tiny --run-dir $(DEMO_DIR) train.max_steps=0 train.max_minutes=$(DEMO_MINUTES)
	$(PY) -m transformer evaluate --checkpoint $(DEMO_DIR) --split test --beam 1 --hypotheses $(DEMO_DIR)/test.hyp
	printf '%s\n' 'Ein Mann fährt mit dem Fahrrad.' 'Zwei Hunde spielen im Schnee.' \
		'Eine Frau sitzt auf einer Bank und liest ein Buch.' | \
		$(PY) -m transformer translate --checkpoint $(DEMO_DIR) --beam 4

bench: $(STAMP)
	$(PY) -m benchmarks kernels

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
