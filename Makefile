# fashioncap: every target bootstraps the virtual environment it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS_STAMP := $(VENV)/.installed-extras
export HF_HUB_OFFLINE ?= 1
export HF_EVALUATE_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

RUN  ?= outputs/demo/trial4
DATA ?= data/synthetic
SPLIT ?= test

.PHONY: install install-extras test demo study eval bench bench-large lint data-synthetic data-facad clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@command -v java >/dev/null 2>&1 || { echo "Java (17+) is needed by the caption metrics (PTB tokenizer, METEOR)."; \
	  echo "  Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

# The optional extras: the captioning page (Gradio) and Trackio. Not in `install`, which the page would take past
# its 3-minute budget on a fresh clone (measured: 229 s -> 352 s on the shared 2-core machine); the tests need
# them, so `test` adds them.
install-extras: $(EXTRAS_STAMP)

$(EXTRAS_STAMP): $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check -c requirements.lock -e '.[dev,app,trackio]'
	@touch $(EXTRAS_STAMP)

test: $(EXTRAS_STAMP)
	$(BIN)/python -m pytest tests

demo: $(STAMP)
	$(BIN)/fashioncap demo

# trials 1-5 of the demo, 5 seeds each, from the demo's base: outputs/study/study.{json,md,png}
study: $(STAMP)
	$(BIN)/fashioncap study

eval: $(STAMP)
	$(BIN)/fashioncap eval --model-dir $(RUN) --data $(DATA) --split $(SPLIT)

bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-large: $(STAMP)
	$(BIN)/python -m bench.run --large
	$(BIN)/python -m bench.run --large --family florence2

lint: $(STAMP)
	$(BIN)/ruff check fashioncap tests bench recipes
	$(BIN)/ruff format --check fashioncap tests bench recipes

data-synthetic: $(STAMP)
	$(BIN)/fashioncap data synthetic --out data/synthetic

FACAD_META   ?= data/facad_raw/meta_all_129927.json
FACAD_IMAGES ?= data/facad_raw/images
data-facad: $(STAMP)
	$(BIN)/fashioncap data facad --meta $(FACAD_META) --images $(FACAD_IMAGES) --out data/facad --download

clean:
	rm -rf outputs .pytest_cache
