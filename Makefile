# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install balda, run the embedded-benchmark demo (the main job)
#   make test   - create .venv, install balda with test extras, lint (ruff) and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.balda-installed
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test install bench recipes clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/balda demo

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	OMP_NUM_THREADS=2 $(PY) -m pytest -x -q

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

recipes: $(STAMP)
	$(PY) benchmarks/recipes.py --scale down

clean:
	rm -rf $(VENV) runs
