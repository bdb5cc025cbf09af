# Set-up, tests and the demo. `make setup` is idempotent: re-running it only redoes what changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup build test demo real-cmr real-data bench clean

setup: $(VENV)/.requirements-installed build

$(VENV)/.requirements-installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade 'pip' 'setuptools<81' wheel
	$(PY) -m pip install -r requirements.txt
	touch $@

# Installs the project's packages into the virtual environment (editable, so edits take effect
# at once) and compiles the Cython supervoxel module in place (fafnet/supervoxels/).
build: $(VENV)/.project-installed

$(VENV)/.project-installed: $(VENV)/.requirements-installed setup.py fafnet/supervoxels/_felzenszwalb_3d.pyx
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $@

# The suite on TEST_WORKERS processes (pytest-xdist), one thread each, a test module per process
# at a time (its module fixtures made once); TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope tests

# The synthetic demo: data, supervoxels, a short training, evaluation (script/demo.sh).
demo:
	@echo "== FAF-Net demo: set-up (virtual environment, requirements, compiled supervoxel module),"
	@echo "== then synthetic data, supervoxels, training and evaluation: about 12 minutes on a 2-core CPU."
	$(MAKE) setup
	bash script/demo.sh

# A model on a real pre-processed dataset (script/real_data.sh): about an hour on a 2-core CPU.
# DATA_ROOT: the folder holding the dataset's folder and its supervoxels; DATASET: CMR (default),
# CHAOST2, SABS or Prostate_MRI. real-cmr: the same on CMR.
real-data:
	$(MAKE) setup
	DATA_ROOT="$(DATA_ROOT)" DATASET="$(DATASET)" bash script/real_data.sh

real-cmr:
	$(MAKE) setup
	DATA_ROOT="$(DATA_ROOT)" bash script/real_cmr.sh

clean:
	rm -rf build fafnet/supervoxels/*.so fafnet/supervoxels/_felzenszwalb_3d.c $(VENV)/.project-installed
