# Two set-up-free commands on a fresh clone: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
PYTEST := $(PY) -m pytest
export HF_DATASETS_OFFLINE ?= 1
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: install install-dev demo test test-full bench params clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	@# Without a CUDA GPU, take the CPU build of torch first (a plain `torch` resolves to a multi-GB CUDA build).
	if ! nvidia-smi -L >/dev/null 2>&1; then $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)  ## the test extra (pytest, transformers, the notebook runner) on top
	$(PY) -m pip install -q -e '.[dev]'
	touch $(DEV_STAMP)

install: $(STAMP)  ## what the commands need

install-dev: $(DEV_STAMP)  ## and what the tests need

demo: install  ## moe_100m memorises 100 lines, then greedy-decodes 10 of them
	$(PY) -m moe_lm.train +experiment=overfit_100_lines

test: install-dev  ## fast tier (CPU, tiny configs)
	$(PYTEST) -m "not slow" -q

test-full: install-dev  ## everything, slow tier included
	$(PYTEST) -q

BENCH_OUT ?= runs/bench
bench: install  ## every benchmark, one process each, interleaved rounds; tables here, JSON in $(BENCH_OUT)/
	$(PY) experiments/bench_moe_block.py --reps 15 --json $(BENCH_OUT)/moe_block.json
	$(PY) experiments/bench_train_step.py --compile --json $(BENCH_OUT)/train_step.json
	$(PY) experiments/bench_memory.py --json $(BENCH_OUT)/memory.json
	$(PY) experiments/bench_generate.py --warmup 1 --json $(BENCH_OUT)/generate.json
	$(PY) experiments/bench_data.py --json $(BENCH_OUT)/data.json
	$(PY) experiments/bench_arch_switches.py --json $(BENCH_OUT)/arch_switches.json
	$(PY) experiments/profile_train_step.py --json $(BENCH_OUT)/profile.json

params: install
	$(PY) -m moe_lm.params

clean:
	rm -rf runs multirun outputs .pytest_cache
