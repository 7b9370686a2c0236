# pystitch — the two commands a newcomer needs:
#   make demo    set up everything, then segment + stitch the built-in example
#   make test    set up everything, then run the whole test suite
# Everything is installed into .venv/ (and .venv-cp4/, .tools/) inside the checkout.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CONSTRAINTS := requirements/constraints.txt
EXTRAS ?= test,cellpose,formats
DEMO_DIR ?= demo
# Cellpose 4 cannot share an environment with Cellpose 3 (different pins): its
# adapter tests run in a second environment
CP4_VENV := .venv-cp4
CP4_CONSTRAINTS := requirements/constraints-cellpose4.txt
SOURCES := setup.py pyproject.toml $(wildcard pystitch/_core/*.pyx)

.PHONY: setup setup-cellpose4 demo test test-main test-cellpose4 bench bench-gpu clean

# venv + pinned build tools + pystitch (editable, Cython compiled) with extras
define make_env
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(1)/bin/python -m pip install -q -c $(2) setuptools wheel Cython numpy
	$(1)/bin/python -m pip install -q -c $(2) --no-build-isolation -e ".[$(3)]"
endef

$(VENV)/.stamp-$(EXTRAS): $(SOURCES) $(CONSTRAINTS)
	$(call make_env,$(VENV),$(CONSTRAINTS),$(EXTRAS))
	touch $@

$(CP4_VENV)/.stamp: $(SOURCES) $(CP4_CONSTRAINTS)
	$(call make_env,$(CP4_VENV),$(CP4_CONSTRAINTS),test)
	$(CP4_VENV)/bin/python -m pip install -q -c $(CP4_CONSTRAINTS) cellpose torch torchvision segment-anything
	touch $@

setup: $(VENV)/.stamp-$(EXTRAS)

setup-cellpose4: $(CP4_VENV)/.stamp

demo: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" NXF_ANSI_LOG=false \
	    "$$(scripts/install-nextflow.sh | tail -n 1)" run main.nf -profile test --outdir $(DEMO_DIR)/results --overwrite true -resume
	@$(PY) -c 'import json, sys; s = json.load(open(sys.argv[1] + "/labels_report/summary.json")); \
	    print("%d objects in %d blocks -> %s/labels.zarr" % (s["objects"], s["blocks"], sys.argv[1])); \
	    print("report: %s/labels_report/summary.html" % sys.argv[1])' $(DEMO_DIR)/results/example

# both suites always run (-k): a failure in one does not hide the other's result
test: setup setup-cellpose4
	$(MAKE) --no-print-directory -k test-main test-cellpose4

test-main: setup
	$(PY) -m pytest -q

# the Cellpose adapter and the flows rule (dynamics, network by blocks, `pystitch run --rule flows`) against
# Cellpose 4 (its small test model is trained on first use); the pipeline's own runs stay in the main suite
test-cellpose4: setup-cellpose4
	$(CP4_VENV)/bin/python -m pytest -q -m "not nextflow" tests/test_cellpose_adapter.py tests/test_flows.py \
		tests/test_flows_predict.py tests/test_flows_run.py

# benchmark suite (peers and plotting installed on demand); results in benchmarks/results/
bench: setup
	$(PY) -m pip install -q -c $(CONSTRAINTS) -r benchmarks/requirements.txt
	$(PY) benchmarks/run.py

# Cellpose whole image vs pystitch run blockwise on the GPU (CPU mode without one), <= 8 min; GPU_BENCH_ARGS=...
bench-gpu: setup
	$(PY) benchmarks/gpu.py $(GPU_BENCH_ARGS)

clean:
	rm -rf build $(DEMO_DIR) pystitch/_core/*.c pystitch/_core/*.cpp pystitch/_core/*.so
