# Two commands for a fresh machine (see README.md):
#   make demo   set up .venv and run the main job on the built-in shapes data
#   make test   set up .venv and run the whole test suite (slow tests included)
# Everything is installed into .venv/ from the pinned constraints; a second run reuses it.

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.installed
PYTHON310 ?= $(shell scripts/find-python310)
OUT ?= outputs
# The real COCO sample is used by tests only where it exists beside the repo.
COCO128_DIR ?= $(abspath $(wildcard ../shared/datasets/coco128))
PYTEST_ARGS ?=
# The suite on two processes (much of it is single-threaded graph tracing and Beam Python): loadgroup keeps
# the modules that share fixtures on one worker, so the local pipeline runs and the coco128 run are each built
# once, and hands out the groups heaviest first (tests/conftest.py, which also says why pytest is held at 9.1.1).
# `make test PYTEST_WORKERS=0` runs it in one process.
PYTEST_WORKERS ?= 2
PYTEST_XDIST = $(if $(filter 0,$(PYTEST_WORKERS)),-p no:xdist,-n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder)
# The demo's data and training: enough steps for masks a person can see in the report's gallery.
DEMO_IMAGES ?= 160
DEMO_STEPS ?= 500
# Every benchmark, quickest first (the accuracy one trains for 30 minutes); `make bench BENCH=serving` runs one.
BENCH ?= convert_coco serving serving_load evaluator train_throughput inference_latency pipeline finetune train_accuracy
# Some machines' pip configuration names package indexes that are absent; pip warns once per package.
PIP_NOISE := ^WARNING: Location .* is ignored

export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv demo test test-fast bench clean help

help:
	@echo "make demo       set up .venv and run the main job (shapes data -> local pipeline)"
	@echo "make test       set up .venv and run every test (slow ones included)"
	@echo "make test-fast  run the tests not marked slow"
	@echo "make bench      run the benchmarks in benchmarks/ (BENCH=name for one)"
	@echo "make clean      remove outputs (keeps .venv)"

venv: $(STAMP)

$(STAMP): setup.py $(CONSTRAINTS)
	@test -n "$(PYTHON310)" || { echo "error: no Python 3.10 (see above)"; exit 1; }
	@test -x $(PY) || { echo "Creating $(VENV) with $(PYTHON310)"; "$(PYTHON310)" -m venv $(VENV); }
	$(PY) -m pip install --quiet "pip==24.2" 2>&1 | { grep -v "$(PIP_NOISE)" || true; }
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e ".[test]" 2>&1 | { grep -v "$(PIP_NOISE)" || true; }
	@touch $(STAMP)

demo: $(STAMP)
	@echo "== 1/3 The shapes data set: $(DEMO_IMAGES) images -> $(OUT)/shapes"
	@# TensorFlow's CUDA plugin registration messages (C++, at import) mean nothing on a machine without a GPU.
	@TF_CPP_MIN_LOG_LEVEL=3 $(VENV)/bin/maskrcnn-tfx make-shapes --output $(OUT)/shapes \
		--num-images $(DEMO_IMAGES) --image-size 128
	@echo "== 2/3 The pipeline: $(VENV)/bin/maskrcnn-tfx run --runner local --data $(OUT)/shapes/tfrecords ..."
	@# The whole local pipeline (validation, Transform, tiny Mask R-CNN, Evaluator, Pusher): minutes on 2 cores.
	@# It prints a line per component (the Trainer's step, speed, loss and time left as it trains), then the
	@# box and mask AP, the blessing and the pushed model; the details go to $(OUT)/pipeline/logs/.
	@# The default thresholds: blessed (and pushed) when mask and box AP are above 0.001.
	@$(VENV)/bin/maskrcnn-tfx run --runner local --data $(OUT)/shapes/tfrecords \
		--pipeline-root $(OUT)/pipeline --serving-dir $(OUT)/serving \
		--preset tiny --train-steps $(DEMO_STEPS)
	@echo "== 3/3 The HTML report"
	@# Its warnings (TensorFlow's and TFMA's) go to report.log, shown only if it fails.
	@mkdir -p $(OUT)/report
	@TF_CPP_MIN_LOG_LEVEL=3 $(VENV)/bin/maskrcnn-tfx report --pipeline-root $(OUT)/pipeline --output $(OUT)/report \
		2> $(OUT)/report/report.log || { cat $(OUT)/report/report.log; exit 1; }
	@echo "Next:"
	@echo "  $(VENV)/bin/maskrcnn-tfx serve --model-base-path $(OUT)/serving    # REST on 127.0.0.1:8501"
	@echo "  $(VENV)/bin/maskrcnn-tfx predict $(OUT)/shapes/coco/images/000001.png --endpoint http://127.0.0.1:8501 \\"
	@echo "      --overlay-dir $(OUT)/overlays                      # in another terminal, while it serves"

test: $(STAMP)
	MASKRCNN_TFX_COCO128="$(COCO128_DIR)" $(PY) -m pytest tests $(PYTEST_XDIST) $(PYTEST_ARGS)

test-fast: $(STAMP)
	MASKRCNN_TFX_COCO128="$(COCO128_DIR)" $(PY) -m pytest tests -m "not slow" $(PYTEST_XDIST) $(PYTEST_ARGS)

bench: $(STAMP)
	@for b in $(BENCH); do echo "== benchmarks/$$b.py"; \
		MASKRCNN_TFX_COCO128="$(COCO128_DIR)" $(PY) -m benchmarks.$$b || exit 1; done

clean:
	rm -rf $(OUT) .pytest_cache
