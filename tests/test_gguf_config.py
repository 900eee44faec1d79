"""A GGUF's config carries every hyperparameter the file holds (probes/models/gguf_config.py):
what transformers' GGUF reader drops (Qwen3's head_dim, rope scaling, Gemma's attention scale)
is restored, so the converted model is the model that was written — tensor for tensor and
forward pass for forward pass."""

from __future__ import annotations

import re

import pytest
import torch

from benchmarks.make_gguf import write_gguf
from probes.cache import Cache
from probes.errors import StrataError
from probes.models import open_model
from probes.models.gguf_config import completions
from probes.models.gguf_tensors import GGUFTensors
from probes.models.adapters import Adapter
from probes.models.checkpoint import write_checkpoint
from probes.models.loaded import LoadedModel
from probes.models.random_init import hf_config
from probes.models.sources import DictSource
from probes.synthetic.base import random_state_dict, tiny_config

# hidden 64 and 4 heads, but head_dim 32: hidden ≠ heads × head_dim, as in Qwen3-0.6B / 4B
SHAPE = dict(num_layers=2, hidden=64, num_heads=4, num_kv_heads=2, head_dim=32, intermediate=96)
# per architecture: values its GGUF holds that transformers' reader drops (or, for llama,
# reads) — each differs from the config class's default, so a dropped one changes the model
ARCH_CONFIGS = {
    "llama": dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 5e4}),
    "qwen2": dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 2e4,
                                   "original_max_position_embeddings": 128}),
    "qwen3": dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 2e4,
                                   "original_max_position_embeddings": 128}),
    "gemma3": dict(query_pre_attn_scalar=32, rope_parameters={
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
}


def model_of(arch: str, **overrides):
    """A tiny model of ``arch`` (SHAPE + the architecture's non-default values), every norm
    gain drawn away from its init so a lost ``1 + w`` or a wrong norm shows."""
    config = tiny_config(arch, **SHAPE, **{**ARCH_CONFIGS.get(arch, {}), **overrides})
    state = random_state_dict(config, seed=3)
    g = torch.Generator().manual_seed(5)
    for name, t in state.items():
        if t.ndim == 1:
            state[name] = t + 0.1 * torch.randn(t.shape, generator=g)
    source = DictSource(state)
    adapter = Adapter(config, source.names())
    return LoadedModel(spec=f"tiny-{arch}", fingerprint="test", layout=adapter.layout,
                       config=config, families=adapter.families, source=source,
                       adapter=adapter)


def test_qwen3_gguf_with_head_dim_not_hidden_over_heads_converts_to_its_weights(tmp_path):
    """The reported bug: Qwen3's GGUF carries head_dim as qwen3.attention.key_length, which
    transformers' reader drops (its default, 128, stands in). Converted, every tensor equals the
    safetensors original's, bit for bit (F32 file), and the layout has the file's head_dim."""
    from transformers import AutoConfig
    cache = Cache(tmp_path / "cache")
    original = open_model(str(write_checkpoint(model_of("qwen3"), tmp_path / "safetensors")), cache)
    path = tmp_path / "qwen3-hd32.gguf"
    write_gguf(original, path, "F32")
    assert AutoConfig.from_pretrained(str(tmp_path), gguf_file=path.name).head_dim == 128
    model = open_model(str(path), cache)
    assert model.layout == original.layout
    assert model.layout.head_dim == 32 and model.layout.hidden == 64
    assert model.layout.num_heads == 4 and model.layout.num_kv_heads == 2
    assert set(model.tensor_names()) == set(original.tensor_names())
    for name in original.tensor_names():
        assert torch.equal(model.tensor(name), original.tensor(name)), name
    for layer in range(2):
        for fam in ("q_proj", "k_proj", "q_norm", "k_norm"):
            assert torch.equal(model.weight(layer, fam), original.weight(layer, fam))


def test_f16_qwen3_gguf_is_within_half_precision_of_the_original(tmp_path):
    original = model_of("qwen3")
    path = tmp_path / "qwen3-f16.gguf"
    write_gguf(original, path, "F16")
    model = open_model(str(path), Cache(tmp_path / "cache"))
    for name in original.tensor_names():
        want, got = original.tensor(name), model.tensor(name).to(torch.float32)
        # one rounding to float16 (matrices; 1-D tensors stay float32): half an ulp, 2^-11
        # relative, or 2^-25 absolute below float16's smallest normal 2^-14 (subnormals)
        bound = (torch.clamp(2 ** -11 * want.abs(), min=2 ** -25) if want.ndim > 1
                 else torch.zeros_like(want))
        assert ((got - want).abs() <= bound).all(), name


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("arch", sorted(ARCH_CONFIGS))
def test_converted_config_gives_the_written_model(tmp_path, arch):
    """Per architecture Strata opens from GGUF: the model transformers builds from the
    converted config computes what the original config computes on the same tensors (bit for
    bit: the same code on the same numbers), while transformers' own GGUF config alone gives
    another model (shapes that do not load, or other logits) — so each case tests a key the
    reader drops."""
    from transformers import AutoConfig, AutoModelForCausalLM
    original = model_of(arch)
    path = tmp_path / f"{arch}.gguf"
    write_gguf(original, path, "F32")
    tensors = GGUFTensors(path)
    out = tmp_path / "converted.safetensors"
    tensors.write(out)
    from safetensors.torch import load_file
    state = load_file(str(out))
    # the tensors: exact, except gemma's norm gains, stored as 1 + w and read back as (1 + w) − 1:
    # one float32 rounding of 1 + w (|w| < 1), the subtraction exact (Sterbenz) — ≤ 2^-24
    for name in original.tensor_names():
        tol = 2 ** -24 if arch == "gemma3" and "norm" in name else 0.0
        assert (state[name] - original.tensor(name)).abs().max() <= tol, name

    def build(config):
        model = AutoModelForCausalLM.from_config(config).eval()
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}
        model.tie_weights()
        return model

    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))
    want = _logits(build(hf_config(original.config)), ids)
    got = _logits(build(tensors.config), ids)
    assert torch.equal(got, want)
    try:
        plain = _logits(build(AutoConfig.from_pretrained(str(tmp_path), gguf_file=path.name)),
                        ids)
    except (RuntimeError, AssertionError):   # shapes of another model (e.g. head_dim 128)
        return
    assert not torch.allclose(plain, want, rtol=1e-3, atol=1e-3)


def test_mistral_gguf_written_as_llama_converts_to_its_weights(tmp_path):
    """llama.cpp writes Mistral as architecture 'llama' with general.name 'mistral';
    transformers then builds a mistral model, whose name gguf-py's tensor tables do not know
    (``from_pretrained(gguf_file=…)`` fails). Strata maps tensor names by the file's own
    architecture: every tensor equals the original, bit for bit (F32 file, Q/K permutation
    undone)."""
    original = model_of("mistral", sliding_window=16)
    path = tmp_path / "mistral.gguf"
    write_gguf(original, path, "F32")
    model = open_model(str(path), Cache(tmp_path / "cache"))
    assert model.config["model_type"] == "mistral" and model.layout == original.layout
    assert set(model.tensor_names()) == set(original.tensor_names())
    for name in original.tensor_names():
        assert torch.equal(model.tensor(name), original.tensor(name)), name


def test_a_hyperparameter_missing_from_the_file_is_a_one_line_error(tmp_path):
    """A Qwen3 GGUF without key_length (head_dim 32): transformers' default head_dim (128)
    does not fit its tensors; the conversion names the tensor and leaves nothing behind."""
    original = model_of("qwen3")
    original.config = {k: v for k, v in original.config.items() if k != "head_dim"}
    path = tmp_path / "no-key-length.gguf"
    write_gguf(original, path, "F32")
    cache = Cache(tmp_path / "cache")
    with pytest.raises(StrataError) as e:
        open_model(str(path), cache)
    msg = str(e.value)
    assert "\n" not in msg
    # the first of the attention tensors whose width is per-head: 32 in the file, 128 expected
    found = re.search(r"tensor model\.layers\.0\.self_attn\.\w+\.weight has shape \((\d+),.*"
                      r"the qwen3 model its metadata describes expects \((\d+),", msg)
    assert found and int(found[2]) == 4 * int(found[1]), msg
    leftovers = [p for p in (cache.root / "models").rglob("*") if p.is_file()
                 and not p.name.endswith(".lock")]
    assert leftovers == []


# -- the table, key by key ---------------------------------------------------------------------
def _defaults(model_type):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    return CONFIG_MAPPING[model_type]().to_dict()


RAW = {"hidden_size": 64, "num_attention_heads": 4, "rope_theta": 1e4}


def test_key_length_completes_an_architecture_whose_loader_drops_it_only():
    meta = {"general.architecture": "qwen3", "qwen3.attention.key_length": 32,
            "qwen3.attention.value_length": 32}
    assert completions(meta, {**RAW, "model_type": "qwen3"}, _defaults("qwen3")) == {"head_dim": 32}
    # gemma4's loader maps key_length to global_head_dim itself: left to it
    meta4 = {"general.architecture": "gemma4", "gemma4.attention.key_length": 512}
    assert "head_dim" not in completions(meta4, {**RAW, "model_type": "gemma4_text"}, {})


def test_value_heads_of_another_width_cannot_be_represented():
    meta = {"general.architecture": "qwen3", "qwen3.attention.key_length": 32,
            "qwen3.attention.value_length": 64}
    with pytest.raises(StrataError, match="value heads of width 64"):
        completions(meta, {**RAW, "model_type": "qwen3"}, _defaults("qwen3"))


def test_partial_rotary_becomes_a_factor_where_the_config_has_one():
    meta = {"general.architecture": "stablelm", "stablelm.rope.dimension_count": 4}
    out = completions(meta, {**RAW, "model_type": "stablelm"}, _defaults("stablelm"))
    assert out == {"partial_rotary_factor": 0.25}
    meta3 = {"general.architecture": "qwen3", "qwen3.rope.dimension_count": 8,
             "qwen3.attention.key_length": 16}
    with pytest.raises(StrataError, match="rotates 8 of each head's 16"):
        completions(meta3, {**RAW, "model_type": "qwen3"}, _defaults("qwen3"))


def test_expert_width_is_set_on_moe_configs_only():
    meta = {"general.architecture": "qwen3moe", "qwen3moe.expert_feed_forward_length": 48}
    assert completions(meta, {**RAW, "model_type": "qwen3_moe"}, _defaults("qwen3_moe")) == \
        {"moe_intermediate_size": 48}
    dense = {"general.architecture": "qwen3", "qwen3.expert_feed_forward_length": 48}
    assert completions(dense, {**RAW, "model_type": "qwen3"}, _defaults("qwen3")) == {}


def test_gemma_attention_scale_follows_llama_cpp():
    base = {**RAW, "hidden_size": 4608, "num_attention_heads": 32, "head_dim": 128}
    for arch, layers_27b in (("gemma2", 46), ("gemma3", 62)):
        meta = {"general.architecture": arch}
        mt = "gemma3_text" if arch == "gemma3" else arch
        big = completions(meta, {**base, "model_type": mt, "num_hidden_layers": layers_27b},
                          _defaults(mt))
        small = completions(meta, {**base, "model_type": mt, "num_hidden_layers": 26},
                            _defaults(mt))
        assert big["query_pre_attn_scalar"] == 144 and small["query_pre_attn_scalar"] == 128


def test_the_table_applies_to_every_architecture_the_gguf_reader_supports():
    """For each architecture of transformers' GGUF_CONFIG_MAPPING, a file holding every key of
    the table: a key the architecture's entry maps is left to it; any other sets an attribute
    that architecture's config class has (head_dim: read by attention modules wherever it is
    present); no architecture errors on the table's keys."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from probes.models.gguf_config import COMPLETIONS, ROPE_SCALING_KEYS
    keys = [c.key for c in COMPLETIONS] + list(ROPE_SCALING_KEYS)
    values = {"rope.scaling.type": "linear", "rope.scaling.factor": 2.0}
    checked = []
    for loader, entry in GGUF_CONFIG_MAPPING.items():
        model_type = {"gemma3": "gemma3_text", "gemma4": "gemma4_text"}.get(loader, loader)
        if model_type not in CONFIG_MAPPING:    # "general", "tokenizer": not architectures
            continue
        defaults = _defaults(model_type)
        meta = {"general.architecture": loader,
                **{f"{loader}.{k}": values.get(k, 32) for k in keys}}
        out = completions(meta, {"model_type": model_type}, defaults)
        for c in COMPLETIONS:
            if entry.get(c.key):                 # only key_length sets head_dim
                assert c.attribute not in out, (loader, c.key)
            elif c.attribute in out:
                assert c.attribute == "head_dim" or c.attribute in defaults, (loader, c.key)
        if "rope_parameters" in out:
            assert defaults.get("rope_parameters"), loader
        checked.append(loader)
    assert {"llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gemma2", "gemma3", "phi3",
            "starcoder2", "gpt2", "stablelm", "nemotron"} <= set(checked)
