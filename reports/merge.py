"""Merge the reports of several runs (machines, days) into one report with its pooled section.

    python -m reports.merge runs/smollm2 runs/gemma3 runs/qwen2 --out reports/zoo

Each argument is a report directory (or its ``verdicts.json``), ``strata.verdicts/1`` or ``/2``.
The merged report holds every run's records and twin records, Holm's adjustment redone over
all of them, the pooled records computed afresh, and ``run.merged_from`` naming the sources.

Runs are refused, with one ``ERROR: strata: ...`` line and exit status 2, when pooling them would
mix different things: a different α; a claim defined differently (statement, statistic,
direction or minimum effect — the claim's version); activation claims measured on different
calibration text; one model spec with two phase maps or two different weights (content
fingerprints); or the same record (claim, test, model, phase, family) in two runs. Nothing is
written then.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np

from probes.errors import StrataError
from probes.stats import holm

from .api import load_document
from .schema import SCHEMA_ID

CLAIM_VERSION = ("statement", "statistic", "direction", "min_effect")


def _num(x):
    return None if x is None or not np.isfinite(x) else float(x)


def merge_documents(docs: list[dict], names: list[str] | None = None) -> dict:
    """One strata.verdicts/2 document from several (validated) ones; StrataError when they
    cannot be pooled together (see the module docstring)."""
    if len(docs) < 2:
        raise StrataError("merge: give two or more report directories")
    names = names or [f"report {i + 1}" for i in range(len(docs))]
    _same_alpha(docs, names)
    _same_claims(docs, names)
    calibration = _same_calibration(docs, names)
    models = _models(docs, names)
    records, twins = _records(docs, names)
    alpha = float(docs[0]["run"]["alpha"])
    adj = holm([r["p"] if r.get("p") is not None else np.nan for r in records])
    for r, ph in zip(records, adj):
        r["p_holm"] = _num(ph)
        r["holm_survives"] = (bool(r["p_holm"] is not None and r["p_holm"] <= alpha)
                              if r["verdict"] == "SUPPORTED" else None)
    records.sort(key=lambda r: (r["claim"], r["model"], str(r.get("phase")), str(r.get("family"))))
    runs = [d["run"] for d in docs]
    commits = list(dict.fromkeys(r.get("harness_commit", "unknown") for r in runs))
    doc = {
        "schema": SCHEMA_ID,
        "run": {
            "harness_commit": " + ".join(commits),
            "started": min(r["started"] for r in runs),
            "finished": max(r.get("finished") or r["started"] for r in runs),
            "versions": runs[0].get("versions", {}),
            "machine": " + ".join(dict.fromkeys(r["machine"] for r in runs if r.get("machine")))
                       or None,
            "alpha": alpha,
            "seed": runs[0]["seed"],
            "models": models,
            "calibration": calibration,
            "merged_from": [{"source": n, "schema": d["schema"],
                             "harness_commit": d["run"].get("harness_commit"),
                             "started": d["run"].get("started"), "seed": d["run"].get("seed"),
                             "versions": d["run"].get("versions"),
                             "machine": d["run"].get("machine"),
                             "models": [m["spec"] for m in d["run"]["models"]]}
                            for n, d in zip(names, docs)],
        },
        "records": records,
        "twin_records": twins,
    }
    from .pooled import pooled_records
    doc["pooled"] = pooled_records(doc)
    return doc


def _same_alpha(docs, names):
    alphas = {float(d["run"]["alpha"]) for d in docs}
    if len(alphas) > 1:
        which = ", ".join(f"{d['run']['alpha']:g} in {n}" for n, d in zip(names, docs))
        raise StrataError(f"merge: the runs used different α ({which}); pool runs made with "
                          f"the same --alpha")


def _same_claims(docs, names):
    seen: dict[str, tuple] = {}
    for n, d in zip(names, docs):
        for r in [*d["records"], *(d.get("twin_records") or [])]:
            version = tuple(r.get(k) for k in CLAIM_VERSION)
            first = seen.setdefault(r["claim"], (version, n))
            if first[0] != version:
                field = next(k for k, a, b in zip(CLAIM_VERSION, first[0], version) if a != b)
                raise StrataError(f"merge: claim {r['claim']} differs between {first[1]} and {n} "
                                  f"({field} {first[0][CLAIM_VERSION.index(field)]!r} vs "
                                  f"{version[CLAIM_VERSION.index(field)]!r}); re-run the older "
                                  f"run with the current claim")


def _same_calibration(docs, names):
    cals = [(n, d["run"].get("calibration")) for n, d in zip(names, docs)]
    given = [(n, c) for n, c in cals if c]
    for n, c in given[1:]:
        a = given[0][1]
        if (a.get("sha256"), a.get("tokens")) != (c.get("sha256"), c.get("tokens")):
            raise StrataError(f"merge: the activation claims of {given[0][0]} and {n} ran on "
                              f"different calibration text ({a.get('tokens')} tokens, sha256 "
                              f"{str(a.get('sha256'))[:12]}… vs {c.get('tokens')} tokens, "
                              f"{str(c.get('sha256'))[:12]}…); re-run with the same --calib "
                              f"and --calib-tokens")
    return copy.deepcopy(given[0][1]) if given else None


def _models(docs, names) -> list[dict]:
    out: dict[str, tuple[dict, str]] = {}
    for n, d in zip(names, docs):
        for m in d["run"]["models"]:
            if m["spec"] not in out:
                out[m["spec"]] = (copy.deepcopy(m), n)
                continue
            first, where = out[m["spec"]]
            if first.get("phases") != m.get("phases"):
                raise StrataError(f"merge: model {m['spec']} has two different phase maps "
                                  f"({where}: {_phase_text(first.get('phases'))}; {n}: "
                                  f"{_phase_text(m.get('phases'))}); re-run one with the "
                                  f"other's --phases")
            if first.get("fingerprint") != m.get("fingerprint"):
                raise StrataError(f"merge: model {m['spec']} saw different weights in {where} "
                                  f"and {n} (fingerprint {str(first.get('fingerprint'))[:12]}… vs "
                                  f"{str(m.get('fingerprint'))[:12]}…); they are two models: "
                                  f"give them different specs")
    return [m for m, _ in sorted(out.values(), key=lambda t: (t[0].get("role") == "twin",))]


def _phase_text(phases) -> str:
    return ",".join(f"{k}:{min(v)}-{max(v)}" if v else f"{k}:" for k, v in (phases or {}).items())


def _records(docs, names):
    records, twins, seen = [], [], {}
    for n, d in zip(names, docs):
        for kind, target in (("records", records), ("twin_records", twins)):
            for r in d.get(kind) or []:
                key = (r["claim"], str(r.get("nodeid", "")).split("[")[0], r["model"],
                       r.get("phase"), r.get("family"))
                if key in seen:
                    raise StrataError(
                        f"merge: {r['claim']} on {r['model']} (phase {r.get('phase')}, family "
                        f"{r.get('family')}) is in both {seen[key]} and {n}; merge runs of "
                        f"different models (or different claims), not repeats")
                seen[key] = n
                target.append(copy.deepcopy(r))
    return records, twins


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reports.merge", description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="+", metavar="DIR", help="report directories (or verdicts.json files)")
    ap.add_argument("--out", required=True, metavar="DIR", help="where the merged report goes")
    args = ap.parse_args(argv)
    try:
        docs = []
        for src in args.reports:
            try:
                docs.append(load_document(src))
            except (FileNotFoundError, ValueError) as exc:
                raise StrataError(f"merge: {str(exc).splitlines()[0]}") from None
        doc = merge_documents(docs, [str(Path(s)) for s in args.reports])
    except StrataError as exc:
        print(f"ERROR: strata: {exc}", file=sys.stderr)
        return 2
    from . import terminal
    from .plugin import write_report
    written = write_report(doc, Path(args.out))
    print(terminal.render_matrix(doc, width=100))
    n = len(doc["pooled"])
    print(f"merged {len(docs)} reports: {len(doc['records'])} records of "
          f"{len({r['model'] for r in doc['records']})} models, {n} pooled record"
          f"{'s' if n != 1 else ''}")
    print(f"report: {written[0].parent}/ " + " ".join(p.name for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
