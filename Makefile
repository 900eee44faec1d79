# Strata: two commands from a fresh clone (needs only python3 with venv and pip).
#   make verdicts   run every claim on the default model (or ARGS="--model=Qwen/Qwen3-4B")
#   make test       the harness's own tests
#   make test-kernels  the numerical tests again on other CPU kernels (CI's second pass)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch first, pinned: on CPU-only machines a CPU wheel may be preinstalled; elsewhere pip
# picks the platform's wheel. Override with TORCH=torch==X.Y.Z.
TORCH  ?= torch==2.13.0
ARGS   ?=
TESTARGS ?= -n 2

# The numerical tests (float32/float64 identities and probe-vs-reference comparisons; ≈ 200
# tests, 75 s on two cores), and the kernels CI reruns them on (make test-kernels): torch's
# generic ATen kernels instead of AVX2/AVX-512, MKL's AVX2
# GEMMs (what it runs on AMD CPUs), OpenBLAS' Haswell kernels, one thread (another blocking).
# Each changes the bits of float32 sums and GEMMs, so a tolerance tuned to one CPU fails here.
NUMERICAL_TESTS ?= tests/test_identities.py tests/test_adjacent.py tests/test_head_metric.py \
                   tests/test_benchmarks_smoke.py tests/test_activations.py tests/test_residual.py \
                   tests/test_gauge.py tests/test_forward_dtype.py tests/test_layer_stream.py \
                   tests/test_fast_nulls.py tests/test_bf16_choice.py tests/test_models.py \
                   tests/test_weight_rows.py tests/test_gguf_tensors.py tests/test_tolerance.py
KERNEL_ENV := ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=AVX2 OMP_NUM_THREADS=1 \
              $(if $(filter x86_64,$(shell uname -m)),OPENBLAS_CORETYPE=Haswell)

.PHONY: verdicts test test-kernels install clean-cache

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

test-kernels: $(BIN)/.installed
	env $(KERNEL_ENV) $(BIN)/pytest $(NUMERICAL_TESTS) $(TESTARGS)

clean-cache: $(BIN)/.installed
	$(BIN)/python -m probes.cache clear
