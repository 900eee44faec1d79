"""Every architecture of the table (probes.models.adapters.ARCHITECTURES), on a tiny checkpoint
saved by transformers itself (``benchmarks.compatibility.tiny_checkpoint``: ``from_config`` +
``save_pretrained``, safetensors; mixtures of experts both as the hub stores them, one tensor per
expert, and fused as transformers 5 holds them):

* known answers: the adapter's q, k, v, o, gate, up, down (router, experts) tensors reproduce the
  transformers module's own projections on random inputs — read from the module's forward (the
  attention module with an attention function that records its q, k, v and returns a chosen
  output; the MLP with its activation replaced by a recorder), never through Strata's code —
  and its norm gains reproduce the module's norms (RMSNorm or LayerNorm, per head or over the
  whole projection, ``1 + w``); the table's ``parallel`` and ``gated`` flags are what the module
  does;
* every claim of ``hypotheses/`` gives a verdict or an N/A whose reason the architecture
  explains;
* the random twin opens, holds the architecture's own init, and runs;
* the layer-streamed statistics equal the whole-model forward;
* the README's compatibility table is what ``benchmarks.compatibility`` renders now.

Tolerances: the known answers compare float32 products of ≤ 48-term sums of O(1) values
computed in two association orders (the module's and ours): error ≲ 48·ε·|terms| ≈ 1e-5
relative; we assert ``atol = rtol = 1e-4`` on O(1) quantities. Differences of two module calls
(to cancel biases) lose at most one more ε of the larger value.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import compatibility as compat
from benchmarks.claims import discover
from probes import activations, calibration, head_metric
from probes.cache import Cache
from probes.models import open_model
from probes.models.adapters import (ARCHITECTURES, StackedRef, TensorRef, architecture,
                                    parallel_attention)
from probes.models.base import EXPERT_FAMILIES, NORMS, UNORDERED_FAMILIES
from probes.models.sources import DictSource
from tests import tolerance as tol

ARCHS = [compat.tiny_arch(a) for a in ARCHITECTURES]
MOE = [compat.tiny_arch(a) for a in ARCHITECTURES if a.experts]
CASES = [(a, False) for a in ARCHS] + [(a, True) for a in MOE]
IDS = [a + ("-fused-experts" if f else "") for a, f in CASES]
ATOL = RTOL = 1e-4
_BUILT: dict = {}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """``ckpt(arch, fused_experts=False)``: the tiny checkpoint's directory, built once."""
    def get(arch: str, fused: bool = False) -> Path:
        key = (arch, fused)
        if key not in _BUILT or not (_BUILT[key] / "config.json").is_file():
            out = tmp_path_factory.mktemp(f"{arch}{'-fused' if fused else ''}") / "ckpt"
            _BUILT[key] = compat.tiny_checkpoint(arch, out, fused_experts=fused)
        return _BUILT[key]
    return get


# ---------------------------------------------------------------------------------------------
# the transformers module, driven directly
# ---------------------------------------------------------------------------------------------
class Capture:
    """An attention function for transformers' AttentionInterface: records q, k, v as the
    module hands them over ([batch, heads, tokens, head_dim]) and returns ``output`` (or zeros)
    as the attention's per-head result ([batch, tokens, heads, head_dim])."""

    name = "strata_capture"
    q = k = v = None
    output = None

    @classmethod
    def forward(cls, module, query, key, value, attention_mask, *args, **kwargs):
        cls.q, cls.k, cls.v = query.detach().clone(), key.detach().clone(), value.detach().clone()
        b, h, t, d = query.shape
        out = cls.output if cls.output is not None else torch.zeros(b, t, h, d)
        return out.to(query.dtype), None


def _register_capture():
    from transformers import AttentionInterface
    AttentionInterface.register(Capture.name, Capture.forward)


def hf_model(path: Path):
    """The checkpoint through transformers (its own loading and conversions), float32, with the
    capturing attention function."""
    from transformers import AutoModelForCausalLM
    _register_capture()
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    for cfg in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        cfg._attn_implementation = Capture.name
    return model


def decoder_layer(model, n: int, index: int):
    """Decoder layer ``index`` of the base model: its ModuleList of ``n`` layers."""
    lists = [m for m in model.base_model.children() if isinstance(m, torch.nn.ModuleList)
             and len(m) == n]
    assert len(lists) == 1
    return lists[0][index]


def child_by_suffix(layer, suffix: str):
    """The submodule a stored tensor's suffix names (``self_attn.q_norm.weight`` → q_norm)."""
    return layer.get_submodule(suffix.rsplit(".", 1)[0])


def attention_of(layer):
    mods = [m for name, m in layer.named_children() if type(m).__name__.endswith("Attention")]
    assert len(mods) == 1, [type(m).__name__ for m in layer.children()]
    return mods[0]


def rotary_identity(model, layer_index: int, ids):
    """The decoder layer's position embeddings for ``ids`` from the model's own forward, with
    cos = 1 and sin = 0 (no rotation), or None for architectures without rotary embeddings."""
    layer = decoder_layer(model, model.config.get_text_config().num_hidden_layers, layer_index)
    seen = {}

    def hook(module, args, kwargs):
        seen.update(kwargs)
    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    with torch.no_grad():
        model(torch.tensor([ids]))
    handle.remove()
    pe = seen.get("position_embeddings")
    return None if pe is None else (torch.ones_like(pe[0]), torch.zeros_like(pe[1]))


def attend(attn, x, pe, output=None):
    """Run the attention module on hidden states ``x`` [1, T, d]; returns its output [1, T, d]."""
    Capture.output = output
    kwargs = {"hidden_states": x, "attention_mask": None}
    if pe is not None:
        kwargs["position_embeddings"] = pe
    with torch.no_grad():
        out = attn(**kwargs)
    Capture.output = None
    return out[0] if isinstance(out, tuple) else out


def heads_flat(t):
    """[1, heads, T, hd] → [T, heads·hd] (head h = columns h·hd:(h+1)·hd)."""
    return t[0].transpose(0, 1).reshape(t.shape[2], -1)


class ActStub(torch.nn.Module):
    """Stands in for an MLP's activation: records its input; returns the constant ``z`` (gated:
    down(z ⊙ up x)) or ``z ⊙ input`` (ungated: down(z ⊙ up x)) so both give down(z ⊙ up x) + c."""

    def __init__(self, z, gated: bool):
        super().__init__()
        self.z, self.gated, self.seen = z, gated, None

    def forward(self, x):
        self.seen = x.detach().clone()
        z = self.z.to(x.dtype).expand_as(x)
        return z.clone() if self.gated else z * x


def swap_activation(mlp, stub):
    """Replace the activation of an MLP (or experts) module: its parameter-free, non-dropout
    child module."""
    names = [n for n, m in mlp.named_children() if not list(m.parameters())
             and not isinstance(m, torch.nn.Dropout)]
    assert len(names) == 1, names
    old = getattr(mlp, names[0])
    setattr(mlp, names[0], stub)
    return names[0], old


def close(a, b, what):
    torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------------------------
# known answers
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch,fused", CASES, ids=IDS)
def test_adapter_tensors_reproduce_the_modules_own_projections(arch, fused, ckpt):
    path = ckpt(arch, fused)
    model = open_model(str(path))
    ent, lay = model.adapter.entry, model.layout
    hf = hf_model(path)
    n, L = lay.num_layers, 2
    layer = decoder_layer(hf, n, L)
    gen = torch.Generator().manual_seed(7)
    t = 5
    x = torch.randn(1, t, lay.hidden, generator=gen)
    zero = torch.zeros_like(x)
    ids = list(range(3, 3 + t))
    pe = rotary_identity(hf, L, ids)
    attn = attention_of(layer)
    w = {f: model.weight(L, f) for f in model.families}

    # q, k, v: the module's projections (q/k norms off, no rotation), biases cancelled
    for fam in ("q_norm", "k_norm"):
        for suffix in ent.names.get(fam, ()):
            if fam in model.families:
                parent, _, leaf = suffix.rsplit(".", 1)[0].rpartition(".")
                setattr(layer.get_submodule(parent), leaf, torch.nn.Identity())
    attend(attn, zero, pe)
    q0, k0, v0 = Capture.q, Capture.k, Capture.v
    attend(attn, x, pe)
    xs = x[0]
    close(heads_flat(Capture.q - q0), xs @ w["q_proj"].T, "q_proj")
    close(heads_flat(Capture.k - k0), xs @ w["k_proj"].T, "k_proj")
    close(heads_flat(Capture.v - v0), xs @ w["v_proj"].T, "v_proj")
    assert Capture.q.shape[1] == lay.num_heads and Capture.k.shape[1] == lay.num_kv_heads
    assert Capture.q.shape[-1] == lay.head_dim
    # o: the attention's per-head result R through the output projection
    r = torch.randn(1, t, lay.num_heads, lay.head_dim, generator=gen)
    out = attend(attn, x, pe, r) - attend(attn, x, pe, torch.zeros_like(r))
    close(out[0], r[0].reshape(t, -1) @ w["o_proj"].T, "o_proj")

    # the MLP: gate from the activation's input, down(z ⊙ up x) from the output
    hf = hf_model(path)             # fresh: the q/k norms are back
    layer = decoder_layer(hf, n, L)
    mlp = layer.mlp
    if ent.experts is None:
        width = lay.intermediate
        z = torch.randn(width, generator=gen)
        stub = ActStub(z, ent.gated)
        swap_activation(mlp, stub)
        with torch.no_grad():
            base = mlp(zero)
            seen0 = stub.seen
            got = mlp(x) - base
        if ent.gated:
            close(stub.seen[0] - seen0[0], xs @ w["gate_proj"].T, "gate_proj")
        else:
            close(stub.seen[0] - seen0[0], xs @ w["up_proj"].T, "up_proj")
            assert "gate_proj" not in model.families
        close(got[0], (z * (xs @ w["up_proj"].T)) @ w["down_proj"].T, "up_proj·down_proj")
    else:
        logits = mlp.gate(xs)[0]
        close(logits, xs @ w["router"].T, "router")
        experts = mlp.experts
        z = torch.randn(lay.expert_intermediate, generator=gen)
        stub = ActStub(z, True)
        swap_activation(experts, stub)
        ones = torch.ones(t, 1)
        for e in range(lay.num_experts):
            index = torch.full((t, 1), e, dtype=torch.long)
            with torch.no_grad():
                got = experts(xs, index, ones)
            close(stub.seen, xs @ w["expert_gate_proj"][e].T, f"expert {e} gate")
            close(got, (z * (xs @ w["expert_up_proj"][e].T)) @ w["expert_down_proj"][e].T,
                  f"expert {e} up·down")

    # norms: module(x) − module(0) = normalised(x) ⊙ gain (LayerNorm/RMSNorm), per head or over
    # the whole projection for q/k norms
    for fam in (f for f in NORMS if f in model.families):
        module = child_by_suffix(layer, next(s for s in ent.names[fam]
                                             if model.adapter.ref(L, fam).name.endswith(s)))
        gain = w[fam]
        size = gain.numel()
        if fam in ("q_norm", "k_norm"):
            heads = lay.num_heads if fam == "q_norm" else lay.num_kv_heads
            want = {"per head": lay.head_dim, "whole projection": heads * lay.head_dim}
            assert size == want[ent.qk_norm], (fam, size, ent.qk_norm)
        v = torch.randn(3, size, generator=gen) * 2 + 0.5
        eps = float(getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6)))
        if ent.norm == "LayerNorm":
            normed = (v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False,
                                                                       keepdim=True) + eps)
        else:
            normed = v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + eps)
        with torch.no_grad():
            got = module(v) - module(torch.zeros_like(v))
        close(got, normed * gain, f"{fam} gain")


@pytest.mark.parametrize("arch", ARCHS)
def test_parallel_flag_is_what_the_layer_does(arch, ckpt):
    """The table's parallel flag: the MLP of a parallel layer reads the layer's input, whatever
    the attention returns; a sequential layer's MLP reads the input plus the attention output."""
    path = ckpt(arch)
    model = open_model(str(path))
    hf = hf_model(path)
    layer = decoder_layer(hf, model.layout.num_layers, 0)
    seen = []
    handle = layer.mlp.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for output in (None, "random"):
            Capture.output = (None if output is None else
                              torch.randn(1, 6, model.layout.num_heads, model.layout.head_dim,
                                          generator=gen))
            hf(torch.tensor([[3, 4, 5, 6, 7, 8]]))
    Capture.output = None
    handle.remove()
    same = torch.equal(seen[0], seen[-1])
    assert same == parallel_attention(model.adapter.entry, model.config), arch


def _absent_reason_ok(model, record) -> bool:
    reason = record.get("reason") or ""
    fam = record["family"]
    return bool(reason) and reason in (model.absent.get(fam), UNORDERED_FAMILIES.get(fam))


@pytest.mark.parametrize("arch", ARCHS)
def test_every_claim_gives_a_verdict_or_an_na_the_architecture_explains(arch, ckpt, tmp_path):
    """``pytest hypotheses/`` on the tiny checkpoint (benchmarks.claims.evaluate, the fixtures'
    own code), phases C and E of 3 layers: every claim gives a verdict; every N/A record is a
    family the architecture lacks (with the adapter's reason) or an unordered expert family."""
    path = ckpt(arch)
    records = compat.evaluate_checkpoint(path, Cache(tmp_path / "cache"))  # not the user's cache
    model = open_model(str(path))
    assert {r["claim"] for r in records} == {ct.claim.id for ct in discover()}
    for r in records:
        assert r["verdict"] in ("SUPPORTED", "REFUTED", "INCONCLUSIVE", "N/A"), r
        if r["verdict"] == "N/A":
            assert _absent_reason_ok(model, r), r
    decided = {r["claim"] for r in records if r["verdict"] != "N/A"}
    assert decided == {r["claim"] for r in records}, "a claim without any verdict"
    if model.adapter.entry.experts:
        fams = {(r["claim"], r["family"]) for r in records if r["verdict"] != "N/A"}
        assert ("gauge-delta-null", "router") in fams
        assert not any(f in EXPERT_FAMILIES for _, f in fams
                       if _ != "scale-schedule-low-dim")


@pytest.mark.parametrize("arch", ARCHS)
def test_random_twin_opens_with_the_architectures_own_init(arch, ckpt):
    """The twin has the checkpoint's layout and families; each projection's entries have the
    spread transformers' own init gave the checkpoint (GPT-2's residual projections:
    0.02/√(2·layers)); its layer-streamed forward runs and is finite."""
    path = ckpt(arch)
    model, twin = open_model(str(path)), open_model(f"random:{path}")
    assert twin.is_twin and twin.layout == model.layout and twin.families == model.families
    for fam in twin.families:
        if model.weight(0, fam).ndim < 2:
            continue   # 1-D parameters of the checkpoint were moved off their init on purpose
        a = torch.cat([model.weight(l, fam).flatten() for l in range(model.layout.num_layers)])
        b = torch.cat([twin.weight(l, fam).flatten() for l in range(model.layout.num_layers)])
        # two estimates of one std, each with relative sd 1/√(2n): 6 sd of their difference
        tol = 6 * math.sqrt(2 / (2 * a.numel()))
        assert abs(float(b.std() / a.std()) - 1) < tol, (fam, float(a.std()), float(b.std()))
    from probes.layer_stream import LayerStream
    for _, _, outputs in LayerStream(twin).run([[3, 4, 5, 6]]):
        assert torch.isfinite(outputs[0]).all()


@pytest.mark.parametrize("arch,fused", CASES, ids=IDS)
def test_layer_streamed_statistics_equal_the_whole_model(arch, fused, ckpt):
    from tests.test_layer_stream import assert_same_statistics
    model = open_model(str(ckpt(arch, fused)))
    tc = calibration.tokenize(calibration.load_corpus(), model.encode, 300)
    streamed = activations.compute(model, tc, top_k=4)
    assert_same_statistics(streamed, activations.compute_hooked(model, tc, top_k=4))
    assert streamed["memory"]["layers_in_memory"] == 1


@pytest.mark.parametrize("arch", [a for a in ARCHS if "q_norm" in architecture(
    "gemma3_text" if a == "gemma3" else a).names])
def test_folded_head_metric_gives_the_modules_attention_logits(arch, ckpt):
    """g_h from the head metric with the q/k norm gains folded (per head, or per row of the
    whole projection: OLMo 2, OLMoE) gives the module's attention logit of head h between a
    query x and a key y, up to the norms' RMS divisions: ⟨q̃_h(x), k̃_h(y)⟩ · r_q · r_k = yᵀ g_h x,
    r = √(mean z² + ε) over the group the norm divides by (a head's rows, or all of them)."""
    path = ckpt(arch)
    model = open_model(str(path))
    lay, ent, L = model.layout, model.adapter.entry, 1
    hf = hf_model(path)
    attn = attention_of(decoder_layer(hf, lay.num_layers, L))
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(1, 2, lay.hidden, generator=gen)   # token 0: key y, token 1: query x
    pe = rotary_identity(hf, L, [3, 4])
    attend(attn, x, pe)
    qn, kn = Capture.q[0, :, 1], Capture.k[0, :, 0]      # [H, hd], [KV, hd], after the norms
    norms = {f: child_by_suffix(decoder_layer(hf, lay.num_layers, L), ent.names[f][0])
             for f in ("q_norm", "k_norm")}
    raw_q = x[0, 1] @ model.weight(L, "q_proj").T          # the projections before the norms
    raw_k = x[0, 0] @ model.weight(L, "k_proj").T

    def rms(z, heads, module):
        eps = float(getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6)))
        z = z.reshape(heads, lay.head_dim)
        if ent.qk_norm == "whole projection":
            return torch.sqrt(z.pow(2).mean() + eps).expand(heads)
        return torch.sqrt(z.pow(2).mean(-1) + eps)

    rq = rms(raw_q, lay.num_heads, norms["q_norm"])
    rk = rms(raw_k, lay.num_kv_heads, norms["k_norm"])
    q, k = head_metric.load_heads(model, L, fold_norms=True)
    kv = head_metric.kv_index(lay.num_heads, lay.num_kv_heads)
    for h in range(lay.num_heads):
        g = k[kv[h]].T @ q[h]                                 # hidden × hidden
        want = x[0, 0] @ g @ x[0, 1]
        got = (qn[h] @ kn[kv[h]]) * rq[h] * rk[kv[h]]
        close(got, want, f"head {h}")


# ---------------------------------------------------------------------------------------------
# the adapter's reads, without transformers
# ---------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_row_reads_equal_the_whole_tensor_for_every_layout(data):
    """``read_rows(a, b)`` of any TensorRef kind equals rows a:b of the family's whole tensor:
    row blocks, GPT-NeoX's per-head interleave, GPT-2's transposed storage, experts' axis-1
    blocks, and per-expert stacks."""
    heads = data.draw(st.integers(1, 4))
    hd = data.draw(st.sampled_from([1, 2, 3]))
    n = data.draw(st.integers(1, 5))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    part = data.draw(st.integers(0, 2))
    stored = {"qkv": torch.randn(heads * 3 * hd, n, generator=gen),
              "conv": torch.randn(n, 3 * heads * hd, generator=gen),
              "ex": torch.randn(3, 2 * hd, n, generator=gen),
              **{f"e{i}": torch.randn(hd, n, generator=gen) for i in range(3)}}
    src = DictSource(stored)
    refs = [TensorRef("qkv", per_head=(3, part, hd), fused_size=3 * heads * hd),
            TensorRef("conv", rows=(part * heads * hd, (part + 1) * heads * hd),
                      transposed=True, fused_size=3 * heads * hd),
            TensorRef("ex", rows=(0, hd) if part == 0 else (hd, 2 * hd), axis=1,
                      fused_size=2 * hd),
            StackedRef(tuple(TensorRef(f"e{i}") for i in range(3)))]
    for ref in refs:
        whole = (ref.apply_all(src.get) if isinstance(ref, StackedRef)
                 else ref.apply(src.get(ref.name)))
        assert tuple(whole.shape) == ref.family_shape(src.shape(ref.name))
        a = data.draw(st.integers(0, whole.shape[0]))
        b = data.draw(st.integers(a, whole.shape[0] + 2))
        assert torch.equal(ref.finish(ref.read_rows(src, a, b)), whole[a:b]), (ref, a, b)
    # the per-head interleave is [heads, 3, head_dim]: part p of head h are rows h·3·hd + p·hd …
    q = refs[0].apply(stored["qkv"])
    for h in range(heads):
        assert torch.equal(q[h * hd:(h + 1) * hd],
                           stored["qkv"][(3 * h + part) * hd:(3 * h + part + 1) * hd])


def test_expert_families_are_na_by_index_and_their_layouts_agree(ckpt):
    """Per-expert (hub) and fused (transformers 5) checkpoints of one model give the same
    expert tensors; the adjacent-cos claim and the gauge say N/A for them, with the reason."""
    from probes import adjacent, gauge
    from probes.errors import NotApplicable
    hub, fused = open_model(str(ckpt("qwen3_moe"))), open_model(str(ckpt("qwen3_moe", True)))
    assert hub.families == fused.families
    assert {hub.adapter.ref(0, "expert_up_proj").__class__,
            fused.adapter.ref(0, "expert_up_proj").__class__} == {StackedRef, TensorRef}
    for fam in ("router", *EXPERT_FAMILIES):
        assert torch.equal(hub.weight(3, fam), fused.weight(3, fam)), fam
        assert torch.equal(hub.weight_rows(3, fam, 1, 3), fused.weight_rows(3, fam, 1, 3))
    gram = adjacent.compute(hub)
    for fam in EXPERT_FAMILIES:
        with pytest.raises(NotApplicable, match="unordered across layers"):
            adjacent.far_from_null(gram, compat.PHASES, "C", fam)
        with pytest.raises(NotApplicable, match="unordered across layers"):
            gauge.family_fields({"families": []}, fam)
    with pytest.raises(NotApplicable, match="mixture of experts"):
        adjacent.far_from_null(gram, compat.PHASES, "C", "up_proj")


# ---------------------------------------------------------------------------------------------
# the README's table
# ---------------------------------------------------------------------------------------------
def test_readme_compatibility_table_is_what_the_code_renders(ckpt, tmp_path):
    rows, notes = [], []
    cache = Cache(tmp_path / "cache")  # tiny checkpoints' entries stay out of the user's cache
    for arch in ARCHITECTURES:
        path = ckpt(compat.tiny_arch(arch))
        records = compat.evaluate_checkpoint(path, cache)
        r = compat.row(arch, records, compat.gguf_cell(arch, path, cache), notes)
        r["layout"] = compat.layout_text(arch)
        rows.append(r)
    rendered = compat.render(rows, notes)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert compat.BEGIN in readme and compat.END in readme, "README lacks the table's markers"
    block = readme[readme.index(compat.BEGIN):readme.index(compat.END) + len(compat.END)]
    assert block == rendered, ("README's compatibility table is stale: paste the output of "
                               "`python -m benchmarks.compatibility`")


def test_gauge_neuron_permutation_without_a_gate_is_shared_by_up_and_down():
    """An MLP without a gate (down(act(up x))): layer L+1 = layer L with its neurons relabelled
    (up rows and down columns by one permutation) is aligned exactly (cos 1) by the permutation
    gauge of up and down; relabelling down's columns by another permutation is not (the
    permutation is shared, not one per family); the cost model books the assignment."""
    from probes import gauge, gauge_cost
    gen = torch.Generator().manual_seed(5)
    ff, hidden = 40, 12
    up, down = torch.randn(ff, hidden, generator=gen), torch.randn(hidden, ff, generator=gen)
    perm, other = torch.randperm(ff, generator=gen), torch.randperm(ff, generator=gen)
    fams = ["up_proj", "down_proj"]
    shared = gauge.compute_from_layers(
        [{"up_proj": up, "down_proj": down}, {"up_proj": up[perm], "down_proj": down[:, perm]}],
        families=fams, threads=1, seed=0)
    split = gauge.compute_from_layers(
        [{"up_proj": up, "down_proj": down}, {"up_proj": up[perm], "down_proj": down[:, other]}],
        families=fams, threads=1, seed=0)
    for fam in fams:
        got = gauge.family_fields(shared, fam)
        assert got["gauge"] == "permutation"
        # float32 products of float32 unit-normalised neurons (3 roundings a term), float64 sum
        assert got["aligned_cos"][0] == pytest.approx(
            1.0, abs=tol.mixed_dot_rtol(up.numel() + down.numel(), 3))
        assert got["null_aligned_mean"][0] < 0.9 and abs(got["raw_cos"][0]) < 0.5
        assert gauge.family_fields(split, fam)["aligned_cos"][0] < 0.9
    est = gauge_cost.estimate({"up_proj": (ff, hidden), "down_proj": (hidden, ff)}, 2,
                              rates={"gemm_f32_gflops": 1.0, "gemm_bf16_gflops": 1.0,
                                     "eig512_s": 1.0, "lsa512_s": 1.0})
    assert est.loc["up_proj", "assignment"] > 0


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
def test_hub_checkpoints_legacy_names_and_buffers(arch, ckpt, tmp_path):
    """Hub GPT-2 stores its tensors without the ``transformer.`` prefix and, like Pythia, the
    layers' causal-mask buffers (``attn.bias``, ``attention.masked_bias``) and older rotary
    frequencies: the adapter finds the layers, the stream drops what transformers drops, and the
    statistics still equal the whole-model forward."""
    from safetensors.torch import load_file, save_file
    src = ckpt(arch)
    state = load_file(str(src / "model.safetensors"))
    n = json.loads((src / "config.json").read_text())["n_layer" if arch == "gpt2"
                                                       else "num_hidden_layers"]
    if arch == "gpt2":
        state = {k.removeprefix("transformer."): v for k, v in state.items()}
        extra = {f"h.{i}.attn.bias": torch.tril(torch.ones(1, 1, 8, 8)) for i in range(n)}
        extra.update({f"h.{i}.attn.masked_bias": torch.tensor(-1e4) for i in range(n)})
    else:
        extra = {f"gpt_neox.layers.{i}.attention.{b}": t for i in range(n) for b, t in
                 (("bias", torch.tril(torch.ones(1, 1, 8, 8))), ("masked_bias", torch.tensor(-1e4)),
                  ("rotary_emb.inv_freq", torch.ones(2)))}
    out = tmp_path / "legacy"
    out.mkdir()
    save_file({**state, **extra}, str(out / "model.safetensors"))
    (out / "config.json").write_text((src / "config.json").read_text())
    legacy, model = open_model(str(out)), open_model(str(src))
    assert legacy.families == model.families and legacy.adapter.prefix != "transformer."
    for fam in model.families:
        assert torch.equal(legacy.weight(n - 1, fam), model.weight(n - 1, fam)), fam
    from tests.test_layer_stream import assert_same_statistics
    tc = calibration.tokenize(calibration.load_corpus(), legacy.encode, 120)
    assert_same_statistics(activations.compute(legacy, tc, top_k=2),
                           activations.compute(model, tc, top_k=2))


@pytest.mark.parametrize("arch", ARCHS)
def test_synthetic_tiny_model_of_every_architecture(arch, ckpt):
    """``synthetic:tiny-<arch>`` (the architecture's init drawn tensor by tensor, in
    transformers' in-memory names: fused experts) has the families of the transformers-saved
    checkpoint, and transformers runs it holding the adapter's tensors."""
    model, saved = open_model(f"synthetic:tiny-{arch}"), open_model(str(ckpt(arch)))
    assert model.families == saved.families and model.absent == saved.absent
    hf = model.hf_model()
    state = hf.state_dict()
    ref = model.adapter.ref(1, "k_proj")
    name = ref.name if isinstance(ref, TensorRef) else ref.parts[0].name
    assert torch.equal(ref.apply(state[name]), model.weight(1, "k_proj"))
    with torch.no_grad():
        assert torch.isfinite(hf(torch.tensor([[3, 4, 5]])).logits).all()
