# Strata: two commands from a fresh clone (needs only python3 with venv and pip).
#   make verdicts   run every claim on the default model (or ARGS="--model=Qwen/Qwen3-4B")
#   make test       the harness's own tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch first, pinned: on CPU-only machines a CPU wheel may be preinstalled; elsewhere pip
# picks the platform's wheel. Override with TORCH=torch==X.Y.Z.
TORCH  ?= torch==2.13.0
ARGS   ?=
TESTARGS ?= -n 2

.PHONY: verdicts test install clean-cache

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	# the project's dependencies, read from pyproject.toml (the project itself runs in place)
	$(BIN)/python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']))" > $(VENV)/requirements.txt
	$(BIN)/python -m pip install --quiet -r $(VENV)/requirements.txt
	touch $@

install: $(BIN)/.installed

verdicts: $(BIN)/.installed
	$(BIN)/pytest hypotheses/ $(ARGS)

test: $(BIN)/.installed
	$(BIN)/pytest tests/ $(TESTARGS)

clean-cache: $(BIN)/.installed
	$(BIN)/python -m probes.cache clear
