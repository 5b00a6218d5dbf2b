# `make demo`, `make test`, `make bench`: each creates .venv if missing (idempotent) and installs ext5 into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Reinstall only when the dependency declaration changes.
STAMP  := $(VENV)/.installed-$(shell cat setup.py | cksum | cut -d' ' -f1)
DEMO_DIR ?= runs/demo
CPU8   := XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=2

.PHONY: demo test bench install clean

install: $(STAMP)

$(STAMP): setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel "setuptools<82"
	$(BIN)/pip install -q -e ".[test,tpu]"
	# promptsource 0.2.3 is sdist-only and declares python<3.10; its templates work on 3.11 without its pins.
	$(BIN)/pip install -q --no-deps --ignore-requires-python promptsource==0.2.3
	@rm -f $(VENV)/.installed-*
	@touch $@

# Train T5.1.1-tiny on the embedded default mixture over 8 virtual CPU devices (4 data x 2 model),
# evaluate per task, and write $(DEMO_DIR)/loss_curve.png. Starts fresh each time.
demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(CPU8) $(BIN)/t5x train --gin_file=local_tiny.gin --gin.MODEL_DIR="'$(DEMO_DIR)'"
	$(CPU8) $(BIN)/ext5 eval --gin_file=local_tiny.gin --gin_file=eval.gin --gin.CHECKPOINT_PATH="'$(DEMO_DIR)'"

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra tests

bench: $(STAMP)
	$(CPU8) $(BIN)/python bench/packing.py
	$(CPU8) $(BIN)/python bench/pipeline.py
	JAX_PLATFORMS=cpu $(BIN)/python bench/rank_eval.py
	JAX_PLATFORMS=cpu $(BIN)/python bench/train_step.py

clean:
	rm -rf $(VENV) runs build *.egg-info
