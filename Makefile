# pystitch — the two commands a newcomer needs:
#   make demo    set up everything, then segment + stitch the built-in example
#   make test    set up everything, then run the test suite
# Everything is installed into .venv/ and .tools/ inside the checkout.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
CONSTRAINTS := requirements/constraints.txt
EXTRAS ?= test,cellpose
DEMO_DIR ?= demo

.PHONY: setup demo test clean

$(VENV)/.stamp-$(EXTRAS): setup.py pyproject.toml $(CONSTRAINTS) $(wildcard pystitch/_core/*.pyx)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c $(CONSTRAINTS) setuptools wheel Cython numpy
	$(PIP) install -q -c $(CONSTRAINTS) --no-build-isolation -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.stamp-$(EXTRAS)

demo: setup
	$(VENV)/bin/pystitch example $(DEMO_DIR)/example.zarr
	$(VENV)/bin/pystitch run $(DEMO_DIR)/example.zarr $(DEMO_DIR)/labels.zarr \
	    --block-shape 16,64,64 --halo 2,4,4 --backend threshold --threshold 500 --workers 2 --overwrite
	@cat $(DEMO_DIR)/labels_report/summary.json | $(PY) -c 'import json,sys; s=json.load(sys.stdin); print(f"{s[\"objects\"]} objects in {s[\"blocks\"]} blocks -> {s[\"output\"]}")'

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf build $(DEMO_DIR) pystitch/_core/*.c pystitch/_core/*.cpp pystitch/_core/*.so
