"""Write a random checkpoint with a real model's shapes (HF format, sharded safetensors).

    python -m benchmarks.make_checkpoint --shape qwen3-4b --out /tmp/ckpt-4b
    python -m benchmarks.make_checkpoint --shape qwen3-32b --layers 2 --vocab 1024 --out /tmp/ckpt-32b-2L
    python -m benchmarks.make_checkpoint --shape qwen3-4b --tokenizer DIR --out /tmp/ckpt-4b-tok

``--tokenizer DIR`` copies a real tokenizer (``tokenizer.json`` and friends) from ``DIR`` into the
checkpoint, for the activation probes (e.g. the default model's, from the converted SmolLM2
directory in the Strata cache: its 49,152 ids fit Qwen's 151,936-row embedding; with ``--vocab``
keep the vocabulary at least the tokenizer's size).

Each decoder layer goes to its own shard (plus one shard for the embeddings, final norm and
untied lm_head), written by streaming: a tensor is drawn in row chunks of at most
``CHUNK_ELEMENTS`` float32 values and each chunk is converted to the output dtype and appended
to the file, so memory stays at one chunk (~64 MiB) whatever the model's size — never a whole
tensor, let alone the whole model.

Weights follow the architecture's own init (``probes.models.random_init.init_plan``): every
Linear/Embedding weight ~ N(0, initializer_range²) with Qwen3's initializer_range = 0.02, every
RMSNorm gain = 1. Each chunk is drawn from its own generator seeded by (salt, tensor name, chunk
index), so the file is reproducible. The config is the real model's config.json (Qwen3-4B:
tied embeddings; Qwen3-32B: untied), with ``num_hidden_layers`` cut to ``--layers``.

The result opens with ``open_model(dir)`` (lazily, memory-mapped) and with transformers'
``AutoModelForCausalLM.from_pretrained(dir)`` (the naive references).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

from probes.models.st_writer import write_safetensors
from probes.models.random_init import NORMAL, ONES, ZEROS, TensorInit, init_plan, tensor_seed
from probes.synthetic.base import tiny_config

CHUNK_ELEMENTS = 16 << 20           # float32 values drawn at once (64 MiB)
SALT = "benchmarks/1"

# The real models' shapes (config.json of Qwen/Qwen3-4B and Qwen/Qwen3-32B).
SHAPES: dict[str, dict] = {
    "qwen3-4b": dict(num_layers=36, hidden=2560, num_heads=32, num_kv_heads=8, head_dim=128,
                     intermediate=9728, vocab_size=151936, tie_word_embeddings=True,
                     max_position_embeddings=40960, rope_theta=1000000.0,
                     bos_token_id=151643, eos_token_id=151645, pad_token_id=None),
    "qwen3-32b": dict(num_layers=64, hidden=5120, num_heads=64, num_kv_heads=8, head_dim=128,
                      intermediate=25600, vocab_size=151936, tie_word_embeddings=False,
                      max_position_embeddings=40960, rope_theta=1000000.0,
                      bos_token_id=151643, eos_token_id=151645, pad_token_id=None),
    # a shrunken Qwen3 for the smoke test: same families and layout rules, tiny sizes
    "tiny-qwen3": dict(num_layers=4, hidden=64, num_heads=4, num_kv_heads=2, head_dim=16,
                       intermediate=192, vocab_size=256, tie_word_embeddings=True),
}
DTYPES = {"bfloat16": (torch.bfloat16, "BF16"), "float16": (torch.float16, "F16"),
          "float32": (torch.float32, "F32")}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def shape_config(shape: str, layers: int | None = None, vocab: int | None = None) -> dict:
    """The HF config.json dict of ``shape`` with ``num_hidden_layers`` = ``layers`` (default:
    the real depth) and ``vocab_size`` = ``vocab`` (default: the real vocabulary)."""
    if shape not in SHAPES:
        raise SystemExit(f"unknown --shape {shape!r}; one of {', '.join(SHAPES)}")
    kw = dict(SHAPES[shape])
    if layers is not None:
        if layers < 1:
            raise SystemExit("--layers must be ≥ 1")
        kw["num_layers"] = layers
    if vocab is not None:
        kw["vocab_size"] = vocab
    return tiny_config("qwen3", **kw)


def shard_plan(plan: dict[str, TensorInit], num_layers: int) -> list[list[str]]:
    """One shard per decoder layer (in layer order), then one for everything else."""
    per_layer: list[list[str]] = [[] for _ in range(num_layers)]
    rest = []
    for name in plan:
        m = _LAYER.match(name)
        (per_layer[int(m.group(1))] if m else rest).append(name)
    return [g for g in per_layer + [rest] if g]


def _chunks(name: str, init: TensorInit, dtype: torch.dtype):
    """The tensor's values in row chunks, converted to ``dtype``."""
    shape = init.shape
    rows = shape[0]
    row_len = 1
    for d in shape[1:]:
        row_len *= d
    step = max(1, CHUNK_ELEMENTS // max(row_len, 1))
    for i, start in enumerate(range(0, rows, step)):
        n = min(step, rows - start)
        if init.kind == NORMAL:
            gen = torch.Generator().manual_seed(tensor_seed(SALT, f"{name}#{i}"))
            x = torch.randn((n,) + shape[1:], generator=gen, dtype=torch.float32).mul_(init.std)
        elif init.kind == ONES:
            x = torch.ones((n,) + shape[1:], dtype=torch.float32)
        elif init.kind == ZEROS:
            x = torch.zeros((n,) + shape[1:], dtype=torch.float32)
        else:  # pragma: no cover
            raise ValueError(f"unknown init kind {init.kind}")
        yield x.to(dtype).contiguous()


def write_shard(path: Path, names: list[str], plan: dict[str, TensorInit],
                dtype: torch.dtype, st_dtype: str | None = None) -> int:
    """Stream ``names`` into one safetensors file at ``path`` (``probes.models.st_writer``:
    header first, then each tensor's chunks; via a temp file). Returns bytes of tensor data."""
    return write_safetensors(path, [(n, dtype, plan[n].shape,
                                     lambda n=n: _chunks(n, plan[n], dtype)) for n in names])


def make_checkpoint(shape: str, out: Path, layers: int | None = None,
                    vocab: int | None = None, dtype: str = "bfloat16",
                    tokenizer: Path | None = None) -> dict:
    """Write the checkpoint; returns {"bytes", "seconds", "shards", "params"}."""
    if dtype not in DTYPES:
        raise SystemExit(f"unknown --dtype {dtype!r}; one of {', '.join(DTYPES)}")
    torch_dtype, _ = DTYPES[dtype]
    if tokenizer is not None:
        tokenizer_files(Path(tokenizer))  # before writing anything
    config = shape_config(shape, layers, vocab)
    config["torch_dtype"] = dtype
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise SystemExit(f"--out {out} exists and is not empty")
    t0 = time.perf_counter()
    plan = init_plan(config)
    groups = shard_plan(plan, config["num_hidden_layers"])
    weight_map, total = {}, 0
    for i, names in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        total += write_shard(out / fname, names, plan, torch_dtype)
        weight_map.update({n: fname for n in names})
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    if tokenizer is not None:
        copy_tokenizer(Path(tokenizer), out)
    params = sum(_numel(p.shape) for p in plan.values())
    return {"bytes": total, "seconds": time.perf_counter() - t0, "shards": len(groups),
            "params": params}


def tokenizer_files(src: Path) -> list[Path]:
    """The HF tokenizer files of ``src``; SystemExit if there are none."""
    from probes.models.checkpoint import _TOKENIZER_GLOBS
    files = [f for pattern in _TOKENIZER_GLOBS for f in sorted(Path(src).glob(pattern))
             if f.is_file()]
    if not any(f.name.startswith("tokenizer") for f in files):
        raise SystemExit(f"--tokenizer {src}: no tokenizer files (tokenizer.json, "
                         f"tokenizer_config.json, ...) there")
    return files


def copy_tokenizer(src: Path, out: Path) -> list[str]:
    """Copy the HF tokenizer files of ``src`` into ``out``."""
    import shutil
    files = tokenizer_files(src)
    for f in files:
        shutil.copy2(f, out / f.name)
    return [f.name for f in files]


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", required=True, choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, default=None,
                    help="keep only the first N decoder layers (default: the real depth)")
    ap.add_argument("--vocab", type=int, default=None,
                    help="shrink the vocabulary (embeddings are not read by the weight probes; "
                         "keeps disk use small for --shape qwen3-32b)")
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    ap.add_argument("--tokenizer", type=Path, default=None, metavar="DIR",
                    help="copy the HF tokenizer files of DIR into the checkpoint (activation "
                         "probes need a real tokenizer whose ids fit the vocabulary)")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    info = make_checkpoint(args.shape, args.out, args.layers, args.vocab, args.dtype,
                           args.tokenizer)
    cfg = json.loads((args.out / "config.json").read_text())
    print(f"wrote {args.out}: {args.shape}, {cfg['num_hidden_layers']} layers, "
          f"vocab {cfg['vocab_size']}, {info['params'] / 1e6:,.1f} M params, {args.dtype}, "
          f"{info['shards']} shards, {info['bytes'] / 2**30:.2f} GiB in {info['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
