"""Time and measure the activation probe (the layer-streamed forward pass) and its claims.

    python -m benchmarks.activations MODEL [--calib-tokens N] [--dtype auto|float32|bfloat16]
        [--tile L] [--compare-hooked] [--vs-script [SCRIPT]] [--device cpu|cuda] [--threads N]
        [--json OUT.json]

MODEL is any model spec (a checkpoint directory with a real tokenizer, ``smollm2-135m``, …).
Each run is a fresh Python process (``benchmarks.run``'s child machinery) that opens the model,
tokenizes the calibration corpus (the built-in one, first ``--calib-tokens`` tokens), runs
``probes.activations.compute`` in the ``--dtype`` the fixtures would use (``auto`` by default,
:mod:`probes.forward_dtype`) and decides the three activation claims (phase-C-shared-subspace,
phase-E-specialized, late-layers-change-least; phase C/E per the default phase map). It reports
wall time, peak RSS (``ru_maxrss``; sampled anonymous / file-backed) and **where the time
goes**: opening the model (config, tokenizer, content fingerprint), tokenizing, loading the
layers (read + dtype conversion), the forward itself, the per-layer Gram and eigensolve, the
per-token scalars, the isotropic null, each claim's decision (its permutation / exchangeable
null). Beside it the **floor**: the forward's flops (``probes.activations.forward_flops``:
projections and causal attention) divided by this machine's GEMM rate in the forward's dtype,
measured in the same process at the forward's own shape (window tokens × hidden × ff); the
forward's fraction of that rate is floor / forward seconds.

``--tile L`` reads a few-layer checkpoint as L layers (layer l = checkpoint layer l mod L₀, see
``benchmarks/README.md``): real per-layer shapes and time at a depth the disk does not hold.
``--compare-hooked`` also runs the whole-model hooked path (``compute_hooked``, the reference;
it holds the whole model in float32 — only for small models) and prints the largest relative
difference of every statistic and whether each claim's verdict is the same.
``--vs-script`` runs the research delta-SVD script (``../shared/seeds/delta_svd.py``, or the path
given; whole model in bf16 through transformers, no nulls) unmodified in a child process on the
same checkpoint directory first, reads its calibration token count, then runs Strata's three
claims with ``--calib-tokens`` = that count, and prints both times and peak RSS side by side.
The checkpoint's files are read once beforehand, so both runs find them in the page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.run import MARK, REPO, RssSampler, _env, open_spec, spawn
from probes.machine import cpu_description

SCRIPT = REPO.parent / "shared" / "seeds" / "delta_svd.py"

CLAIMS = ("phase-C-shared-subspace", "phase-E-specialized", "late-layers-change-least")
STATS = ("rel_step", "parallel_frac", "cos_delta_h", "angular_step", "effective_rank",
         "top1_energy", "top3_energy", "top10_energy", "delta_sq_mean", "h_sq_mean", "eigvals",
         "tok_delta_sq", "tok_dot", "tok_h_sq")


def claim_verdicts(result: dict, num_layers: int) -> dict:
    """The three activation claims decided on ``result`` as the hypotheses decide them."""
    import importlib

    from probes import residual
    from probes.errors import NotApplicable, StrataError
    from probes.evidence import decide
    from probes.phases import default_phases
    phases = default_phases(num_layers)
    evidence = {"phase-C-shared-subspace": lambda: residual.shared_subspace(result, phases, "C"),
                "phase-E-specialized": lambda: residual.specialized(result, phases, "E"),
                "late-layers-change-least": lambda: residual.late_layers_change_least(result)}
    out = {}
    for claim_id in CLAIMS:
        mod = importlib.import_module("hypotheses.test_" + claim_id.lower().replace("-", "_"))
        t0 = time.perf_counter()
        try:
            ev = evidence[claim_id]()
            d = decide(mod.CLAIM, ev, 0.05)
            out[claim_id] = {"verdict": d.verdict,
                             "observed": None if ev is None else float(ev.observed)}
        except (NotApplicable, StrataError) as exc:
            out[claim_id] = {"verdict": "N/A", "observed": None, "reason": str(exc)}
        out[claim_id]["seconds"] = time.perf_counter() - t0
    return out


def gemm_rate(m: int, k: int, n: int, dtype, device: str = "cpu", min_s: float = 1.0) -> float:
    """GFLOP/s of an (m × k) @ (k × n) product in ``dtype`` on ``device`` (best of repeated
    timings, at least ``min_s`` seconds in all): the forward's largest GEMM shape."""
    import torch
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a @ b
    sync()
    best, spent = float("inf"), 0.0
    while spent < min_s or best == float("inf"):
        t0 = time.perf_counter()
        a @ b
        sync()
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
    return 2 * m * k * n / best / 1e9


def child(spec: str, tokens: int | None, device: str, hooked: bool, save: str | None,
          dtype: str = "auto") -> dict:
    import resource

    import numpy as np
    sampler = RssSampler()
    t0 = time.perf_counter()
    from probes import activations, calibration
    from probes.cache import Cache
    from probes.forward_dtype import resolve
    model = open_spec(spec, Cache(tempfile.mkdtemp(prefix="strata-bench-act-")))
    t_open = time.perf_counter()
    tc = calibration.tokenize_for(model, calibration.load_corpus(), tokens)
    t1 = time.perf_counter()
    forward = resolve(dtype, device, model.config)
    if hooked:
        res = activations.compute_hooked(model, tc, device=device)
    else:
        res = activations.compute(model, tc, device=device, forward=forward)
    t2 = time.perf_counter()
    verdicts = claim_verdicts(res, model.layout.num_layers)
    t3 = time.perf_counter()
    if save:
        np.savez(save, **{k: np.asarray(res[k]) for k in STATS})
    out = {"compute_s": t2 - t1, "open_s": t_open - t0, "tokenize_s": t1 - t_open,
           "claims_s": t3 - t2, "tokens": tc.tokens,
           "scored_tokens": res["scored_tokens"], "num_layers": model.layout.num_layers,
           "s_per_1000_tokens": (t2 - t1) / tc.tokens * 1000,
           "verdicts": verdicts, "memory": dict(res["memory"]),
           "maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           **sampler.stop()}
    if "timing" in res:
        lay = model.layout
        m = min(res["memory"]["window"], tc.tokens)
        t4 = time.perf_counter()
        rate = gemm_rate(m, lay.hidden, lay.intermediate, forward.dtype, device)
        floor = res["timing"]["forward_flops"] / (rate * 1e9)
        # the benchmark's own GEMM measurement is no part of Strata's time
        out.update(gemm_s=time.perf_counter() - t4)
        out.update(timing=res["timing"], forward=res["forward"], gemm_gflops=rate,
                   gemm_shape=[m, lay.hidden, lay.intermediate], floor_s=floor,
                   forward_fraction_of_gemm_rate=floor / max(res["timing"]["forward_s"], 1e-9),
                   claims_over_forward=(t3 - t2) / max(res["timing"]["forward_s"], 1e-9),
                   bf16_units=_bf16_units(device))
    return out


def _bf16_units(device: str) -> str:
    from probes.forward_dtype import fast_bf16
    return fast_bf16(device)[1]


def print_split(r: dict) -> None:
    """The time split of one streamed run, beside the floor."""
    t = r.get("timing")
    if not t:
        return
    claims = {c: v["seconds"] for c, v in r["verdicts"].items()}
    parts = [("open model (config, tokenizer, fingerprint)", r["open_s"]),
             ("tokenize", r["tokenize_s"]),
             ("load layers (read + convert to " + r["forward"]["dtype"] + ")", t["load_s"]),
             ("forward (decoder layers)", t["forward_s"]),
             ("per-layer Gram + eigensolve (" + r["memory"].get("gram", "hidden") + " Gram)",
              t["gram_eigensolve_s"]),
             ("per-token scalars", t["token_scalars_s"]),
             ("isotropic null", t["isotropic_s"])]
    parts += [(f"claim {c} (its null)", s) for c, s in claims.items()]
    total = r["wall_s"] - r["gemm_s"]
    print(f"  time split, {total:.1f} s ({r['forward']['dtype']} forward: "
          f"{r['forward']['reason']}; this machine: {r['bf16_units']}):")
    for label, sec in parts:
        print(f"    {label:<58} {sec:8.1f} s  {100 * sec / total:5.1f} %")
    rest = total - sum(sec for _, sec in parts)
    print(f"    {'other (imports, process start, cache, result)':<58} {rest:8.1f} s  "
          f"{100 * rest / total:5.1f} %")
    print(f"  floor: {t['forward_flops'] / 1e12:.2f} TFLOP forward / {r['gemm_gflops']:.0f} GFLOP/s "
          f"({r['forward']['dtype']} GEMM {'×'.join(map(str, r['gemm_shape']))}, measured now) = "
          f"{r['floor_s']:.1f} s; the forward ran at {100 * r['forward_fraction_of_gemm_rate']:.0f} % "
          f"of that rate; the claims' decisions took {100 * r['claims_over_forward']:.0f} % of "
          f"the forward's time")


def compare(a_path: str, b_path: str) -> dict:
    """Largest relative difference per statistic (relative to the reference's largest |value|
    per layer row for arrays, elementwise for per-layer scalars)."""
    import numpy as np
    a, b = np.load(a_path), np.load(b_path)
    out = {}
    for k in STATS:
        x, y = a[k], b[k]
        scale = np.maximum(np.abs(y), np.abs(y).max() * 1e-6)
        out[k] = float(np.max(np.abs(x - y) / scale))
    return out


def run_script(script: Path, checkpoint: str, device: str, threads: int | None) -> dict:
    """The research script, unmodified, in a child process: wall time, peak RSS, its token
    count (parsed from its "calibration tokens: N" line)."""
    out = tempfile.mktemp(prefix="delta-svd-", suffix=".json")
    code = ("import json, resource, runpy, sys, time\n"
            f"sys.argv = [{str(script)!r}, '--model', {checkpoint!r}, '--device', {device!r}, "
            f"'--out', {out!r}]\n"
            "t = time.perf_counter()\n"
            f"runpy.run_path({str(script)!r}, run_name='__main__')\n"
            f"print({MARK!r} + json.dumps({{'script_s': time.perf_counter() - t, "
            "'maxrss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))\n")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(threads),
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    found = re.search(r"calibration tokens: (\d+)", proc.stdout)
    result = next((json.loads(line[len(MARK):]) for line in proc.stdout.splitlines()
                   if line.startswith(MARK)), None)
    if proc.returncode != 0 or result is None or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}", "wall_s": wall}
    return {**result, "wall_s": wall, "tokens": int(found.group(1))}


def warm_page_cache(directory: str) -> float:
    """Read every file of ``directory`` once (so a side-by-side compares compute, not disk)."""
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                while chunk := f.read(64 << 20):
                    total += len(chunk)
    return total / 2**30


def print_run(label: str, r: dict) -> None:
    if "error" in r:
        print(f"{label}: {r['error']}")
        return
    print(f"{label}: {r['wall_s'] - r.get('gemm_s', 0.0):.1f} s wall, {r['compute_s']:.1f} s in the probe "
          f"({r['s_per_1000_tokens']:.1f} s per 1,000 tokens; {r['tokens']} tokens, "
          f"{r['num_layers']} layers; {r['num_layers'] and r['compute_s'] / r['num_layers'] / r['tokens'] * 1000:.2f} s "
          f"per layer per 1,000 tokens); peak RSS {r['maxrss_gb']:.2f} GB "
          f"(anonymous {r['anon_gb']:.2f} GB, file-backed {r['file_gb']:.2f} GB)")
    for claim, v in r["verdicts"].items():
        obs = "-" if v["observed"] is None else f"{v['observed']:.6g}"
        print(f"    {claim}: {v['verdict']} (observed {obs}; decided in {v['seconds']:.1f} s)")
    print_split(r)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--calib-tokens", type=int, default=None)
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    ap.add_argument("--tile", type=int, default=None, metavar="L")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compare-hooked", action="store_true")
    ap.add_argument("--vs-script", nargs="?", const=str(SCRIPT), default=None, metavar="SCRIPT")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--hooked", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--save", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.model:
        ap.error("MODEL is required")
    spec = args.model
    if Path(spec).is_dir():
        spec = str(Path(spec).resolve())
    if args.tile:
        spec = f"tile:{args.tile}:{spec}"
    if args.child:
        if args.threads:
            import torch
            torch.set_num_threads(args.threads)
        print(MARK + json.dumps(child(spec, args.calib_tokens, args.device, args.hooked,
                                      args.save, args.dtype)), flush=True)
        return 0
    report = {"spec": spec, "device": args.device, "dtype": args.dtype,
              "machine": cpu_description()}
    print(f"CPU: {report['machine']}")
    tokens = args.calib_tokens
    if args.vs_script:
        if not Path(args.model).is_dir() or args.tile:
            ap.error("--vs-script needs a checkpoint directory (no --tile)")
        gib = warm_page_cache(spec)
        print(f"page cache: read {gib:.2f} GiB of {spec} once before both runs")
        script = run_script(Path(args.vs_script), spec, args.device, args.threads)
        report["script"] = script
        if "error" in script:
            print(f"research script: {script['error']}")
            return 1
        tokens = script["tokens"]
        print(f"research script ({Path(args.vs_script).name}: whole model in bf16, hooks, SVDs, no "
              f"nulls): {script['wall_s']:.1f} s wall, peak RSS {script['maxrss_gb']:.2f} GB, "
              f"{tokens} tokens")
    work = Path(tempfile.mkdtemp(prefix="strata-bench-act-"))
    base = [sys.executable, "-m", "benchmarks.activations", spec if not args.tile else args.model,
            "--child", "--device", args.device, "--dtype", args.dtype]
    base += ["--calib-tokens", str(tokens)] if tokens else []
    base += ["--tile", str(args.tile)] if args.tile else []
    base += ["--threads", str(args.threads)] if args.threads else []
    runs = [("streamed", [])] + ([("hooked (whole model)", ["--hooked"])]
                                 if args.compare_hooked else [])
    for label, extra in runs:
        npz = work / f"{label.split()[0]}.npz"
        r = spawn(base + extra + ["--save", str(npz)], args.threads)
        report[label] = r
        print_run(label, r)
    if args.vs_script and "error" not in report["streamed"]:
        ours, theirs = report["streamed"], report["script"]
        ours["strata_s"] = ours["wall_s"] - ours.get("gemm_s", 0.0)
        report["ratio_time"] = ours["strata_s"] / theirs["wall_s"]
        report["ratio_memory"] = ours["maxrss_gb"] / theirs["maxrss_gb"]
        print(f"side by side, {tokens} tokens: Strata (three claims with their nulls) "
              f"{ours['strata_s']:.1f} s, {ours['maxrss_gb']:.2f} GB; research script "
              f"{theirs['wall_s']:.1f} s, {theirs['maxrss_gb']:.2f} GB: "
              f"{report['ratio_time']:.2f}× its time at {report['ratio_memory']:.2f}× its memory "
              f"(bf16 units: {ours.get('bf16_units', '?')})")
    if args.compare_hooked and all("error" not in report.get(k, {"error": 1}) for k, _ in runs):
        diffs = compare(str(work / "streamed.npz"), str(work / "hooked.npz"))
        report["max_rel_diff"] = diffs
        same = {c: report["streamed"]["verdicts"][c]["verdict"]
                == report["hooked (whole model)"]["verdicts"][c]["verdict"] for c in CLAIMS}
        report["same_verdicts"] = same
        print("largest relative difference, streamed vs whole model: "
              + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
        print("same verdicts: " + ", ".join(f"{c} {s}" for c, s in same.items()))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
