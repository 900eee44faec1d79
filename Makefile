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

# pytest exits 1 when a claim is REFUTED (a finding: the run worked and the report is written),
# so make succeeds on 0 or 1 and fails on anything else: 2 interrupted, 3 internal error,
# 4 bad input (the one-line "ERROR: strata:" above says what to do), 5 nothing collected.
verdicts: $(BIN)/.installed
	@rc=0; $(BIN)/pytest hypotheses/ $(ARGS) || rc=$$?; \
	case $$rc in \
	  0|1) ;; \
	  2) echo "make verdicts: interrupted (pytest exit 2); no complete report" >&2; exit 2;; \
	  3) echo "make verdicts: pytest internal error (exit 3)" >&2; exit 3;; \
	  4) echo "make verdicts: bad input (pytest exit 4): see the ERROR line above" >&2; exit 4;; \
	  5) echo "make verdicts: no claim collected (pytest exit 5): check ARGS" >&2; exit 5;; \
	  *) echo "make verdicts: pytest exited $$rc" >&2; exit $$rc;; \
	esac

test: $(BIN)/.installed
	$(BIN)/pytest tests/ $(TESTARGS)

clean-cache: $(BIN)/.installed
	$(BIN)/python -m probes.cache clear
