# vidret: `make demo` runs the pipeline on built-in synthetic data; `make test` runs the tests.
# Every target installs what it needs into .venv first (`make setup`).

PYTHON ?= python3
# The tested torch pair; torchvision must be the build that matches torch.
TORCH ?= torch==2.14.1 torchvision==0.29.1
VENV ?= .venv
BIN := $(VENV)/bin
VIDRET := $(BIN)/vidret

# A public benchmark, defined in pipeline/datasets/catalog/DATASET.json (`vidret manifest datasets` lists them):
#   make manifest DATASET=msrvtt-9k ANNOTATIONS=path/to/annotations VIDEO_DIR=path/to/videos
#   make decode encode index DATASET=msrvtt-9k
# Every stage gets --dataset DATASET: the definition's defaults (the model and its weights, frames, crop,
# sampling, train views, caption length, recipe, test split) replace the library's, as `vidret --dataset`
# does by hand (pipeline/datasets/presets.py). The CPU defaults below are then left out, and a variable
# given on the command line (FRAMES=8, MODEL=..., EMBED_SPLIT=...) passes its flag, which still wins.
ifdef DATASET
DEFINITION := pipeline/datasets/catalog/$(DATASET).json
ifeq ($(wildcard $(DEFINITION)),)
$(error DATASET=$(DATASET): no $(DEFINITION); `vidret manifest datasets` lists the known ones)
endif
DATASET_ARGS := --dataset $(DATASET)
MANIFEST ?= manifests/$(DATASET).jsonl
RUN ?= runs/$(DATASET)
# A test-only benchmark (msrvtt-1k-a, "train_split": null) has nothing to train: embed zero-shot with the
# definition's pretrained model.
CHECKPOINT ?= $(if $(findstring "train_split": null,$(file <$(DEFINITION))),,$(RUN)/model/best.pt)
endif
# $(call flag,--frames,FRAMES): --frames $(FRAMES), or nothing where FRAMES is unset (the preset's value).
flag = $(if $($(2)),$(1) $($(2)))

DATA ?= data/synthetic
VIDEOS ?= 500
SEED ?= 0
MANIFEST ?= $(DATA)/manifest.jsonl
RUN ?= runs/demo
SPLIT ?= all
ifndef DATASET
FRAMES ?= 12
# The defaults run on a CPU: the shipped vidret-tiny config takes 112x112 frames.
# The CLIP4Clip reference: SIZE=224 MODEL=ViT-B-32-quickgelu PRETRAINED=openai (or DATASET=msrvtt-9k).
SIZE ?= 112
MODEL ?= vidret-tiny
PRETRAINED ?= none
# Randomly initialised towers on a CPU: the demo's recipe (lr 1e-3, nothing frozen), not a fine-tuning one.
TRAIN_ARGS ?= --recipe demo
EMBED_SPLIT ?= test
endif
DECODE_ARGS ?=
HEAD ?= meanP
TRAIN_ARGS ?=
# Embed with the trained checkpoint; CHECKPOINT= (empty) embeds zero-shot with MODEL and PRETRAINED.
CHECKPOINT ?= $(RUN)/model/best.pt
ZERO_SHOT_ARGS ?=
EMBED_MODEL = $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT),$(call flag,--model,MODEL) $(call flag,--pretrained,PRETRAINED) --head $(HEAD) $(ZERO_SHOT_ARGS))
EMBED_ARGS ?=
INDEX_ARGS ?=
QUERY ?= a large red circle moves left on a black background
SEARCH_ARGS ?= --k 5

.PHONY: setup browser demo synth manifest decode encode embed index search serve report collection study bench test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

synth: setup
	$(VIDRET) synth $(DATA) --videos $(VIDEOS) --seed $(SEED)

decode: setup
	$(VIDRET) decode $(MANIFEST) --out $(RUN)/frames $(DATASET_ARGS) --split $(SPLIT) $(call flag,--frames,FRAMES) \
		$(call flag,--size,SIZE) $(DECODE_ARGS)

# Train on the train split (validating on val), then embed.
encode: setup
	$(VIDRET) encode train $(RUN)/frames --manifest $(MANIFEST) --out $(RUN)/model $(DATASET_ARGS) \
		$(call flag,--model,MODEL) $(call flag,--pretrained,PRETRAINED) --head $(HEAD) $(TRAIN_ARGS)
	$(MAKE) embed

embed: setup
	$(VIDRET) encode embed $(RUN)/frames --manifest $(MANIFEST) $(EMBED_MODEL) \
		--out $(RUN)/embeddings $(DATASET_ARGS) $(call flag,--split,EMBED_SPLIT) $(EMBED_ARGS)

# Every stage skips itself when its output is up to date (same inputs, same options), so
# `make index` after `make encode` reruns only the index, and a changed option reruns only
# the stages that depend on it. Pass --force in a stage's *_ARGS to redo it anyway.
index: setup
	$(VIDRET) index $(RUN)/embeddings --out $(RUN)/index $(DATASET_ARGS) $(INDEX_ARGS)

manifest: setup
	$(if $(and $(DATASET),$(ANNOTATIONS),$(VIDEO_DIR)),,$(error make manifest needs DATASET=, ANNOTATIONS= and VIDEO_DIR=))
	$(VIDRET) manifest build $(DATASET) --annotations $(ANNOTATIONS) --videos $(VIDEO_DIR) --out $(MANIFEST)

search: setup
	$(VIDRET) search $(RUN) "$(QUERY)" $(SEARCH_ARGS)

# The search page and JSON API over RUN, on 127.0.0.1:8000 (HOST=, PORT=); the run's report at /run.
HOST ?= 127.0.0.1
PORT ?= 8000
serve: setup
	$(VIDRET) serve $(RUN) --host $(HOST) --port $(PORT)

report: setup
	$(VIDRET) report $(RUN)

# Your own videos: `make collection VIDEO_DIR=~/Videos RUN=runs/home` scans the folder into RUN/manifest.jsonl,
# decodes every video as clips of CLIP_SECONDS (10), embeds them zero-shot with the model `vidret encode embed`
# uses (ViT-B-32, OpenAI's weights) or CHECKPOINT=RUN/model/best.pt of a trained run, and indexes them (auto);
# then `make search RUN=runs/home QUERY="..."`. Rerun it after adding videos: decode decodes only the new ones,
# embed and index run again over the whole collection.
# The model variables travel only when given on the command line (the CPU defaults above are the demo's);
# on a CPU, pass the tiny model `make demo` trained, on the frames it saw: CHECKPOINT=runs/demo/model/best.pt FRAMES=4.
given = $(if $(filter command line environment,$(origin $(2))),$(1) $($(2)))
COLLECTION_ARGS ?=
collection: setup
	$(if $(VIDEO_DIR),,$(error make collection needs VIDEO_DIR=))
	$(if $(filter command line environment,$(origin RUN)),,$(error make collection needs RUN= (its own run folder; the default, $(RUN), is the demo's)))
	$(VIDRET) collection $(VIDEO_DIR) --out $(RUN) $(call flag,--clip-seconds,CLIP_SECONDS) \
		$(call flag,--clip-stride,CLIP_STRIDE) $(call given,--frames,FRAMES) $(call given,--size,SIZE) \
		$(call given,--checkpoint,CHECKPOINT) $(call given,--model,MODEL) $(call given,--pretrained,PRETRAINED) \
		$(call flag,--index,INDEX) $(COLLECTION_ARGS)

# The demo: 500 synthetic clips in twins (100 test: 50 pairs, a clip and the same clip played backwards,
# which mean pooling cannot tell apart), 4 frames at 112x112 (a CPU budget; CLIP4Clip takes 12) with 4
# train-mode draws per train clip, the tiny model with a seqTransf head and 3-frame patches trained from
# scratch on the CPU (the `demo` recipe at 48 epochs: batch 32, lr 1e-3, nothing frozen), then the test
# split embedded, indexed, scored and searched. What each of these choices adds, and meanP with the same
# settings: docs/stages.md#the-order-demo-direction-twins. pipeline/studies/clip4clip.json shares them.
DEMO_SYNTH_ARGS ?= --twins
DEMO_DECODE_ARGS ?= --frames 4 --size $(SIZE) --short-side $(SIZE) --train-views 4
DEMO_TRAIN_ARGS ?= --head seqTransf --linear-patch 3d --recipe demo --epochs 48
MEAN_POOLING_CEILING = $(shell $(BIN)/python -c 'from pipeline.synth import MEAN_POOLING_CEILING as c; print(f"{100 * c:.1f}")')
demo: setup
	$(VIDRET) synth $(DATA) --videos $(VIDEOS) --seed $(SEED) $(DEMO_SYNTH_ARGS)
	$(VIDRET) manifest check $(MANIFEST)
	$(VIDRET) decode $(MANIFEST) --out $(RUN)/frames $(DEMO_DECODE_ARGS)
	$(VIDRET) encode train $(RUN)/frames --manifest $(MANIFEST) --out $(RUN)/model \
		--model $(MODEL) --pretrained $(PRETRAINED) $(DEMO_TRAIN_ARGS)
	$(VIDRET) encode embed $(RUN)/frames --manifest $(MANIFEST) --checkpoint $(RUN)/model/best.pt \
		--out $(RUN)/embeddings --split test
	$(VIDRET) index $(RUN)/embeddings --out $(RUN)/index --dsl $(INDEX_ARGS)
	$(VIDRET) search $(RUN) "$(QUERY)" $(SEARCH_ARGS)
	$(VIDRET) report $(RUN)
	@echo "demo: videos and manifest in $(DATA)/; frames in $(RUN)/frames/; model in $(RUN)/model/ (best.pt);"
	@echo "demo: embeddings in $(RUN)/embeddings/; index, metrics.json and ranks.parquet in $(RUN)/index/."
	@echo "demo: search it in a browser: $(VIDRET) serve $(RUN) (or make serve), then open http://127.0.0.1:8000/"
	$(if $(findstring --twins,$(DEMO_SYNTH_ARGS)),@echo "demo: text->video R@1 above; mean pooling of per-frame (2d patch) features is held to $(MEAN_POOLING_CEILING) on these twins (a caption's video and its twin have the same frames, in reverse order)")

# CLIP4Clip's study on the synthetic dataset: every head and linear patch of pipeline/studies/$(STUDY).json,
# trained, embedded and indexed with the same seeds, then the table (STUDY_OUT/study.md) and plot. Not in make test.
STUDY ?= clip4clip
STUDY_OUT ?= runs/study
study: setup
	$(VIDRET) study $(STUDY) --out $(STUDY_OUT)

# Every stage against its floor, with the figures in bench.json (opencv-python-headless, the `bench`
# extra, is installed for the decode baselines). BENCH_ARGS="--only index" runs one part.
BENCH_OUT ?= bench.json
BENCH_ARGS ?=
bench: $(VENV)/.bench-installed
	$(VIDRET) bench --out $(BENCH_OUT) $(BENCH_ARGS)

$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

# The browser tests (tests/test_browser.py) drive Debian's chromium through Playwright, which never downloads
# a browser of its own; installing it needs root (apt-get).
browser:
	@command -v chromium >/dev/null || { \
		[ "$$(id -u)" = 0 ] || { echo "make browser: the browser tests need Debian's chromium; run as root, or: sudo apt-get install chromium" >&2; exit 1; }; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

test: setup browser
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(RUN) $(DATA)
