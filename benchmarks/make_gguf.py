"""Write a GGUF file from any model Strata opens, as llama.cpp's converter writes it: for
conversion benchmarks and for the tests of GGUF reading.

    python -m benchmarks.make_gguf --shape llama-1b --layers 6 --qtype Q8_0 --out /tmp/b-6L.gguf
    python -m benchmarks.make_gguf --model synthetic:tiny-llama --qtype F16 --out /tmp/tiny.gguf

The tensors come from ``--model`` (a spec; read one at a time) or, with ``--shape``, from the
random-init twin of that shape (drawn tensor by tensor, nothing on disk). They are written as
llama.cpp's ``convert_hf_to_gguf.py`` writes the model's architecture (:data:`GGUF_LAYOUTS`):
GGUF names from ``gguf``'s tensor-name map; llama's query and key rows permuted (its
``permute``); gemma's norm gains stored as ``1 + w``; the metadata its ``set_gguf_parameters``
writes (``key_length``/``value_length`` = ``head_dim`` whenever the config names one, rope
scaling, sliding window, soft-capping); matrices quantized to ``--qtype`` with
``gguf.quantize``, 1-D tensors float32. The tokenizer metadata (``tokenizer.*``) is copied from a
donor GGUF (default: the default model's, from the Strata cache), so its vocabulary must fit the
model's. One tensor is held at a time.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from probes.synthetic.base import tiny_config

# llama shapes whose head_dim = hidden / heads
SHAPES = {"llama-1b": dict(hidden=2048, num_heads=32, num_kv_heads=8, head_dim=64,
                           intermediate=8192, vocab_size=49152)}


@dataclass(frozen=True)
class GGUFLayout:
    """How llama.cpp's converter writes one architecture (what differs from a plain copy)."""

    arch: str                     # gguf.MODEL_ARCH member name
    permute_qk: bool = False      # LlamaModel.permute of the query and key rows
    norm_shift: float = 0.0       # added to every norm gain (gemma: llama.cpp stores 1 + w)
    rope_dimension_count: bool = False   # LlamaModel writes rope.dimension_count = head_dim
    name: str = "strata-bench"    # general.name (transformers reads 'mistral' as mistral)


# by the config's model_type
GGUF_LAYOUTS = {
    "llama": GGUFLayout("LLAMA", permute_qk=True, rope_dimension_count=True),
    "mistral": GGUFLayout("LLAMA", permute_qk=True, rope_dimension_count=True, name="mistral"),
    "qwen2": GGUFLayout("QWEN2"),
    "qwen3": GGUFLayout("QWEN3"),
    "gemma3_text": GGUFLayout("GEMMA3", norm_shift=1.0),
}


def llama_permute(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` (convert_hf_to_gguf.py): interleaves the two halves of
    each head's rotary dimensions; transformers' GGUF reader undoes it."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def default_donor() -> Path:
    from probes.cache import Cache
    from probes.models.gguf import DEFAULT_MEMBER
    from probes.models import open_model
    open_model("smollm2-135m")  # fetched and converted once
    return Cache().models_dir() / "smollm2-135m" / Path(DEFAULT_MEMBER).name


def _rope(cfg: dict) -> tuple[float | None, dict]:
    """(rope_theta, scaling) of a config dict, transformers 5 (``rope_parameters``, per layer
    type for gemma3: the full-attention layers' scaling, as llama.cpp writes it) or older."""
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if "full_attention" in params:
        params = params["full_attention"]
    theta = params.get("rope_theta", cfg.get("rope_theta"))
    scaling = params if params.get("rope_type", params.get("type")) not in (None, "default") else {}
    return theta, scaling


def write_byte_tokenizer(w) -> None:
    """A byte-level BPE tokenizer without merges (token i = byte i, GPT-2's byte alphabet):
    enough for transformers to build a tokenizer from the file, no donor needed."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    alphabet = bytes_to_unicode()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([alphabet[i] for i in range(256)])
    w.add_token_types([1] * 256)
    w.add_token_scores([0.0] * 256)


def write_metadata(w, cfg: dict, lay, layout: GGUFLayout) -> None:
    """The hyperparameters llama.cpp's ``TextModel.set_gguf_parameters`` (and the
    architecture's override) writes for this config."""
    import gguf
    w.add_name(layout.name)
    w.add_block_count(lay.num_layers)
    w.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
    w.add_embedding_length(lay.hidden)
    w.add_feed_forward_length(lay.intermediate)
    w.add_head_count(lay.num_heads)
    w.add_head_count_kv(lay.num_kv_heads)
    theta, scaling = _rope(cfg)
    if theta is not None:
        w.add_rope_freq_base(float(theta))
    if scaling:
        w.add_rope_scaling_type(gguf.RopeScalingType(scaling.get("rope_type", scaling.get("type"))))
        w.add_rope_scaling_factor(float(scaling["factor"]))
        if scaling.get("original_max_position_embeddings"):
            w.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    if cfg.get("head_dim") is not None:
        w.add_key_length(int(cfg["head_dim"]))
        w.add_value_length(int(cfg["head_dim"]))
    if layout.rope_dimension_count:
        w.add_rope_dimension_count(lay.head_dim)
    if cfg.get("sliding_window") is not None and layout.arch == "GEMMA3":
        w.add_sliding_window(int(cfg["sliding_window"]))
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if cfg.get(key) is not None:
            getattr(w, f"add_{key}")(float(cfg[key]))
    w.add_vocab_size(int(cfg["vocab_size"]))


def write_gguf(model, out: Path, qtype: str = "Q8_0", donor: Path | None = None) -> dict:
    """Write ``model`` to ``out`` as llama.cpp writes its architecture (:data:`GGUF_LAYOUTS`);
    returns {"bytes", "seconds"}. ``donor``: a GGUF whose tokenizer metadata is copied (None:
    the byte-level tokenizer of :func:`write_byte_tokenizer` when the vocabulary holds 256
    tokens, else none)."""
    import gguf
    from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType, GGUFValueType
    from transformers.modeling_gguf_pytorch_utils import read_field
    t0 = time.perf_counter()
    cfg, lay = model.config, model.layout
    layout = GGUF_LAYOUTS.get(cfg.get("model_type"))
    if layout is None:
        raise SystemExit(f"make_gguf writes {', '.join(GGUF_LAYOUTS)} models, not "
                         f"{cfg.get('model_type')!r}")
    q = getattr(GGMLQuantizationType, qtype)
    arch = getattr(gguf.MODEL_ARCH, layout.arch)
    names = gguf.get_tensor_name_map(arch, lay.num_layers)
    tmp = out.with_name(f".{out.name}.tmp")
    w = GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
    write_metadata(w, cfg, lay, layout)
    reader = GGUFReader(str(donor)) if donor else None
    if reader is None and int(cfg["vocab_size"]) >= 256:
        write_byte_tokenizer(w)
    for key, field in (reader.fields.items() if reader else ()):
        if key.startswith("tokenizer."):
            val = read_field(reader, key)
            if field.types[0] == GGUFValueType.ARRAY:
                w.add_key_value(key, val, GGUFValueType.ARRAY, sub_type=field.types[-1])
            else:
                w.add_key_value(key, val[0], field.types[0])
    plan = []
    for hf in model.tensor_names():
        base, _, suffix = hf.rpartition(".")
        name = names.get_name(base)
        if name is None:
            continue
        shape = model.source.shape(hf)
        qt = q if len(shape) > 1 else GGMLQuantizationType.F32
        plan.append((hf, f"{name}.{suffix}", shape, qt))
    for hf, name, shape, qt in plan:
        nbytes = gguf.quant_shape_to_byte_shape(shape, qt) if qt not in (
            GGMLQuantizationType.F32, GGMLQuantizationType.F16) else None
        if qt == GGMLQuantizationType.F32:
            w.add_tensor_info(name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
        elif qt == GGMLQuantizationType.F16:
            w.add_tensor_info(name, shape, np.dtype(np.float16), int(np.prod(shape)) * 2)
        else:
            w.add_tensor_info(name, nbytes, np.dtype(np.uint8), int(np.prod(nbytes)), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for hf, name, shape, qt in plan:
        x = model.tensor(hf).to(torch.float32).numpy()
        if layout.permute_qk and ".attn_q." in name:
            x = llama_permute(x, lay.num_heads, lay.num_heads)
        elif layout.permute_qk and ".attn_k." in name:
            x = llama_permute(x, lay.num_heads, lay.num_kv_heads)
        elif layout.norm_shift and "norm.weight" in name:
            x = x + np.float32(layout.norm_shift)
        w.write_tensor_data(gguf.quantize(x, qt))
        del x
    w.close()
    tmp.replace(out)
    return {"bytes": out.stat().st_size, "seconds": time.perf_counter() - t0}


def shape_model(shape: str, layers: int):
    from probes.models.loaded import random_twin
    kw = dict(SHAPES[shape])
    cfg = tiny_config("llama", num_layers=layers, **kw)
    return random_twin(cfg, f"random:{shape}", None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help=f"a model spec ({', '.join(GGUF_LAYOUTS)})")
    src.add_argument("--shape", choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--qtype", default="Q8_0", help="Q8_0, F16, F32, Q4_0, ...")
    ap.add_argument("--donor", type=Path, default=None,
                    help="GGUF whose tokenizer metadata is copied (default: the default model's)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.model:
        from probes.models import open_model
        model = open_model(args.model)
    else:
        model = shape_model(args.shape, args.layers)
    info = write_gguf(model, args.out, args.qtype, args.donor or default_donor())
    params = sum(int(np.prod(model.source.shape(n))) for n in model.tensor_names())
    print(f"wrote {args.out}: {model.layout.architecture}, {model.layout.num_layers} layers, {params / 1e6:,.1f} M "
          f"params, {args.qtype}, {info['bytes'] / 2**30:.2f} GiB in {info['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
