# vidret: `make demo` runs the pipeline on built-in synthetic data; `make test` runs the tests.
# Every target installs what it needs into .venv first (`make setup`).

PYTHON ?= python3
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
SIZE ?= 224
DECODE_ARGS ?=

.PHONY: setup demo synth decode test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

synth: setup
	$(VIDRET) synth $(DATA) --videos $(VIDEOS) --seed $(SEED)

decode: setup
	$(VIDRET) decode $(MANIFEST) --out $(RUN)/frames --split $(SPLIT) --frames $(FRAMES) --size $(SIZE) $(DECODE_ARGS)

# The encode and index stages are not built yet: for now the demo makes the
# synthetic dataset and decodes it.
demo: setup
	$(VIDRET) synth $(DATA) --videos $(VIDEOS) --seed $(SEED)
	$(VIDRET) manifest check $(DATA)/manifest.jsonl
	$(VIDRET) decode $(DATA)/manifest.jsonl --out $(RUN)/frames
	@echo "demo: synthetic data in $(DATA), frames in $(RUN)/frames (status.parquet, stage.json)."
	@echo "demo: the encode and index stages are not built yet; this demo stops after decode."

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(RUN) $(DATA)
