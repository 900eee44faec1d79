"""What content fingerprints cost: opening a checkpoint with an empty file-hash index (every
weight file hashed) and again (every digest remembered), each in a fresh process.

    python -m benchmarks.fingerprint CHECKPOINT_DIR [--runs 2] [--cold] [--added]

Prints, per run: wall seconds of ``open_model`` (header parse + fingerprint), the seconds of the
fingerprint alone, how each file's digest was obtained, the hashing rate and the peak RSS; and
the single-core sha256 rate of this CPU for reference. The first run reads every byte: from
the page cache when the checkpoint was read recently, from disk otherwise (``--cold`` evicts
the checkpoint's pages first with ``posix_fadvise(DONTNEED)``); the table's "disk GB read" is the
child's block input as the kernel counted it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MARK = "FP-RESULT "


def evict(directory: str) -> None:
    """Drop the checkpoint's pages from the page cache (no privileges needed)."""
    for f in Path(directory).iterdir():
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def child_with_probe(directory: str, cache_dir: str) -> None:
    from probes import adjacent
    from probes.cache import Cache
    from probes.models import open_model
    t0 = time.perf_counter()
    model = open_model(directory, Cache(cache_dir))
    t1 = time.perf_counter()
    adjacent.compute(model)
    t2 = time.perf_counter()
    print(MARK + json.dumps({"open_s": t1 - t0, "probe_s": t2 - t1, "total_s": t2 - t0,
                             "method": model.meta["fingerprint_method"]}))


def child(directory: str, cache_dir: str) -> None:
    from probes.cache import Cache
    from probes.models import loaded
    from probes.models.sources import SafetensorsDir
    cache = Cache(cache_dir)
    t0 = time.perf_counter()
    source = SafetensorsDir(Path(directory))
    raw = (Path(directory) / "config.json").read_bytes()
    t1 = time.perf_counter()
    fp, method = loaded.content_fingerprint(raw, source, cache)
    t2 = time.perf_counter()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(MARK + json.dumps({"open_s": t2 - t0, "headers_s": t1 - t0, "fingerprint_s": t2 - t1,
                             "method": method, "fingerprint": fp,
                             "maxrss_gb": ru.ru_maxrss / 2**20, "inblock": ru.ru_inblock}))


def run_child(mode: str, checkpoint: str, cache_dir: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.fingerprint", mode, checkpoint,
                           cache_dir], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "STRATA_PROGRESS": "0"})
    line = next((l for l in proc.stdout.splitlines() if l.startswith(MARK)), None)
    if line is None:
        raise SystemExit(f"child failed:\n{proc.stderr[-2000:]}")
    return json.loads(line[len(MARK):])


def added(checkpoint: str) -> int:
    with tempfile.TemporaryDirectory(prefix="strata-fp-") as cache_dir:
        evict(checkpoint)
        first = run_child("--child-probe", checkpoint, cache_dir)     # hashes every file
        evict(checkpoint)
        later = run_child("--child-probe", checkpoint, cache_dir)     # digests remembered
    print(f"\n{'run':<28} {'open s':>7} {'probe s':>8} {'total s':>8}")
    for name, r in (("first (hashes every file)", first), ("later (digests remembered)", later)):
        print(f"{name:<28} {r['open_s']:7.2f} {r['probe_s']:8.2f} {r['total_s']:8.2f}")
    print(f"\nhashing adds {first['total_s'] - later['total_s']:.2f} s to a first run "
          f"(pages evicted before each run)")
    return 0


def sha256_rate(mib: int = 512) -> float:
    buf = os.urandom(64 << 20)
    h = hashlib.sha256()
    t = time.perf_counter()
    for _ in range(mib // 64):
        h.update(buf)
    return mib / 1024 / (time.perf_counter() - t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--cold", action="store_true",
                    help="evict the checkpoint's files from the page cache before the first run")
    ap.add_argument("--added", action="store_true",
                    help="what hashing adds to a first run of the adjacent probe (cold pages)")
    args = ap.parse_args(argv)
    if args.added:
        return added(args.checkpoint)
    if args.cold:
        evict(args.checkpoint)
    print(f"sha256 on one core: {sha256_rate():.2f} GB/s")
    with tempfile.TemporaryDirectory(prefix="strata-fp-") as cache_dir:
        rows = [run_child("--child", args.checkpoint, cache_dir) for _ in range(args.runs)]
    fps = {r["fingerprint"] for r in rows}
    print(f"\n{'run':>3} {'open s':>7} {'headers s':>9} {'fingerprint s':>13} {'GB':>6} "
          f"{'GB/s':>6} {'hashed':>6} {'remembered':>10} {'disk GB read':>12} {'peak RSS GB':>11}")
    for i, r in enumerate(rows, 1):
        m = r["method"]
        gb = m["bytes"] / 1e9
        rate = gb / r["fingerprint_s"] if m.get("hashed") else float("nan")
        print(f"{i:>3} {r['open_s']:7.2f} {r['headers_s']:9.2f} {r['fingerprint_s']:13.3f} "
              f"{gb:6.2f} {rate:6.2f} {m.get('hashed', 0):>6} {m.get('remembered', 0):>10} "
              f"{r['inblock'] * 512 / 1e9:12.2f} {r['maxrss_gb']:11.2f}")
    print(f"\none fingerprint across runs: {len(fps) == 1}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "--child-probe":
        child_with_probe(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(main())
