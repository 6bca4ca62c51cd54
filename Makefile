# The two commands of the README: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv and install everything on a fresh machine.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch and torchvision are pinned to the builds this project's machines carry on disk.
TORCH := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed-stamp
PYTEST := $(BIN)/python -m pytest

.PHONY: install demo test test-slow test-all clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	touch $(STAMP)

# MODEL=hub-id|folder|file.pth picks the checkpoint (default: $$DINOV3KIT_MODEL, else the ViT-S/16 hub id).
demo: $(STAMP)
	$(BIN)/python examples/quickstart.py $(if $(MODEL),--model "$(MODEL)")

test: $(STAMP)
	$(PYTEST) -m "not slow"

test-slow: $(STAMP)
	$(PYTEST) -m slow

test-all: $(STAMP)
	$(PYTEST)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
