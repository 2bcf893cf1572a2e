# Two commands from a fresh clone: `make reproduce` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PIP := $(VENV)/bin/pip install --constraint constraints.txt
STAMP := $(VENV)/.installed

.PHONY: reproduce test test-floor test-floor-llm lessons benchmark benchmark-llm clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-base: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) -e '.[test]'
	touch $@ $(VENV)/.installed-base $(VENV)/.installed-lessons

$(VENV)/.installed-lessons: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) -e '.[lessons]'
	touch $@

reproduce: $(VENV)/.installed-base
	$(VENV)/bin/treemdp reproduce --out figures

# Engine, figure and LLM tests spread over the cores (each file on one worker); then the lesson
# tests in one process (Jupyter kernels running beside other workers' tests sometimes stalled
# ~300 s between two cells). Both parts always run; either failing fails the target.
test: $(VENV)/.installed-test
	@if [ -f scripts/install-browser.sh ]; then bash scripts/install-browser.sh; fi
	status=0; \
	$(VENV)/bin/python -m pytest -n auto --maxprocesses 4 --dist loadfile --ignore=tests/lessons || status=1; \
	$(VENV)/bin/python -m pytest tests/lessons || status=1; \
	exit $$status

# The toy track on the oldest torch pyproject.toml admits (PyPI's wheel: a large download with its
# CUDA libraries; run by hand before changing the floor, not by CI).
FLOOR_TORCH ?= 2.4.1
test-floor:
	$(PYTHON) -m venv .venv-floor
	.venv-floor/bin/pip install "torch==$(FLOOR_TORCH)" numpy pandas matplotlib gymnasium tqdm pyarrow pytest hypothesis
	.venv-floor/bin/pip install --no-deps -e .
	.venv-floor/bin/python -m pytest -q tests/test_exact.py tests/test_training.py tests/test_pinned.py \
		tests/test_engine.py tests/test_accounting.py tests/test_sweep.py tests/test_tree.py tests/test_runs.py \
		tests/test_losses.py tests/test_losses_zoo.py tests/test_losses_registry.py

# The LLM track on the oldest transformers pyproject.toml admits (run by hand before changing the
# floor, not by CI): a separate venv with torch through constraints.txt and transformers pinned.
FLOOR_TRANSFORMERS ?= 4.56.0
test-floor-llm:
	$(PYTHON) -m venv .venv-floor-llm
	.venv-floor-llm/bin/pip install --constraint constraints.txt -e '.[llm,lora]' pytest hypothesis
	.venv-floor-llm/bin/pip install --constraint constraints.txt "transformers==$(FLOOR_TRANSFORMERS)"
	.venv-floor-llm/bin/python -m pytest -q -p no:randomly tests/llm/test_logprobs.py \
		tests/llm/test_tokenization.py tests/llm/test_train_eval.py tests/llm/test_trl_user.py

lessons: $(VENV)/.installed-lessons
	$(VENV)/bin/jupyter lab lessons/ $(if $(filter 0,$(shell id -u)),--allow-root,)

benchmark: $(VENV)/.installed-base
	$(VENV)/bin/python benchmarks/bench_engine.py
	$(VENV)/bin/python benchmarks/bench_sweep.py
	$(VENV)/bin/python benchmarks/bench_lab.py

benchmark-llm: $(VENV)/.installed-test
	$(VENV)/bin/python benchmarks/bench_llm.py --steps 60 --repeats 3

clean:
	rm -rf $(VENV) .venv-floor .venv-floor-llm .pytest_cache
