# vidret: `make demo` runs the pipeline on built-in synthetic data; `make test` runs the tests.
# Every target installs what it needs into .venv first (`make setup`).

PYTHON ?= python3
# The tested torch pair; torchvision must be the build that matches torch.
TORCH ?= torch==2.14.1 torchvision==0.29.1
VENV ?= .venv
BIN := $(VENV)/bin
VIDRET := $(BIN)/vidret

DATA ?= data/synthetic
VIDEOS ?= 500
SEED ?= 0
MANIFEST ?= $(DATA)/manifest.jsonl
RUN ?= runs/demo
SPLIT ?= all
FRAMES ?= 12
# The defaults run on a CPU: the shipped vidret-tiny config takes 112x112 frames.
# The CLIP4Clip reference: SIZE=224 MODEL=ViT-B-32 PRETRAINED=openai.
SIZE ?= 112
DECODE_ARGS ?=
MODEL ?= vidret-tiny
PRETRAINED ?= none
HEAD ?= meanP
TRAIN_ARGS ?=
EMBED_SPLIT ?= test
EMBED_ARGS ?=
INDEX_ARGS ?=
QUERY ?= a large red circle moves left on a black background
SEARCH_ARGS ?= --k 5

.PHONY: setup demo synth decode encode embed index search test clean

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
	$(VIDRET) decode $(MANIFEST) --out $(RUN)/frames --split $(SPLIT) --frames $(FRAMES) --size $(SIZE) $(DECODE_ARGS)

# Train on the train split (validating on val), then embed.
encode: setup
	$(VIDRET) encode train $(RUN)/frames --manifest $(MANIFEST) --out $(RUN)/model \
		--model $(MODEL) --pretrained $(PRETRAINED) --head $(HEAD) $(TRAIN_ARGS)
	$(MAKE) embed

embed: setup
	$(VIDRET) encode embed $(RUN)/frames --manifest $(MANIFEST) --checkpoint $(RUN)/model/best.pt \
		--out $(RUN)/embeddings --split $(EMBED_SPLIT) $(EMBED_ARGS)

# Every stage skips itself when its output is up to date (same inputs, same options), so
# `make index` after `make encode` reruns only the index, and a changed option reruns only
# the stages that depend on it. Pass --force in a stage's *_ARGS to redo it anyway.
index: setup
	$(VIDRET) index $(RUN)/embeddings --out $(RUN)/index $(INDEX_ARGS)

search: setup
	$(VIDRET) search $(RUN) "$(QUERY)" $(SEARCH_ARGS)

# The demo: 500 synthetic clips (100 test), 4 frames at 112x112 (a CPU budget; CLIP4Clip takes 12),
# the tiny model with a seqTransf head trained on the CPU, then the test split embedded, indexed,
# scored and searched.
DEMO_DECODE_ARGS ?= --frames 4 --size $(SIZE) --short-side $(SIZE)
DEMO_TRAIN_ARGS ?= --head seqTransf --epochs 16 --batch-size 32 --lr 1e-3
demo: setup
	$(VIDRET) synth $(DATA) --videos $(VIDEOS) --seed $(SEED)
	$(VIDRET) manifest check $(MANIFEST)
	$(VIDRET) decode $(MANIFEST) --out $(RUN)/frames $(DEMO_DECODE_ARGS)
	$(VIDRET) encode train $(RUN)/frames --manifest $(MANIFEST) --out $(RUN)/model \
		--model $(MODEL) --pretrained $(PRETRAINED) $(DEMO_TRAIN_ARGS)
	$(VIDRET) encode embed $(RUN)/frames --manifest $(MANIFEST) --checkpoint $(RUN)/model/best.pt \
		--out $(RUN)/embeddings --split test
	$(VIDRET) index $(RUN)/embeddings --out $(RUN)/index --dsl $(INDEX_ARGS)
	$(VIDRET) search $(RUN) "$(QUERY)" $(SEARCH_ARGS)
	@echo "demo: videos and manifest in $(DATA)/; frames in $(RUN)/frames/; model in $(RUN)/model/ (best.pt);"
	@echo "demo: embeddings in $(RUN)/embeddings/; index, metrics.json and ranks.parquet in $(RUN)/index/."

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(RUN) $(DATA)
