"""Write a GGUF file (llama architecture) from any model Strata opens, for conversion benchmarks.

    python -m benchmarks.make_gguf --shape llama-1b --layers 6 --qtype Q8_0 --out /tmp/b-6L.gguf
    python -m benchmarks.make_gguf --model synthetic:tiny-llama --qtype F16 --out /tmp/tiny.gguf

The tensors come from ``--model`` (a spec; read one at a time) or, with ``--shape``, from the
random-init twin of that shape (drawn tensor by tensor, nothing on disk). They are written as
llama.cpp's converter writes them: GGUF names from ``gguf``'s tensor-name map, query and key rows
permuted (llama.cpp's ``permute``), matrices quantized to ``--qtype`` with ``gguf.quantize``,
1-D tensors float32. The tokenizer metadata (``tokenizer.*``) is copied from a donor GGUF (default:
the default model's, from the Strata cache), so its vocabulary must fit the model's. One tensor
is held at a time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from probes.synthetic.base import tiny_config

# llama shapes whose head_dim = hidden / heads (transformers' GGUF reader derives it so)
SHAPES = {"llama-1b": dict(hidden=2048, num_heads=32, num_kv_heads=8, head_dim=64,
                           intermediate=8192, vocab_size=49152)}


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


def write_gguf(model, out: Path, qtype: str = "Q8_0", donor: Path | None = None) -> dict:
    """Write ``model`` (llama layout) to ``out`` as a llama GGUF; returns {"bytes", "seconds"}.
    ``donor``: a GGUF whose tokenizer metadata is copied (None: no tokenizer in the file)."""
    import gguf
    from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType, GGUFValueType
    from transformers.modeling_gguf_pytorch_utils import read_field
    t0 = time.perf_counter()
    cfg, lay = model.config, model.layout
    if lay.architecture != "llama" or lay.head_dim * lay.num_heads != lay.hidden:
        raise SystemExit("make_gguf writes llama models with head_dim = hidden / heads")
    q = getattr(GGMLQuantizationType, qtype)
    arch = gguf.MODEL_ARCH.LLAMA
    names = gguf.get_tensor_name_map(arch, lay.num_layers)
    tmp = out.with_name(f".{out.name}.tmp")
    w = GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
    w.add_name("strata-bench")
    w.add_block_count(lay.num_layers)
    w.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
    w.add_embedding_length(lay.hidden)
    w.add_feed_forward_length(lay.intermediate)
    w.add_head_count(lay.num_heads)
    w.add_head_count_kv(lay.num_kv_heads)
    w.add_rope_dimension_count(lay.head_dim)
    w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    w.add_vocab_size(int(cfg["vocab_size"]))
    reader = GGUFReader(str(donor)) if donor else None
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
        if ".attn_q." in name:
            x = llama_permute(x, lay.num_heads, lay.num_heads)
        elif ".attn_k." in name:
            x = llama_permute(x, lay.num_heads, lay.num_kv_heads)
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
    src.add_argument("--model", help="a model spec with llama layout")
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
    print(f"wrote {args.out}: llama, {model.layout.num_layers} layers, {params / 1e6:,.1f} M "
          f"params, {args.qtype}, {info['bytes'] / 2**30:.2f} GiB in {info['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
