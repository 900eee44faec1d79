"""Time and measure opening GGUF files (the one-time tensor-by-tensor conversion).

    python -m benchmarks.gguf_open FILE.gguf [FILE2.gguf ...] [--json OUT.json]

Each file is opened with ``open_model`` in a fresh process with an empty cache directory, so
the conversion (dequantize, un-permute, write safetensors) runs; the process reports wall time,
seconds in ``open_model``, ``ru_maxrss`` and the peak anonymous / file-backed RSS (sampled).
Make test files with ``benchmarks/make_gguf.py``. The figure to read: peak RSS stays flat as the
file grows (one 64 MiB chunk, or one Q/K matrix, at a time).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.run import MARK, RssSampler, spawn


def child(path: str) -> dict:
    import resource
    sampler = RssSampler()
    cache_dir = tempfile.mkdtemp(prefix="strata-bench-gguf-")
    try:
        t0 = time.perf_counter()
        from probes.cache import Cache
        from probes.models import open_model
        t1 = time.perf_counter()
        model = open_model(path, Cache(cache_dir))
        t2 = time.perf_counter()
        out = sum(f.stat().st_size for f in Path(model.hf_dir).glob("*.safetensors"))
        params = sum(1 for _ in model.tensor_names())
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return {"compute_s": t2 - t1, "import_s": t1 - t0, "gguf_bytes": Path(path).stat().st_size,
            "safetensors_bytes": out, "tensors": params,
            "maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            **sampler.stop()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(MARK + json.dumps(child(args.files[0])), flush=True)
        return 0
    rows = {}
    for f in args.files:
        path = str(Path(f).resolve())
        r = spawn([sys.executable, "-m", "benchmarks.gguf_open", path, "--child"], args.threads)
        rows[path] = r
        if "error" in r:
            print(f"{Path(path).name}: {r['error']}")
            continue
        print(f"{Path(path).name}: {r['gguf_bytes'] / 2**30:.2f} GiB GGUF → "
              f"{r['safetensors_bytes'] / 2**30:.2f} GiB safetensors; {r['wall_s']:.1f} s wall, "
              f"{r['compute_s']:.1f} s in open_model; peak RSS {r['maxrss_gb']:.2f} GB "
              f"(anonymous {r['anon_gb']:.2f} GB, file-backed {r['file_gb']:.2f} GB)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
