# vidret: `make demo` runs the pipeline on built-in synthetic data; `make test` runs the tests.
# Every target installs what it needs into .venv first (`make setup`).

PYTHON ?= python3
# The tested torch pair; torchvision must be the build that matches torch.
TORCH ?= torch==2.14.1 torchvision==0.29.1
VENV ?= .venv
BIN := $(VENV)/bin
VIDRET := $(BIN)/vidret

DATA ?= data/synthetic
VIDEOS ?= 200
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

.PHONY: setup demo synth decode encode embed test clean

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

# The index stage is not built yet: for now the demo stops after embedding.
DEMO_TRAIN_ARGS ?= --head seqTransf --epochs 8 --batch-size 32 --lr 1e-3 --force
demo: setup
	$(VIDRET) synth $(DATA) --videos $(VIDEOS) --seed $(SEED)
	$(VIDRET) manifest check $(DATA)/manifest.jsonl
	$(VIDRET) decode $(DATA)/manifest.jsonl --out $(RUN)/frames --size $(SIZE)
	$(VIDRET) encode train $(RUN)/frames --manifest $(DATA)/manifest.jsonl --out $(RUN)/model \
		--model $(MODEL) --pretrained $(PRETRAINED) $(DEMO_TRAIN_ARGS)
	$(VIDRET) encode embed $(RUN)/frames --manifest $(DATA)/manifest.jsonl --checkpoint $(RUN)/model/best.pt \
		--out $(RUN)/embeddings --split test
	@echo "demo: frames in $(RUN)/frames, model in $(RUN)/model, test embeddings in $(RUN)/embeddings."
	@echo "demo: the index stage is not built yet; this demo stops after embedding."

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(RUN) $(DATA)
