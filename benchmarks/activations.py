"""Time and measure the activation probe (the layer-streamed forward pass) and its claims.

    python -m benchmarks.activations MODEL [--calib-tokens N] [--tile L] [--compare-hooked]
        [--device cpu|cuda] [--threads N] [--json OUT.json]

MODEL is any model spec (a checkpoint directory with a real tokenizer, ``smollm2-135m``, …).
Each run is a fresh Python process (``benchmarks.run``'s child machinery) that opens the model,
tokenizes the calibration corpus (the built-in one, first ``--calib-tokens`` tokens), runs
``probes.activations.compute`` and decides the three activation claims (phase-C-shared-subspace,
phase-E-specialized, late-layers-change-least; phase C/E per the default phase map). It reports
wall time, the seconds inside the probe, seconds per 1,000 calibration tokens, ``ru_maxrss`` and
the peak anonymous / file-backed RSS (sampled).

``--tile L`` reads a few-layer checkpoint as L layers (layer l = checkpoint layer l mod L₀, see
``benchmarks/README.md``): real per-layer shapes and time at a depth the disk does not hold.
``--compare-hooked`` also runs the whole-model hooked path (``compute_hooked``, the reference;
it holds the whole model in float32 — only for small models) and prints the largest relative
difference of every statistic and whether each claim's verdict is the same.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.run import MARK, RssSampler, open_spec, spawn

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
        try:
            ev = evidence[claim_id]()
            d = decide(mod.CLAIM, ev, 0.05)
            out[claim_id] = {"verdict": d.verdict,
                             "observed": None if ev is None else float(ev.observed)}
        except (NotApplicable, StrataError) as exc:
            out[claim_id] = {"verdict": "N/A", "observed": None, "reason": str(exc)}
    return out


def child(spec: str, tokens: int | None, device: str, hooked: bool, save: str | None) -> dict:
    import resource

    import numpy as np
    sampler = RssSampler()
    t0 = time.perf_counter()
    from probes import activations, calibration
    from probes.cache import Cache
    model = open_spec(spec, Cache(tempfile.mkdtemp(prefix="strata-bench-act-")))
    tc = calibration.tokenize(calibration.load_corpus(), model.encode, tokens)
    t1 = time.perf_counter()
    fn = activations.compute_hooked if hooked else activations.compute
    res = fn(model, tc, device=device)
    t2 = time.perf_counter()
    if save:
        np.savez(save, **{k: np.asarray(res[k]) for k in STATS})
    return {"compute_s": t2 - t1, "open_s": t1 - t0, "tokens": tc.tokens,
            "scored_tokens": res["scored_tokens"], "num_layers": model.layout.num_layers,
            "s_per_1000_tokens": (t2 - t1) / tc.tokens * 1000,
            "verdicts": claim_verdicts(res, model.layout.num_layers),
            "memory": {k: v for k, v in res["memory"].items()},
            "maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            **sampler.stop()}


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--calib-tokens", type=int, default=None)
    ap.add_argument("--tile", type=int, default=None, metavar="L")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compare-hooked", action="store_true")
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
                                      args.save)), flush=True)
        return 0
    work = Path(tempfile.mkdtemp(prefix="strata-bench-act-"))
    base = [sys.executable, "-m", "benchmarks.activations", str(Path(args.model).resolve()) if Path(args.model).is_dir() else args.model, "--child",
            "--device", args.device]
    base += ["--calib-tokens", str(args.calib_tokens)] if args.calib_tokens else []
    base += ["--tile", str(args.tile)] if args.tile else []
    base += ["--threads", str(args.threads)] if args.threads else []
    report = {"spec": spec, "device": args.device}
    runs = [("streamed", [])] + ([("hooked (whole model)", ["--hooked"])]
                                 if args.compare_hooked else [])
    for label, extra in runs:
        npz = work / f"{label.split()[0]}.npz"
        r = spawn(base + extra + ["--save", str(npz)], args.threads)
        report[label] = r
        if "error" in r:
            print(f"{label}: {r['error']}")
            continue
        print(f"{label}: {r['wall_s']:.1f} s wall, {r['compute_s']:.1f} s in the probe "
              f"({r['s_per_1000_tokens']:.1f} s per 1,000 tokens; {r['tokens']} tokens, "
              f"{r['num_layers']} layers); peak RSS {r['maxrss_gb']:.2f} GB "
              f"(anonymous {r['anon_gb']:.2f} GB, file-backed {r['file_gb']:.2f} GB)")
        for claim, v in r["verdicts"].items():
            obs = "-" if v["observed"] is None else f"{v['observed']:.6g}"
            print(f"    {claim}: {v['verdict']} (observed {obs})")
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
