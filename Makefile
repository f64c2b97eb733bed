# Every target creates .venv when it is missing and installs the project into it.
# torch is installed first and pinned so that pip never swaps in a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
EXTRAS ?= dev,web,onnx,gradio,notebooks

.PHONY: help venv train test test-fast lint format serve notebooks docs benchmarks benchmark-data fonts clean

help:
	@echo "make train       train the default model on the bundled MNIST and calibrate \"not sure\""
	@echo "make test        lint and run the whole test suite"
	@echo "make test-fast   the inner loop: tests not marked slow or browser (under a minute)"
	@echo "make serve       start the web app (./models/ when trained here, else the shipped model)"
	@echo "make lint        ruff check + ruff format --check"
	@echo "make format      ruff format + ruff check --fix"
	@echo "make notebooks   regenerate notebooks/ from the package sources"
	@echo "make docs        regenerate the guide's figures (docs/img/) from the shipped model"
	@echo "make benchmarks  run every benchmark in benchmarks/ and print their tables"
	@echo "make benchmark-data  install the Debian fonts and Fashion-MNIST of benchmarks/realistic_uploads.py"
	@echo "make fonts       the same (its old name)"
	@echo "make clean       remove the venv, caches and training checkpoints"

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]" "$(TORCH)"
	touch $@

venv: $(BIN)/.installed

# Training writes its run to runs/default/, a model without "unsure" thresholds; calibration
# measures them for it (on validation renders and non-digits, never the test set) and adds
# them to its JSON; promotion then makes it the model the commands here use (./models/).
RUN ?= default

train: venv
	$(BIN)/mnist-cnn train --name $(RUN)
	$(BIN)/python tools/calibrate_unsure.py --model runs/$(RUN)
	$(BIN)/mnist-cnn promote runs/$(RUN)
	@echo "The run is in runs/$(RUN)/ (model, curves, evaluation report); its model is now"
	@echo "./models/mnist_cnn_model.pth, which the commands here use before the shipped one:"
	@echo "  make serve   or   mnist-cnn predict IMAGE   or   mnist-cnn evaluate"

test: venv lint
	$(BIN)/python -m pytest

# The inner loop: no training runs, no notebooks, no browser, no full-test-set evaluations.
test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow and not browser"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

serve: venv
	$(BIN)/mnist-cnn serve

notebooks: venv
	$(BIN)/python tools/build_notebooks.py

# The guide's figures come from the model shipped in the package (not ./models/, which
# `make train` replaces), so that they match what tests/test_figures.py regenerates.
docs: venv
	$(BIN)/python tools/make_example_photo.py
	$(BIN)/mnist-cnn explain --figures docs/img --model src/mnist_cnn/shipped/mnist_cnn_model.pth

benchmarks: venv
	for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# The Debian data of benchmarks/realistic_uploads.py: handwriting-style fonts (digits, and
# letters for the "not a digit" sets) and Fashion-MNIST (/usr/share/datasets/fashion-mnist).
# `make fonts` is the old name of the same target.
FONTS := fonts-comic-neue fonts-dkg-handwriting fonts-breip fonts-bwht fonts-femkeklaver \
	fonts-humor-sans fonts-dancingscript
BENCHMARK_DATA := $(FONTS) dataset-fashion-mnist
benchmark-data:
	apt-get update -qq && apt-get install -y -qq $(BENCHMARK_DATA)
fonts: benchmark-data

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info models/*.ckpt runs/*/*.ckpt
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
