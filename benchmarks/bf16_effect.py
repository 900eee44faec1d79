"""What a bf16 forward pass changes in every activation statistic, against its null's spread.

    python -m benchmarks.bf16_effect MODEL [--calib-tokens N] [--save DIR | --load DIR]
        [--json OUT.json]

Runs the activation probe (``probes.activations.compute``, built-in corpus) on MODEL twice in
one process — ``--dtype float32`` and ``--dtype bfloat16`` (:mod:`probes.forward_dtype`: bf16
layers under autocast, float32 residual stream) — decides the three activation claims on each
and prints one row per statistic:

* **claim statistics** (what the verdicts are computed from): the phase-C leave-one-out capture
  and its intra − cross |cos|, the phase-E block-rank ratio and its intra − cross, the late-layers
  log-step contrast. Their yardstick is the claim's own null sd (layer-label permutation or
  exchangeable layers, as the claim computes it on the float32 run); the null means are compared
  the same way. The bound (issue 19): |bf16 − float32| ≤ 0.1 null sd and the same verdicts.
* **per-layer token means** (relative step, parallel fraction, mean cos(δ, h), angular step):
  the largest difference over layers against the statistic's standard error over tokens
  (sd over the scored tokens / √T, from the float32 run's per-token values) — the sampling noise
  any test on it would carry. Their null (the random-direction value) is a point, without spread.
* **per-layer spectra** (effective rank, top-1/3/10 energy): no sampling sd is computed (it would
  need a spectrum per resample); the largest difference is given relative to the value and to
  the statistic's distance from its isotropic null value.
* **top-1 directions**: the smallest |cos| between a layer's bf16 and float32 top-1 directions.

On a CPU without bf16 units (AVX2 only) torch emulates the bf16 products: the numbers are the
real bf16 numbers, only slow. ``--save DIR`` keeps both results (npz), ``--load DIR`` reprints
from them without computing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ARRAYS = ("rel_step", "parallel_frac", "cos_delta_h", "angular_step", "effective_rank",
          "top1_energy", "top3_energy", "top10_energy", "top_dirs", "tok_delta_sq", "tok_dot",
          "tok_h_sq", "eigvals")
TOKEN_MEANS = ("rel_step", "parallel_frac", "cos_delta_h", "angular_step")
SPECTRA = ("effective_rank", "top1_energy", "top3_energy", "top10_energy")
BOUND = 0.1


def per_token(res: dict) -> dict[str, np.ndarray]:
    """(T, n) per-token values of the token-mean statistics, from the stored scalars
    ‖δ‖², ⟨h, δ⟩, ‖h‖² (the same formulas the probe averages)."""
    d2, dot, h2 = (np.asarray(res[k], dtype=np.float64) for k in ("tok_delta_sq", "tok_dot",
                                                                   "tok_h_sq"))
    dn, hn = np.sqrt(d2), np.sqrt(h2)
    cos = dot / np.maximum(dn * hn, 1e-300)
    out_n = np.sqrt(np.maximum(h2 + 2 * dot + d2, 0.0))
    cos_ho = np.clip((h2 + dot) / np.maximum(hn * out_n, 1e-300), -1.0, 1.0)
    return {"rel_step": dn / np.maximum(hn, 1e-300), "parallel_frac": np.abs(cos),
            "cos_delta_h": cos, "angular_step": np.arccos(cos_ho) / np.pi}


def claim_statistics(res: dict, num_layers: int) -> dict[str, dict]:
    """Each claim's statistics with their null moments and the verdict, as the claims decide."""
    import importlib

    from probes import residual
    from probes.errors import NotApplicable
    from probes.evidence import decide
    from probes.phases import default_phases
    phases = default_phases(num_layers)
    evidence = {"phase-C-shared-subspace": lambda: residual.shared_subspace(res, phases, "C"),
                "phase-E-specialized": lambda: residual.specialized(res, phases, "E"),
                "late-layers-change-least": lambda: residual.late_layers_change_least(res)}
    out = {}
    for claim_id, fn in evidence.items():
        mod = importlib.import_module("hypotheses.test_" + claim_id.lower().replace("-", "_"))
        try:
            ev = fn()
        except NotApplicable as exc:
            out[claim_id] = {"verdict": "N/A", "reason": str(exc), "stats": {}}
            continue
        stats = {"observed": (ev.observed, ev.null_mean, ev.null_sd)}
        extra = ev.extra or {}
        if "intra_minus_cross" in extra:
            stats["intra − cross mean abs cos"] = (extra["intra_minus_cross"],
                                            extra["intra_minus_cross_null_mean"],
                                            extra["intra_minus_cross_null_sd"])
        out[claim_id] = {"verdict": decide(mod.CLAIM, ev, 0.05).verdict, "p": ev.p,
                         "stats": stats}
    return out


def compare(a: dict, b: dict, num_layers: int) -> dict:
    """Rows of the table: float32 run ``a`` against bf16 run ``b``."""
    rows = []
    ca, cb = claim_statistics(a, num_layers), claim_statistics(b, num_layers)
    for claim in ca:
        for name, (obs_a, mu_a, sd_a) in ca[claim]["stats"].items():
            obs_b, mu_b, _ = cb[claim]["stats"][name]
            rows.append({"kind": "claim", "statistic": f"{claim}: {name}", "float32": obs_a,
                         "bf16": obs_b, "diff": abs(obs_b - obs_a), "sd": sd_a,
                         "diff_over_sd": abs(obs_b - obs_a) / sd_a if sd_a > 0 else float("inf"),
                         "null_mean_diff_over_sd": abs(mu_b - mu_a) / sd_a if sd_a > 0 else None,
                         "verdict_float32": ca[claim]["verdict"],
                         "verdict_bf16": cb[claim]["verdict"]})
        if not ca[claim]["stats"]:
            rows.append({"kind": "claim", "statistic": f"{claim}", "verdict_float32": "N/A",
                         "verdict_bf16": cb[claim]["verdict"], "reason": ca[claim]["reason"]})
    tok = per_token(a)
    t = tok["rel_step"].shape[0]
    for key in TOKEN_MEANS:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        se = tok[key].std(axis=0, ddof=1) / np.sqrt(t)
        ratio = np.abs(y - x) / se
        i = int(np.argmax(ratio))
        rows.append({"kind": "token mean", "statistic": key, "layer": i, "float32": float(x[i]),
                     "bf16": float(y[i]), "diff": float(np.abs(y - x).max()), "sd": float(se[i]),
                     "diff_over_sd": float(ratio[i])})
    iso = a.get("isotropic", {})
    for key in SPECTRA:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        diff = np.abs(y - x)
        i = int(np.argmax(diff / np.abs(x)))
        dist = np.abs(x - iso[key]) if key in iso else None
        rows.append({"kind": "spectrum", "statistic": key, "layer": i, "float32": float(x[i]),
                     "bf16": float(y[i]), "diff": float(diff.max()),
                     "rel_diff": float((diff / np.abs(x)).max()),
                     "diff_over_null_distance": None if dist is None else float((diff / dist).max())})
    cos = np.abs(np.einsum("ld,ld->l", np.asarray(a["top_dirs"], dtype=np.float64)[:, 0],
                           np.asarray(b["top_dirs"], dtype=np.float64)[:, 0]))
    rows.append({"kind": "direction", "statistic": "top-1 direction abs cos(bf16, float32)",
                 "layer": int(np.argmin(cos)), "min_abs_cos": float(cos.min())})
    return {"rows": rows, "verdicts": {c: (ca[c]["verdict"], cb[c]["verdict"]) for c in ca}}


def run(spec: str, tokens: int | None, device: str) -> tuple[dict, dict, int, dict]:
    from probes import activations, calibration
    from probes.cache import Cache
    from probes.forward_dtype import resolve

    from benchmarks.run import open_spec
    model = open_spec(spec, Cache(tempfile.mkdtemp(prefix="strata-bf16-")))
    tc = calibration.tokenize_for(model, calibration.load_corpus(), tokens)
    out, seconds = {}, {}
    for name in ("float32", "bfloat16"):
        t0 = time.perf_counter()
        out[name] = activations.compute(model, tc, device=device,
                                        forward=resolve(name, device, model.config))
        seconds[name] = time.perf_counter() - t0
        print(f"{name}: {seconds[name]:.0f} s ({tc.tokens} tokens)", flush=True)
    return out["float32"], out["bfloat16"], model.layout.num_layers, seconds


def _fmt(x, spec=".3g"):
    return "-" if x is None else format(x, spec)


def print_table(spec: str, table: dict, tokens: int) -> None:
    print(f"\n{spec}: bf16 against float32, {tokens} calibration tokens "
          f"(bound: |Δ| ≤ {BOUND} null sd, same verdicts)")
    print("| statistic | float32 | bf16 | largest \\|Δ\\| | yardstick | \\|Δ\\| / yardstick | verdicts float32 → bf16 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in table["rows"]:
        if r["kind"] == "claim":
            if "diff" not in r:
                print(f"| {r['statistic']} | N/A | {r['verdict_bf16']} | - | - | - | N/A → {r['verdict_bf16']} |")
                continue
            flag = "" if r["diff_over_sd"] <= BOUND else " **over the bound**"
            print(f"| {r['statistic']} | {_fmt(r['float32'], '.6g')} | {_fmt(r['bf16'], '.6g')} | "
                  f"{_fmt(r['diff'])} | null sd {_fmt(r['sd'])} | {_fmt(r['diff_over_sd'])}{flag} "
                  f"(null mean: {_fmt(r['null_mean_diff_over_sd'])}) | "
                  f"{r['verdict_float32']} → {r['verdict_bf16']} |")
        elif r["kind"] == "token mean":
            print(f"| {r['statistic']} (layer {r['layer']}) | {_fmt(r['float32'], '.6g')} | "
                  f"{_fmt(r['bf16'], '.6g')} | {_fmt(r['diff'])} | token s.e. {_fmt(r['sd'])} | "
                  f"{_fmt(r['diff_over_sd'])} | |")
        elif r["kind"] == "spectrum":
            print(f"| {r['statistic']} (layer {r['layer']}) | {_fmt(r['float32'], '.6g')} | "
                  f"{_fmt(r['bf16'], '.6g')} | {_fmt(r['diff'])} | relative; distance to "
                  f"isotropic null | {_fmt(r['rel_diff'])}; {_fmt(r['diff_over_null_distance'])} | |")
        else:
            print(f"| {r['statistic']} (worst: layer {r['layer']}) | | | | | min {r['min_abs_cos']:.6f} | |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--calib-tokens", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--save", type=Path, default=None, metavar="DIR")
    ap.add_argument("--load", type=Path, default=None, metavar="DIR")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    spec = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
    if args.load:
        meta = json.loads((args.load / "meta.json").read_text())
        a, b = ({k: v for k, v in np.load(args.load / f"{n}.npz").items()}
                for n in ("float32", "bfloat16"))
        for res, name in ((a, "float32"), (b, "bfloat16")):
            res["isotropic"] = meta["isotropic"]
        n, tokens = meta["num_layers"], meta["tokens"]
    else:
        a, b, n, seconds = run(spec, args.calib_tokens, args.device)
        tokens = a["calibration"]["tokens"]
        meta = {"spec": spec, "num_layers": n, "tokens": tokens, "isotropic": a["isotropic"],
                "seconds": seconds, "forward": [a["forward"], b["forward"]]}
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            for res, name in ((a, "float32"), (b, "bfloat16")):
                np.savez(args.save / f"{name}.npz", **{k: np.asarray(res[k]) for k in ARRAYS})
            (args.save / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    table = compare(a, b, n)
    print_table(meta["spec"], table, tokens)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, **table}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
