"""The layer-streamed forward pass equals the whole-model hooked pass, one layer in memory.

Tolerances (:func:`assert_same_statistics`): on CPU both paths run the same float32 modules on
the same inputs, so the states — and the float64 sums of them — agree bit for bit (relative
1e-6 asserted); their Grams are float32 products of differently cut blocks of rows, so the
spectra agree to the bounds that blocking implies (tests/tolerance.py), whatever kernels the CPU
dispatches to (an AVX-512 Xeon's MKL cuts them otherwise than an AMD's AVX2 path: the effective
rank differed by 1.1e-6 relative there, against a bare 1e-6). Directions are defined up to sign."""

import numpy as np
import pytest
import torch

from probes import activations, calibration, residual
from probes.activations import GRAM_BLOCK_ROWS
from probes.errors import StrataError
from probes.evidence import decide
from probes.layer_stream import LayerStream
from probes.models import open_model
from probes.models.checkpoint import write_checkpoint
from probes.phases import default_phases
from probes.synthetic.base import random_state_dict, tiny_config
from tests import tolerance as tol

# read off each run's Gram spectrum, not summed from its states
SPECTRAL = ("effective_rank", "top1_energy", "top3_energy", "top10_energy")
SCALARS = ("rel_step", "parallel_frac", "cos_delta_h", "angular_step", "delta_norm_mean",
           "h_norm_mean", "delta_sq_mean", "h_sq_mean", "dot_mean", "effective_rank",
           "top1_energy", "top3_energy", "top10_energy")
PER_TOKEN = ("tok_delta_sq", "tok_dot", "tok_h_sq")


def _corpus(model, budget):
    return calibration.tokenize(calibration.load_corpus(), model.encode, budget)


def assert_same_statistics(streamed, reference, rtol=1e-6, gram_rows=2 * GRAM_BLOCK_ROWS):
    """Two runs of the activation probe give the same statistics.

    The per-token and per-layer scalars are float64 sums over the same float32 states (the same
    modules on the same inputs): equal to ``rtol`` relative. The spectra come from each run's
    Gram, float32 products of blocks of ≤ ``gram_rows`` rows summed in float64 — blocks the two
    paths cut differently (the stream stacks windows up to ≥ GRAM_BLOCK_ROWS rows, the hooked
    pass takes one window), so their entries agree to ``agree_rtol(gram_rows)``·√(G_ii G_jj),
    plus 2·``rtol`` when the states themselves differ by ``rtol`` (another device); ``gram_rows=0``:
    both sum the same blocks. From that bound on ‖ΔG‖_F (tests/tolerance.py): every eigenvalue
    (Weyl), the top-k energies (Ky Fan), the effective rank (its entropy's derivative) and each
    resolved direction (Davis–Kahan). Each run's spectral scalars are also checked to be the
    functions of its own eigenvalues they claim to be."""
    for key in SCALARS + PER_TOKEN:
        if key in SPECTRAL:
            continue
        a, b = np.asarray(streamed[key]), np.asarray(reference[key])
        scale = np.maximum(np.abs(b), np.abs(b).max() * 1e-6)
        assert np.all(np.abs(a - b) <= rtol * scale), (key, np.max(np.abs(a - b) / scale))
    rel = (tol.agree_rtol(gram_rows) if gram_rows else 0.0) + 2 * rtol
    ea, eb = streamed["eigvals"], reference["eigvals"]
    for run in (streamed, reference):
        for L, e in enumerate(run["eigvals"]):
            assert run["effective_rank"][L] == residual.effective_rank(e)
            for k in (1, 3, 10):
                assert run[f"top{k}_energy"][L] == residual.top_energy(e, k)
    for L in range(len(eb)):
        atol = tol.gram_eig_atol(eb[L], rel)
        assert np.all(np.abs(ea[L] - eb[L]) <= atol), (L, np.max(np.abs(ea[L] - eb[L])), atol)
        erank = reference["effective_rank"][L]
        assert abs(streamed["effective_rank"][L] - erank) <= \
            tol.effective_rank_rtol(eb[L], atol, rel) * erank, ("effective_rank", L)
        for k in (1, 3, 10):
            assert abs(streamed[f"top{k}_energy"][L] - reference[f"top{k}_energy"][L]) <= \
                tol.top_energy_atol(eb[L], k, atol, rel), (f"top{k}_energy", L)
        for k in range(streamed["top_dirs"].shape[1]):
            dot = abs(float(streamed["top_dirs"][L, k].astype(np.float64)
                            @ reference["top_dirs"][L, k].astype(np.float64)))
            assert 1 - dot <= tol.direction_cos_atol(eb[L], k, atol), ("top_dirs", L, k, dot)
    assert streamed["scored_tokens"] == reference["scored_tokens"]


@pytest.fixture
def mistral_sliding(tmp_path):
    """Mistral with a sliding window (8) far shorter than the windows: exercises the masks."""
    cfg = tiny_config("mistral", num_layers=4, sliding_window=8)
    return open_model(str(write_checkpoint((cfg, random_state_dict(cfg, seed=3)), tmp_path / "m")))


@pytest.mark.parametrize("spec", ["synthetic:tiny-llama", "synthetic:tiny-mistral",
                                  "synthetic:tiny-qwen2", "synthetic:tiny-qwen3",
                                  "synthetic:tiny-gemma3", "mistral-sliding"])
def test_streamed_equals_whole_model(spec, request):
    model = request.getfixturevalue("mistral_sliding") if spec == "mistral-sliding" \
        else open_model(spec)
    tc = _corpus(model, 700)
    streamed = activations.compute(model, tc, top_k=4)
    assert_same_statistics(streamed, activations.compute_hooked(model, tc, top_k=4))
    mem = streamed["memory"]
    d = model.layout.hidden
    seqs = activations.windows(tc, mem["window"])
    assert mem["streamed"] and mem["layers_in_memory"] == 1
    assert mem["hidden_bytes"] == 2 * sum(len(s) for s in seqs) * d * 4  # inputs + outputs
    assert mem["embedding_rows"] == len({i for s in seqs for i in s})


def test_one_layer_at_a_time_every_window_first(monkeypatch):
    """Layer L+1 is loaded only after every window went through L and L was released; the
    whole model is never built; only the embedding rows of the ids in use are read."""
    model = open_model("synthetic:tiny-qwen3")
    tc = _corpus(model, 400)
    seqs = activations.windows(tc, 64)
    assert len(seqs) > 2
    events = []
    monkeypatch.setattr(type(model), "hf_model",
                        lambda *a, **k: pytest.fail("the whole model was built"))
    real_state, real_rows = type(model).layer_state, type(model).embedding_rows

    def layer_state(self, layer, dtype=None, reuse=None):
        events.append(("load", layer))
        return real_state(self, layer, dtype, reuse)

    def embedding_rows(self, ids):
        events.append(("embed", list(ids)))
        return real_rows(self, ids)

    monkeypatch.setattr(type(model), "layer_state", layer_state)
    monkeypatch.setattr(type(model), "embedding_rows", embedding_rows)
    stream = LayerStream(model)
    seen = []
    for layer, inputs, outputs in stream.run(seqs):
        assert events[-1] == ("load", layer)
        # every window has been through this layer, and no other layer is alive
        assert len(outputs) == len(seqs)
        assert all(m is None for m in stream.meta_layers[:layer + 1])
        assert all(m is None or next(m.parameters()).is_meta
                   for m in stream.meta_layers[layer + 1:])
        seen.append(layer)
    assert seen == list(range(model.layout.num_layers))
    assert events[0] == ("embed", sorted({i for s in seqs for i in s}))


def test_embedding_rows_equal_the_matrix_rows(tmp_path):
    cfg = tiny_config("qwen3", num_layers=2, vocab_size=3000)
    state = random_state_dict(cfg, seed=1)
    model = open_model(str(write_checkpoint((cfg, state), tmp_path / "q", shards=2,
                                            dtype=torch.bfloat16)))
    ids = [0, 5, 6, 1023, 1024, 1030, 2047, 2999]
    rows = model.embedding_rows(ids)
    assert rows.dtype == torch.bfloat16
    torch.testing.assert_close(rows, state["model.embed_tokens.weight"].to(torch.bfloat16)[ids],
                               rtol=0, atol=0)


def test_pad_token_beyond_the_rows_in_use(tmp_path):
    """A config whose pad_token_id lies past the embedding rows kept (Qwen2.5: 151643) streams
    like the whole model (the pad id only masks gradients)."""
    cfg = tiny_config("qwen2", num_layers=2, pad_token_id=255)
    model = open_model(str(write_checkpoint((cfg, random_state_dict(cfg, seed=2)), tmp_path / "p")))
    tc = _corpus(model, 200)
    assert max(max(s) for s in activations.windows(tc, 64)) < 255
    assert_same_statistics(activations.compute(model, tc, top_k=4),
                           activations.compute_hooked(model, tc, top_k=4))


def test_bad_input_is_one_line_error(tmp_path):
    model = open_model("synthetic:tiny-llama")
    stream = LayerStream(model)
    with pytest.raises(StrataError, match="outside the model's vocabulary"):
        stream.embed([[1, 2, model.layout.hidden * 1000]])
    cfg = tiny_config("llama", num_layers=2)
    state = random_state_dict(cfg)
    del state["model.layers.1.mlp.up_proj.weight"]
    broken = open_model(str(write_checkpoint((cfg, state), tmp_path / "b")))
    tc = _corpus(broken, 50)
    with pytest.raises(StrataError, match=r"layer 1 tensors do not match.*up_proj"):
        activations.compute(broken, tc)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu():
    model = open_model("synthetic:tiny-qwen3")
    tc = _corpus(model, 400)
    gpu = activations.compute(model, tc, device="cuda", top_k=4)
    cpu = activations.compute(model, tc, top_k=4)
    assert_same_statistics(gpu, cpu, rtol=1e-4)


@pytest.mark.slow
def test_default_model_streamed_equals_whole_model_same_verdicts():
    """SmolLM2-135M (the default model), first 1,500 calibration tokens: the streamed pass's
    statistics equal the whole-model pass's, and the three activation claims decide the same."""
    import importlib
    model = open_model("smollm2-135m")
    tc = _corpus(model, 1500)
    streamed = activations.compute(model, tc)
    reference = activations.compute_hooked(model, tc)
    assert_same_statistics(streamed, reference)
    phases = default_phases(model.layout.num_layers)
    claims = {"phase-C-shared-subspace": lambda r: residual.shared_subspace(r, phases, "C"),
              "phase-E-specialized": lambda r: residual.specialized(r, phases, "E"),
              "late-layers-change-least": lambda r: residual.late_layers_change_least(r)}
    for claim_id, evidence in claims.items():
        mod = importlib.import_module("hypotheses.test_" + claim_id.lower().replace("-", "_"))
        a, b = evidence(streamed), evidence(reference)
        assert decide(mod.CLAIM, a, 0.05).verdict == decide(mod.CLAIM, b, 0.05).verdict
        assert a.observed == pytest.approx(b.observed, rel=1e-6, abs=1e-9)


def test_layer_memory_reused_in_bf16_changes_no_weight():
    """A float32 source run in bf16 (a random twin, a float32 checkpoint): each layer is drawn
    into the float32 memory the previous layer's draws used and converted into the previous
    layer's bf16 weights (no fresh pages); every layer's weights are still exactly those of a
    fresh read converted to bf16. Shapes above the pool's 1 MiB floor so reuse happens."""
    from probes.forward_dtype import ForwardDtype
    from probes.models.loaded import random_twin
    cfg = tiny_config("qwen3", num_layers=3, hidden=1024, num_heads=4, num_kv_heads=4,
                      head_dim=128, intermediate=2048)
    twin = random_twin(cfg, "random:test", None)
    stream = LayerStream(twin, forward=ForwardDtype("bfloat16", "bfloat16", "test"))
    drawn_at, weights_at = [], []
    real_take = stream._spare.take

    def take(shape, dtype):
        buf = real_take(shape, dtype)
        if len(shape) == 2:     # the matrices (the 1-D gains are below the floor)
            (drawn_at if dtype == torch.float32 else weights_at).append(buf is not None)
        return buf

    stream._spare.take = take
    for layer in range(3):
        module = stream.load_layer(layer)
        fresh = {k: v.to(torch.bfloat16 if v.dim() >= 2 else torch.float32)
                 for k, v in twin.layer_state(layer).items()}
        got = module.state_dict()
        assert set(got) == set(fresh)
        for name, value in fresh.items():
            assert got[name].dtype == value.dtype and torch.equal(got[name], value), name
        stream._spare.give(module.parameters())     # what run() does after the layer
    matrices = 7   # q k v o gate up down, all ≥ 1 MiB in bf16
    assert drawn_at == [False] * matrices + [True] * 2 * matrices
    assert weights_at == [False] * matrices + [True] * 2 * matrices
