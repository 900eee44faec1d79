"""How far to trust each claim: false-positive rate on structure-free models, power on planted ones.

    OMP_NUM_THREADS=1 python -m benchmarks.calibration [--null-models 30]
        [--gauge-null-models 5] [--power-seeds 10] [--calib-tokens 1024] [--out DIR]
        [--claims ID,...] [--redo ID,...] [--skip nulls,power] [--json OUT]

False positives. Every claim of ``hypotheses/`` is run (``benchmarks.claims``: the claims' own
code, the fixtures' probe calls and cache keys) on structure-free models of the default model's
shapes (SmolLM2-135M: llama, 30 layers, hidden 576), two families (``probes.null_models``):
``iid`` — random-init draws with their own salts — and ``shuffled`` — the real tensors with
entries shuffled within each tensor and layers permuted per family. A SUPPORTED record there is
a false positive.

How it is counted. The unit is one record — one verdict a report shows (model × phase ×
family) — because that is what a reader trusts or not; N/A records are no test and are left out
of the denominator. Records of one model come from disjoint layers or independent tensors, so
on these models they are independent trials and the Clopper–Pearson interval over records
applies; the number of models with at least one false positive is printed beside it (a
model-level, family-wise view). Interval: Clopper–Pearson, two-sided 90 %, whose upper end is
the one-sided 95 % upper bound; a claim passes when the rate is ≤ α and that bound ≤ 2α (with 0
false positives that needs ≥ 29 records). Equivalence claims (direction ``equivalent``,
i.e. ``gauge-delta-null``) are the other way round: on structure-free models they are *true*,
so there SUPPORTED counts as power, and their false positives are measured on planted models
whose effect lies beyond the margin.

Power. The planted controls (``probes/synthetic/planted_*.py``) at several strengths (a
builder parameter, 1 = the registered control, 0 = plain random init) and ``--power-seeds``
seeds each; power = SUPPORTED records / records in the planted region of each claim
(:data:`POWER`). Tiny models (24 layers, hidden 48–64): power here is for those shapes.

Cost and resumability. Probe results are cached per model in the probe cache
(``$STRATA_CACHE_DIR``; the same entries ``pytest hypotheses/`` would use) and each model's
verdict records are stored under ``--out``, so an interrupted run continues where it stopped,
and ``--redo CLAIM`` re-decides a changed claim from the cached probes (seconds per model).
Work runs cheapest first (:func:`null_schedule`): weight and head-metric claims, then the
activation claims (a forward pass per model on ``--calib-tokens`` of the built-in corpus, 1024
by default; the layer-label and exchangeable-layer nulls these claims use do not depend on the
corpus size) on models 0–19, the gauge claims on models 0–2 (the gauge probe costs ≈ 2
CPU-minutes per SmolLM2-sized model), the remaining models, the remaining gauge models; then
the planted power runs. On a shared machine run it with ``OMP_NUM_THREADS=1``: under a load of
~10 on 2 cores, multi-threaded BLAS/OpenMP made each model 5–10× slower. The script prints the
table "how far to trust each claim" (README) and writes every count to ``--json``
(``benchmarks/calibration.json``, whose rows the HTML report shows).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.claims import ClaimTest, Session, discover, evaluate
from probes.cache import Cache, default_cache_dir
from probes.evidence import Evidence, decide
from probes.models.base import PROJECTIONS
from probes.null_models import FAMILIES, null_model
from probes.stats import clopper_pearson

ALPHA = 0.05
DEFAULT_BASE = "smollm2-135m"
# cheapest probe group first; the gauge probe (minutes per model) last
PROBE_ORDER = (("weight_gram", "head_metric_result"),
               ("residual_stream", "late_layers_null", "phase_c_capture_null"),
               ("gauge_alignment",))


@dataclass(frozen=True)
class PowerTarget:
    """Where a claim's planted structure is: model, the records that must be SUPPORTED, strengths.

    ``records``: (phase, family) pairs (family None = the claim has no family parameter;
    phase None = no phase parameter). ``expect``: "SUPPORTED" (power = SUPPORTED rate) — for an
    equivalence claim the planted effect makes it false, so its planted records measure false
    positives instead, except at strength 0."""

    model: str
    records: tuple
    strengths: tuple[float, ...]
    note: str
    max_seeds: int | None = None   # cap on --power-seeds (the gauge probe costs ~1 min per model)


def _fams(phase):
    return tuple((phase, f) for f in PROJECTIONS)


POWER = {
    "adjacent-far-from-null": PowerTarget("planted-adjacent", _fams("C"), (0.01, 0.02, 0.03, 0.05, 1.0),
                                          "phase C, 7 projection families"),
    "scale-schedule-low-dim": PowerTarget("planted-adjacent?chain=0", ((None, None),),
                                          (0.01, 0.02, 0.05, 0.1, 1.0),
                                          "depth profile amplitude 0.8·s, no copy chain"),
    "head-metric-adjacent": PowerTarget("planted-heads", (("C", None),), (0.1, 0.15, 0.2, 0.3, 1.0),
                                        "phase C"),
    "qk-sym-positive": PowerTarget("planted-heads", (("D", None),), (0.02, 0.05, 0.1, 0.2, 1.0),
                                   "phase D"),
    "aligned-delta-E-exceeds-C": PowerTarget("planted-gauge", tuple((None, f) for f in PROJECTIONS),
                                             (0.1, 0.2, 0.5), "E vs C, 7 families", 4),
    "gauge-delta-null": PowerTarget("planted-gauge", _fams("E"), (0.0, 0.1, 0.2, 0.5),
                                    "phase E, 7 families: true only at s = 0", 4),
    "phase-C-shared-subspace": PowerTarget("planted-residual", ((None, None),),
                                           (0.05, 0.1, 0.2, 0.5, 1.0), "phase C"),
    "phase-E-specialized": PowerTarget("planted-residual", ((None, None),),
                                       (0.05, 0.1, 0.2, 0.5, 1.0), "phase E"),
    "late-layers-change-least": PowerTarget("planted-residual", ((None, None),),
                                            (0.2, 0.5, 0.7, 0.85, 1.0),
                                            "layers 12-22 scaled 1 − 0.9·s"),
}


# -- running --------------------------------------------------------------------------------
class Store:
    """Per-model records on disk: ``<out>/<kind>/<name>.json`` = {claim id: [records]}."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, kind: str, name: str) -> Path:
        return self.root / kind / f"{name}.json"

    def load(self, kind: str, name: str) -> dict:
        p = self.path(kind, name)
        return json.loads(p.read_text()) if p.is_file() else {}

    def count(self, kind: str, family: str) -> int:
        """1 + the largest model index of ``family`` stored (models run beyond the defaults,
        e.g. with ``--null-models 50 --families shuffled``, count too)."""
        idx = [int(p.stem.rsplit("-", 1)[1]) for p in (self.root / kind).glob(f"{family}-*.json")]
        return max(idx) + 1 if idx else 0

    def save(self, kind: str, name: str, records: dict) -> None:
        p = self.path(kind, name)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(records, default=float))
        os.replace(tmp, p)


def _by_claim(records: list[dict]) -> dict:
    out: dict = {}
    for r in records:
        out.setdefault(r["claim"], []).append(r)
    return out


def null_schedule(n_models: int, n_gauge: int, first: int = 20, gauge_first: int = 3):
    """(probe group, model indices) in run order, cheapest first, so a run cut short still
    covers every claim: the non-gauge groups on models 0 … first−1, the gauge claims on the
    first ``gauge_first`` models, the rest of the non-gauge models, then the rest of the gauge
    models."""
    cheap, gauge = PROBE_ORDER[:-1], PROBE_ORDER[-1]
    stages = [(g, range(0, min(first, n_models))) for g in cheap]
    stages.append((gauge, range(0, min(gauge_first, n_gauge))))
    stages += [(g, range(first, n_models)) for g in cheap]
    stages.append((gauge, range(gauge_first, n_gauge)))
    return [(g, r) for g, r in stages if len(r)]


def run_nulls(claims: list[ClaimTest], store: Store, base_spec: str, n_models: int,
              n_gauge: int, calib_tokens, redo: set, log=print, families=FAMILIES,
              cache_root: Path | None = None) -> None:
    """False-positive runs: every claim on every null model (:func:`null_schedule` order)."""
    from probes.models import open_model
    base = None
    for group, indices in null_schedule(n_models, n_gauge):
        group_claims = [c for c in claims if c.probes and set(c.probes) <= set(group)]
        if not group_claims:
            continue
        for i in indices:               # families interleaved: a cut-short run covers both
            for family in families:
                name = f"{family}-{i}"
                done = store.load("null", name)
                todo = [c for c in group_claims
                        if c.claim.id not in done or c.claim.id in redo]
                if not todo:
                    continue
                t0 = time.time()
                cache = Cache(cache_root)
                if base is None:
                    base = open_model(base_spec, cache=cache)
                model = null_model(family, base, i, cache)
                session = Session(cache, calib_tokens=calib_tokens)
                recs = evaluate(model, todo, session, ALPHA)
                done.update(_by_claim(recs))
                for c in todo:
                    done.setdefault(c.claim.id, [])
                store.save("null", name, done)
                log(f"null {name}: {', '.join(c.claim.id for c in todo)} "
                    f"({time.time() - t0:.0f} s)")


def seeds_of(target: PowerTarget, seeds: int) -> int:
    return min(seeds, target.max_seeds or seeds)


def run_power(claims: list[ClaimTest], store: Store, seeds: int, redo: set, log=print,
              cache_root: Path | None = None, power: dict = POWER, calib_tokens=None) -> None:
    """Power runs: each claim on its planted model at each strength and seed."""
    from probes.models import open_model
    by_id = {c.claim.id: c for c in claims}
    models: dict = {}
    for cid, target in power.items():
        if cid in by_id:
            for s in target.strengths:
                models.setdefault((target.model, s), []).append(by_id[cid])
    for (base, strength), cts in models.items():
        for seed in range(max(seeds_of(power[c.claim.id], seeds) for c in cts)):
            name = f"{base}@{strength:g}#{seed}"
            done = store.load("power", name)
            todo = [c for c in cts if (c.claim.id not in done or c.claim.id in redo)
                    and seed < seeds_of(power[c.claim.id], seeds)]
            if not todo:
                continue
            t0 = time.time()
            cache = Cache(cache_root)
            # seeds 1000+ so no power draw is the registered control itself
            sep = "&" if "?" in base else "?"
            model = open_model(f"synthetic:{base}{sep}strength={strength:g}&seed={1000 + seed}",
                               cache=cache)
            session = Session(cache, calib_tokens=calib_tokens)
            only = {c.claim.id: set(power[c.claim.id].records) for c in todo}
            recs = evaluate(model, todo, session, ALPHA, only=only)
            done.update(_by_claim(recs))
            for c in todo:
                done.setdefault(c.claim.id, [])
            store.save("power", name, done)
            log(f"power {name}: {len(recs)} records ({time.time() - t0:.1f} s)")


# -- summarising ------------------------------------------------------------------------------
def rate(records: list[dict], what: str = "SUPPORTED") -> dict:
    """k of n applicable records with verdict ``what``, and the 90 % Clopper–Pearson interval."""
    tested = [r for r in records if r["verdict"] != "N/A"]
    k, n = sum(r["verdict"] == what for r in tested), len(tested)
    lo, hi = clopper_pearson(k, n, 0.90) if n else (float("nan"), float("nan"))
    return {"k": k, "n": n, "rate": k / n if n else float("nan"), "ci90": [lo, hi],
            "not_applicable": len(records) - n}


def redecide(records: list[dict], claim, alpha: float = ALPHA) -> list[dict]:
    """The records with their verdicts re-decided by the claim as it is now, from their stored
    numbers (observed, effect, interval, p): a changed minimum effect or direction needs no new
    probe run. N/A records stay N/A."""
    out = []
    for r in records:
        if r["verdict"] != "N/A":
            ev = Evidence(observed=r["observed"], null_kind="", null_mean=r["null_mean"],
                          null_sd=float("nan"), effect=r["effect"], ci=tuple(r["ci"]), p=r["p"])
            r = {**r, "verdict": decide(claim, ev, alpha).verdict, "min_effect": claim.min_effect}
        out.append(r)
    return out


def summarise(claims: list[ClaimTest], store: Store, n_models: int, n_gauge: int, seeds: int,
              families=FAMILIES, power: dict = POWER) -> dict:
    out = {"alpha": ALPHA, "claims": {}}
    for ct in claims:
        cid = ct.claim.id
        limit = n_gauge if "gauge_alignment" in ct.probes else n_models
        entry = {"claim": cid, "statement": ct.claim.statement, "null": ct.claim.null,
                 "direction": ct.claim.direction, "min_effect": ct.claim.min_effect,
                 "min_effect_why": getattr(ct.claim, "min_effect_why", ""), "null_families": {}}
        for family in families:
            recs, models_hit, models_run = [], 0, 0
            for i in range(max(limit, store.count("null", family))):
                got = store.load("null", f"{family}-{i}").get(cid)
                if got is None:
                    continue
                got = redecide(got, ct.claim)
                models_run += 1
                recs.extend(got)
                models_hit += any(r["verdict"] == "SUPPORTED" for r in got)
            entry["null_families"][family] = {**rate(recs), "models": models_run,
                                              "models_with_support": models_hit}
        target = power.get(cid)
        if target:
            curve = []
            for s in target.strengths:
                recs = []
                for seed in range(seeds_of(target, seeds)):
                    recs.extend(redecide(store.load("power", f"{target.model}@{s:g}#{seed}")
                                         .get(cid, []), ct.claim))
                cell = {"strength": s, **rate(recs),
                        "mean_effect": _mean([r.get("effect") for r in recs])}
                if ct.claim.direction == "equivalent":
                    cell["beyond_margin"] = rate(beyond_margin(recs, ct.claim.min_effect))
                curve.append(cell)
            entry["power"] = {"model": target.model, "note": target.note, "curve": curve}
        out["claims"][cid] = entry
    return out


def beyond_margin(records: list[dict], margin: float) -> list[dict]:
    """For an equivalence claim: the records of the (phase, family) groups whose mean effect
    over the seeds lies at or beyond ±margin — where the claim is false, so SUPPORTED there is
    a false positive."""
    groups: dict = {}
    for r in records:
        if r["verdict"] != "N/A":
            groups.setdefault((r["phase"], r["family"]), []).append(r)
    return [r for g in groups.values() if abs(_mean([r["effect"] for r in g])) >= margin
            for r in g]


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def verdict_on_calibration(entry: dict, alpha: float = ALPHA) -> dict:
    """Does the claim pass: false-positive rate ≤ α with upper bound ≤ 2α on each null family,
    and power ≥ 0.8 at some planted strength? For an equivalence claim the null families give
    its power and the planted strengths beyond the margin its false positives."""
    equiv = entry["direction"] == "equivalent"
    curve = entry.get("power", {}).get("curve", [])
    if equiv:
        fp_cells = [pooled_beyond_margin(curve)] if curve else []
        fp_cells = [c for c in fp_cells if c["n"]]
        power_cells = [{"strength": f"null:{f}", **v} for f, v in entry["null_families"].items()]
        power_cells += [c for c in curve if c["strength"] == 0]
    else:
        fp_cells = [v for v in entry["null_families"].values() if v["n"]]
        power_cells = [c for c in curve if c["n"]]
    fp_ok = all(c["rate"] <= alpha and c["ci90"][1] <= 2 * alpha for c in fp_cells) and bool(fp_cells)
    reach = [c["strength"] for c in power_cells if c["n"] and c["rate"] >= 0.8]
    return {"fp_ok": fp_ok, "power_0_8_at": reach[0] if reach else None}


def pooled_beyond_margin(curve: list[dict]) -> dict:
    """An equivalence claim's false positives: SUPPORTED among the planted records beyond the
    margin, pooled over the strengths > 0."""
    k = sum(c["beyond_margin"]["k"] for c in curve if c["strength"] > 0)
    n = sum(c["beyond_margin"]["n"] for c in curve if c["strength"] > 0)
    lo, hi = clopper_pearson(k, n, 0.90) if n else (float("nan"), float("nan"))
    return {"k": k, "n": n, "rate": k / n if n else float("nan"), "ci90": [lo, hi]}


def _fmt_rate(c: dict) -> str:
    if not c["n"]:
        return "—"
    lo, hi = c["ci90"]
    return f"{c['k']}/{c['n']} = {c['rate']:.3f} [{lo:.3f}, {hi:.3f}]"


def row_cells(entry: dict, alpha: float = ALPHA) -> dict:
    """One claim's row of the trust table, as text cells (also what the HTML report shows)."""
    v = verdict_on_calibration(entry, alpha)
    equiv = entry["direction"] == "equivalent"
    cells = {}
    for f in FAMILIES:
        c = entry["null_families"].get(f, {"n": 0})
        cell = _fmt_rate(c)
        if c.get("n") and not equiv:
            cell += f"; {c['models_with_support']}/{c['models']} models"
        if equiv and c.get("n"):
            cell = f"true here: SUPPORTED {cell} ({c['models']} models)"
        cells[f"fp_{f}"] = cell
    curve = entry.get("power", {}).get("curve", [])
    pw = "; ".join(f"{c['strength']:g}: {c['k']}/{c['n']}" for c in curve if c["n"])
    if equiv and pw:
        fp = pooled_beyond_margin(curve)
        pw = (f"SUPPORTED in E by s (true only at s = 0) {pw}; false positives where the mean "
              f"excess is beyond ±{entry['min_effect']:g}: {_fmt_rate(fp)}")
    model = entry.get("power", {}).get("model", "")
    cells["power"] = f"{model}: {pw}" if model and pw else (pw or "—")
    reach = v["power_0_8_at"]
    cells["power_0_8"] = ("not reached" if reach is None else
                          f"the {reach[5:]} null models (no structure: the claim is true)"
                          if isinstance(reach, str) else f"s = {reach:g}")
    arrow = {"two-sided": "|effect| ≥", "greater": "effect ≥", "less": "effect ≥",
             "equivalent": "within ±"}[entry["direction"]]
    cells["min_effect"] = f"{arrow} {entry['min_effect']:g}" + (
        f": {entry['min_effect_why']}" if entry["min_effect_why"] else "")
    cells["null"] = entry["null"]
    cells["ok"] = v["fp_ok"]
    return cells


def table(summary: dict) -> str:
    """The README table "how far to trust each claim" (Markdown)."""
    rows = ["| claim | null | minimum effect, and why | false positives: i.i.d. init | "
            "false positives: shuffled real | power at planted strength s | power ≥ 0.8 from |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for cid, cells in summary["rows"].items():
        flag = "" if cells["ok"] else " ⚠"
        md = {k: str(v).replace("|", "\\|") for k, v in cells.items()}
        rows.append(f'| <a id="trust-{cid.lower()}"></a>`{cid}`{flag} | {md["null"]} | '
                    f'{md["min_effect"]} | {md["fp_iid"]} | {md["fp_shuffled"]} | {md["power"]} | '
                    f'{md["power_0_8"]} |')
    return "\n".join(rows)


# -- command line ---------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=DEFAULT_BASE, help="model whose shapes/tensors the nulls take")
    ap.add_argument("--null-models", type=int, default=30, help="models per null family")
    ap.add_argument("--gauge-null-models", type=int, default=5,
                    help="models per null family for the gauge claims (minutes each)")
    ap.add_argument("--power-seeds", type=int, default=10, help="planted draws per strength")
    ap.add_argument("--calib-tokens", type=int, default=1024,
                    help="token budget of the activation claims on null models (0: all)")
    ap.add_argument("--families", default=",".join(FAMILIES),
                    help="null families to run (default: all); the summary counts every model stored")
    ap.add_argument("--claims", default="", help="comma-separated claim ids (default: all)")
    ap.add_argument("--redo", default="", help="claim ids whose stored verdicts are recomputed "
                    "(probe results stay cached); 'all' for every claim")
    ap.add_argument("--skip", default="", help="parts to skip: nulls, power")
    ap.add_argument("--out", default=None, help="per-model records (default: <cache>/calibration)")
    ap.add_argument("--json", default=str(Path(__file__).with_name("calibration.json")),
                    help="write the summary here (default benchmarks/calibration.json: the HTML "
                         "report shows its rows; '' to skip)")
    args = ap.parse_args(argv)

    claims = discover()
    if args.claims:
        wanted = set(args.claims.split(","))
        claims = [c for c in claims if c.claim.id in wanted]
    redo = {c.claim.id for c in claims} if args.redo == "all" else set(filter(None, args.redo.split(",")))
    store = Store(Path(args.out) if args.out else default_cache_dir() / "calibration")
    skip = set(filter(None, args.skip.split(",")))
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.time()
    if "nulls" not in skip:
        run_nulls(claims, store, args.base, args.null_models, args.gauge_null_models,
                  args.calib_tokens or None, redo, log,
                  families=tuple(filter(None, args.families.split(","))))
    if "power" not in skip:
        run_power(claims, store, args.power_seeds, redo, log,
                  calib_tokens=args.calib_tokens or None)
    summary = summarise(claims, store, args.null_models, args.gauge_null_models, args.power_seeds)
    summary["rows"] = {cid: row_cells(e) for cid, e in summary["claims"].items()}
    summary.update({"base": args.base, "null_models": args.null_models,
                    "gauge_null_models": args.gauge_null_models, "power_seeds": args.power_seeds,
                    "calib_tokens": args.calib_tokens or None, "seconds": time.time() - t0})
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1, default=float))
    print(table(summary))
    print(f"\n{args.null_models} null models per family ({args.gauge_null_models} for the gauge "
          f"claims; more where more are stored: each cell's k/M models) of {args.base}'s shapes; activation claims on {args.calib_tokens or 'all'} "
          f"calibration tokens; {args.power_seeds} planted draws per strength; α = {ALPHA}; "
          f"intervals: Clopper–Pearson 90 % (upper end = one-sided 95 % bound). "
          f"⚠ = false-positive rate above α or its bound above 2α. {time.time() - t0:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
