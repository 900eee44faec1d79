"""GGUF files read tensor by tensor: the same tensors as transformers' whole-model GGUF loading
(exactly, in float32), the Q/K permutation undone, one chunk in memory at a time."""

import pytest
import torch
from safetensors import safe_open

from benchmarks.make_gguf import write_gguf
from probes.models import gguf_tensors, open_model
from probes.models.gguf_tensors import GGUFTensors


def _transformers_state(path):
    """Today's reference: the whole model through transformers, float32."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def tiny_llama():
    return open_model("synthetic:tiny-llama")


@pytest.mark.parametrize("qtype,rtol,dtype", [("F16", 2 ** -11, torch.float16),
                                               ("Q8_0", 1 / 127, torch.float32)])
def test_tensor_by_tensor_equals_transformers(tmp_path, tiny_llama, qtype, rtol, dtype):
    path = tmp_path / f"tiny-{qtype}.gguf"
    write_gguf(tiny_llama, path, qtype)
    out = tmp_path / "model.safetensors"
    GGUFTensors(path).write(out)
    ref = _transformers_state(path)
    with safe_open(str(out), "pt") as f:
        names = set(f.keys())
        assert names == set(ref) - {"lm_head.weight"}   # tied: stored once
        for name in names:
            t = f.get_tensor(name)
            assert t.dtype == (dtype if t.ndim > 1 else torch.float32), name
            assert torch.equal(t.to(torch.float32), ref[name]), name
            orig = tiny_llama.tensor(name)
            # the permutation is undone: close to the original, not only to transformers
            err = (t.to(torch.float32) - orig).abs().max() / orig.abs().max().clamp_min(1e-12)
            assert float(err) <= rtol, (name, float(err))


def test_chunking_does_not_change_values(tmp_path, tiny_llama, monkeypatch):
    path = tmp_path / "tiny.gguf"
    write_gguf(tiny_llama, path, "Q8_0")
    whole = tmp_path / "whole.safetensors"
    GGUFTensors(path).write(whole)
    monkeypatch.setattr(gguf_tensors, "CHUNK_BYTES", 1024)    # 4 rows of 64 at a time
    sizes = []
    tensors = GGUFTensors(path)
    real = tensors.chunks

    def spy(entry, bar=None):
        for c in real(entry, bar):
            sizes.append((entry[1].name, c.numel() * 4))
            yield c
    monkeypatch.setattr(tensors, "chunks", spy)
    chunked = tmp_path / "chunked.safetensors"
    tensors.write(chunked)
    # every chunk ≤ the budget, except Q/K matrices (un-permuted whole) and 1-D tensors
    big = [(n, s) for n, s in sizes if s > 1024 and ".attn_q." not in n and ".attn_k." not in n
           and "norm" not in n]
    assert not big and len(sizes) > 3 * len(tensors.entries)
    with safe_open(str(whole), "pt") as a, safe_open(str(chunked), "pt") as b:
        for name in a.keys():
            assert torch.equal(a.get_tensor(name), b.get_tensor(name)), name


def test_pages_are_released(tmp_path, tiny_llama):
    """After converting, the process does not keep the file's pages mapped (RSS does not grow
    with the file): every tensor's range was madvise(DONTNEED)ed."""
    path = tmp_path / "tiny.gguf"
    write_gguf(tiny_llama, path, "F16")
    tensors = GGUFTensors(path)
    dropped = []
    real = tensors._drop_pages
    tensors._drop_pages = lambda a, n: (dropped.append((a, n)), real(a, n))
    tensors.write(tmp_path / "m.safetensors")
    covered = sum(n for _, n in dropped)
    assert covered == tensors.total_bytes


@pytest.mark.slow
def test_default_model_conversion_equals_transformers():
    """SmolLM2-135M (Q4_1, Q8_0 embeddings, llama Q/K permutation): every converted tensor equals
    transformers' whole-model float32 loading, bit for bit; the config is transformers' config."""
    import json
    model = open_model("smollm2-135m")
    from probes.cache import Cache
    from probes.models.gguf import DEFAULT_MEMBER
    from pathlib import Path
    gguf = Cache().models_dir() / "smollm2-135m" / Path(DEFAULT_MEMBER).name
    ref = _transformers_state(gguf)
    names = model.tensor_names()
    assert set(names) == set(ref) - {"lm_head.weight"}
    for name in names:
        assert torch.equal(model.tensor(name).to(torch.float32), ref[name]), name
    from transformers import AutoConfig
    cfg = json.loads((Path(model.hf_dir) / "config.json").read_text())
    expected = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name).to_dict()
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "rope_theta", "rms_norm_eps", "vocab_size",
                "tie_word_embeddings", "model_type"):
        assert cfg.get(key) == expected.get(key), key
