"""Known answers for the weight-Gram pass, adjacent similarity and the scale schedule."""

import math
import weakref

import numpy as np
import pytest
import torch

from probes import adjacent, scale
from probes.errors import NotApplicable
from probes.models import open_model
from probes.phases import default_phases
from probes.weight_gram import BLOCK, family_gram
from tests import tolerance as tol


def dense_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().ravel(), b.double().ravel()
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("budget", [1 << 10, 1 << 14, 1 << 30])
def test_gram_equals_dense_float64_for_any_chunking(budget):
    model = open_model("synthetic:tiny-qwen3")
    for fam in ("q_proj", "down_proj", "q_norm"):
        g = family_gram(model, fam, budget_bytes=budget)
        w = [model.weight(L, fam).double().ravel() for L in range(model.layout.num_layers)]
        dense = torch.stack(w) @ torch.stack(w).T
        # float32 GEMM over blocks of ≤ weight_gram.BLOCK entries, the blocks summed in float64:
        # error ≤ sum_rtol(block)·Σ|a_i b_i| ≤ sum_rtol(block)·‖a‖‖b‖ (the tests need 1e-4 in cos)
        block = min(w[0].numel(), BLOCK)
        scale_ = float(dense.diagonal().max())
        assert np.abs(g["gram"] - dense.numpy()).max() <= tol.sum_rtol(block) * scale_
        # float32 block sums, likewise relative to Σ|w| (sums of centred weights cancel)
        abs_sums = np.array([x.abs().sum().item() for x in w])
        assert np.all(np.abs(g["sums"] - [x.sum().item() for x in w])
                      <= tol.sum_rtol(block) * abs_sums)
        assert g["n"] == w[0].numel()


def test_absent_family_is_none_and_not_applicable():
    model = open_model("synthetic:tiny-llama")
    assert family_gram(model, "q_norm") is None
    result = adjacent.compute(model)
    assert "q_norm" not in result["families"]
    with pytest.raises(NotApplicable, match="no q_norm"):
        adjacent.far_from_null(result, {"all": list(range(8))}, "all", "q_norm")


def test_adjacent_fields_and_orthogonal_null_identities():
    result = adjacent.compute(open_model("synthetic:tiny-llama"))
    adj = adjacent.adjacent(result, "gate_proj")
    cos = adj["cos"]
    # float64 closed forms of the same float64 cosines: np.allclose's rtol=1e-5/atol=1e-8 are
    # far above float64 rounding (a wrong formula is off by O(0.1))
    assert np.allclose(adj["resid"], np.sqrt(2 - 2 * cos))
    assert np.allclose(adj["scalar_fit"], np.sqrt(1 - cos ** 2))
    assert np.allclose(adj["improve_frac"], 1 - adj["scalar_fit"] / adj["resid"])
    # independent random layers: cos ≈ 0, so improve_frac sits at its orthogonal null
    assert np.all(np.abs(cos) < 0.05)
    assert np.allclose(adj["improve_frac"], 1 - 1 / math.sqrt(2), atol=0.04)


def test_null_moments_in_cos_units_match_direct_closed_form():
    model = open_model("synthetic:tiny-llama")
    result = adjacent.compute(model)
    adj = adjacent.adjacent(result, "input_ln")
    a, b = model.weight(3, "input_ln").double(), model.weight(4, "input_ln").double()
    a = a + torch.linspace(0, 1, a.numel(), dtype=torch.float64)  # ensure non-constant
    mean, var = adjacent.permutation_null_moments(a.numpy(), b.numpy())
    assert np.isfinite(mean) and var >= 0
    # the probe's pair moments for an untouched pair equal the helper's
    a0, b0 = model.weight(3, "input_ln").double(), model.weight(4, "input_ln").double()
    m0, v0 = adjacent.permutation_null_moments(a0.numpy(), b0.numpy())
    denom = float(a0.norm() * b0.norm())
    # the probe's moments come from its float32-block Gram/sums (n = hidden entries); the
    # helper's are float64: the probe's relative error is sum_rtol(n) per moment
    n = a0.numel()
    assert adj["null_mean"][3] == pytest.approx(m0 / denom, rel=4 * tol.sum_rtol(n), abs=1e-12)
    if v0 > 0:
        assert adj["null_sd"][3] == pytest.approx(math.sqrt(v0) / denom, rel=1e-5)  # a variance of centred
        # sums cancels (condition Σw²/(n·var) ≲ 1e2 for gains): 1e-5 ≈ 1e2·sum_rtol(n). Not
        # reached on tiny-llama, whose gains are constant (v0 = 0; the mean is exact there)


def test_planted_adjacent_detected_and_twin_not():
    model = open_model("synthetic:planted-adjacent")
    phases = default_phases(model.layout.num_layers)
    result = adjacent.compute(model)
    twin = adjacent.compute(open_model("random:synthetic:planted-adjacent"))
    for fam in ("q_proj", "o_proj", "down_proj"):
        ev = adjacent.far_from_null(result, phases, "C", fam)
        assert ev.observed == pytest.approx(1 / math.sqrt(1.25), abs=0.02)
        assert ev.p < 1e-6 and ev.ci[0] > 0.8
        ev_d = adjacent.far_from_null(result, phases, "D", fam)
        assert abs(ev_d.effect) < 0.05 and ev_d.ci[1] < 0.05  # unrelated layers sit at the null
        ev_twin = adjacent.far_from_null(twin, phases, "C", fam)
        assert abs(ev_twin.observed) < 0.05


def test_scale_schedule_planted_vs_twin():
    ev = scale.low_dim(adjacent.compute(open_model("synthetic:planted-adjacent")))
    assert ev.observed > 0.95 and ev.p < 0.01 and ev.effect > 0.5
    twin = scale.low_dim(adjacent.compute(open_model("random:synthetic:planted-adjacent")))
    assert twin.p > 0.01 or twin.effect < 0.1


def test_scale_null_is_shuffle_of_each_track():
    rng = np.random.default_rng(0)
    tracks = rng.normal(size=(6, 20))
    null = scale.mode1_share_null(tracks, draws=500, seed=1)
    # pure noise: the observed share is typical of its shuffle null
    obs = scale.explained_variance(tracks)[0]
    assert null.min() > 1 / 6 and abs(obs - null.mean()) < 3 * null.std()
    # a shared depth profile is far above it
    shared = np.outer(rng.uniform(0.5, 2, 6), np.sin(np.linspace(0, 3, 20))) + 0.01 * tracks
    assert scale.explained_variance(shared)[0] > scale.mode1_share_null(shared, 500, 1).max()


class CountingModel:
    """Wraps a Model and tracks how many bytes of tensors it handed out are still alive."""

    def __init__(self, model):
        self.inner = model
        self.layout = model.layout
        self.alive = 0
        self.peak = 0

    def _track(self, t):
        if t is None:
            return t
        size = t.numel() * t.element_size()
        self.alive += size
        self.peak = max(self.peak, self.alive)
        weakref.finalize(t, self._free, size)
        return t

    def _free(self, size):
        self.alive -= size

    def shape(self, layer, family):
        return self.inner.shape(layer, family)

    def weight_rows(self, layer, family, start, stop):
        return self._track(self.inner.weight_rows(layer, family, start, stop).clone())

    def read_rows_into(self, layer, family, start, stop, out):
        # the pass's own buffer is tracked once, by its size; a read may hand out nothing more
        self.buffer = max(getattr(self, "buffer", 0), out.untyped_storage().nbytes())
        return self.inner.read_rows_into(layer, family, start, stop, out)


def test_weight_pass_holds_a_bounded_slice_not_the_model(tmp_path):
    # a 48-layer checkpoint on disk; the pass must stay under its budget whatever the depth
    from probes.models.checkpoint import write_checkpoint
    from probes.synthetic import SyntheticSpec
    from probes.synthetic.base import random_state_dict, tiny_config
    cfg = tiny_config("llama", num_layers=48, hidden=128, intermediate=512)
    write_checkpoint(SyntheticSpec(cfg, random_state_dict(cfg)), tmp_path / "ckpt", shards=3)
    model = CountingModel(open_model(str(tmp_path / "ckpt")))
    one_layer_gate = 512 * 128 * 4
    budget = 4 * one_layer_gate
    g = family_gram(model, "gate_proj", budget_bytes=budget)
    assert g["gram"].shape == (48, 48)
    whole_family = 48 * one_layer_gate
    assert model.peak == 0  # rows are converted straight into the pass's buffer
    assert model.buffer <= budget + one_layer_gate  # ≤ ~5 layers' worth, not 48
    assert model.buffer < whole_family / 8


@pytest.mark.parametrize("poison", ["nan", "inf", "zero"])
def test_non_finite_or_zero_weights_are_not_applicable(tmp_path, poison):
    from probes.models.checkpoint import write_checkpoint
    from probes.synthetic import get
    spec = get("tiny-llama")
    state = dict(spec.state_dict)
    name = "model.layers.3.self_attn.q_proj.weight"
    bad = state[name].clone()
    if poison == "zero":
        bad.zero_()
    else:
        bad[0, 0] = float(poison)
    state[name] = bad
    write_checkpoint((spec.config, state), tmp_path / "m")
    result = adjacent.compute(open_model(str(tmp_path / "m")))
    phases = {"all": list(range(8))}
    with pytest.raises(NotApplicable, match="zero-norm, constant or non-finite"):
        adjacent.far_from_null(result, phases, "all", "q_proj")
    adjacent.far_from_null(result, phases, "all", "k_proj")  # other families unaffected
    # the scale schedule leaves the bad family out and says so
    ev = scale.low_dim(result)
    assert "q_proj" not in ev.extra["families"] and ev.extra["excluded_families"] == ["q_proj"]
