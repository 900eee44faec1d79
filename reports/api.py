"""Reading reports from Python (notebooks, CI): a report as a pandas DataFrame, and the
verdicts that changed between two runs or between two models of one run.

    >>> from reports.api import load_report, compare_reports
    >>> df = load_report("reports/out")                      # one row per record
    >>> df.groupby(["claim", "model"]).verdict.value_counts()
    >>> compare_reports("runs/old", "reports/out")           # same model, two runs
    >>> compare_reports("reports/out", models=("smollm2-135m", "Qwen/Qwen3-4B"))
    >>> pooled_frame("reports/out")                          # pooled over the models

Reports of schema ``strata.verdicts/1`` and ``/2`` are read alike (a /1 report has no pooled
records: ``pooled_frame`` is empty for it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import pandas as pd

from .schema import validate
from .summary import twin_artifact as twin_artifact_of

__all__ = ["load_document", "load_report", "records_frame", "profiles_frame",
           "pooled_frame", "compare_reports", "validate"]

Source = Union[str, Path, dict, pd.DataFrame]

COLUMNS = ["claim", "model", "phase", "family", "verdict", "observed", "null_kind", "null_mean",
           "null_sd", "effect", "min_effect", "ci_lo", "ci_hi", "p", "p_holm", "holm_survives",
           "direction", "statistic", "statement", "reason", "twin_observed", "twin_effect",
           "twin_p", "twin_verdict", "twin_artifact", "has_profile", "has_matrix", "extra"]
KEY = ["claim", "phase", "family"]


def load_document(source: str | Path | dict) -> dict:
    """The validated verdicts document from a report directory, a ``verdicts.json`` path or an
    already-loaded dict. Raises ValueError (with the problems) if it breaks SPEC §7."""
    if isinstance(source, dict):
        return validate(source)
    path = Path(source)
    if path.is_dir():
        path = path / "verdicts.json"
    if not path.is_file():
        raise FileNotFoundError(f"no verdict report at {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    try:
        return validate(doc)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def records_frame(doc: dict) -> pd.DataFrame:
    """One row per record, the nested null / ci / twin fields flattened into columns.
    ``twin_artifact`` is True where the record is SUPPORTED and so is its random-init twin
    (the report's ⚠), None where no twin was evaluated."""
    rows = []
    for r in doc["records"]:
        null = r.get("null") or {}
        ci = r.get("ci") or [None, None]
        twin = r.get("twin") or {}
        twin_artifact = twin_artifact_of(r) if twin else None
        rows.append({
            "claim": r["claim"], "model": r["model"], "phase": r.get("phase"),
            "family": r.get("family"), "verdict": r["verdict"], "observed": r.get("observed"),
            "null_kind": null.get("kind"), "null_mean": null.get("mean"), "null_sd": null.get("sd"),
            "effect": r.get("effect"), "min_effect": r.get("min_effect"),
            "ci_lo": ci[0], "ci_hi": ci[1], "p": r.get("p"), "p_holm": r.get("p_holm"),
            "holm_survives": r.get("holm_survives"), "direction": r.get("direction"),
            "statistic": r.get("statistic"), "statement": r.get("statement"),
            "reason": r.get("reason"),
            "twin_observed": twin.get("observed"), "twin_effect": twin.get("effect"),
            "twin_p": twin.get("p"), "twin_verdict": twin.get("verdict"),
            "twin_artifact": twin_artifact,
            "has_profile": r.get("profile") is not None, "has_matrix": r.get("matrix") is not None,
            "extra": r.get("extra") or {},
        })
    df = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("observed", "null_mean", "null_sd", "effect", "min_effect", "ci_lo", "ci_hi", "p",
                "p_holm", "twin_observed", "twin_effect", "twin_p"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df.attrs["run"] = doc.get("run", {})
    return df


def load_report(source: str | Path | dict) -> pd.DataFrame:
    """A report (directory, ``verdicts.json`` path or dict) as a DataFrame, one row per record
    (columns ``COLUMNS``); the run metadata is in ``df.attrs["run"]``."""
    return records_frame(load_document(source))


def profiles_frame(source: str | Path | dict) -> pd.DataFrame:
    """Every record's profile in long form: claim, model, phase, family, layer, value, null."""
    doc = load_document(source)
    rows = []
    for r in doc["records"]:
        prof = r.get("profile")
        if not prof:
            continue
        nulls = prof.get("null") or [None] * len(prof["layers"])
        for layer, value, null in zip(prof["layers"], prof["values"], nulls):
            rows.append({"claim": r["claim"], "model": r["model"], "phase": r.get("phase"),
                         "family": r.get("family"), "layer": layer, "value": value, "null": null,
                         "label": prof.get("label", "")})
    df = pd.DataFrame(rows, columns=["claim", "model", "phase", "family", "layer", "value", "null", "label"])
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype(float)
    df["null"] = pd.to_numeric(df["null"], errors="coerce").astype(float)
    return df


POOLED_COLUMNS = ["claim", "scope", "phase", "family", "verdict", "k", "effect", "se", "ci_lo",
                  "ci_hi", "tau2", "i2", "q", "q_p", "pi_lo", "pi_hi", "direction", "min_effect",
                  "models", "left_out", "twin_verdict", "twin_effect", "twin_tau2", "twin_artifact",
                  "method"]


def pooled_frame(source: str | Path | dict) -> pd.DataFrame:
    """One row per pooled record (``pooled`` of a strata.verdicts/2 report): the random-effects
    estimate over the models, its interval, τ², I², Cochran's Q and p, the prediction interval,
    the pooled verdict, the pooled models (``models``: a list) and the twins' pooled verdict.
    Each record's per-model inputs stay in the document (``doc["pooled"][i]["inputs"]``)."""
    doc = load_document(source)
    rows = []
    for p in doc.get("pooled") or []:
        twin = p.get("twin") or {}
        rows.append({
            "claim": p["claim"], "scope": p.get("scope"), "phase": p.get("phase"),
            "family": p.get("family"), "verdict": p["verdict"], "k": p.get("k"),
            "effect": p["effect"], "se": p.get("se"), "ci_lo": p["ci"][0], "ci_hi": p["ci"][1],
            "tau2": p["tau2"], "i2": p["i2"], "q": p.get("q"), "q_p": p.get("q_p"),
            "pi_lo": p["prediction_interval"][0], "pi_hi": p["prediction_interval"][1],
            "direction": p.get("direction"), "min_effect": p.get("min_effect"),
            "models": [i["model"] for i in p["inputs"]],
            "left_out": [x["model"] for x in p.get("left_out") or []],
            "twin_verdict": twin.get("verdict"), "twin_effect": twin.get("effect"),
            "twin_tau2": twin.get("tau2"), "twin_artifact": p.get("twin_artifact"),
            "method": p["method"]})
    return pd.DataFrame(rows, columns=POOLED_COLUMNS)


def _frame(source: Source) -> pd.DataFrame:
    return source.copy() if isinstance(source, pd.DataFrame) else load_report(source)


def compare_reports(a: Source, b: Source | None = None, *, models: tuple[str, str] | None = None,
                    changed_only: bool = True) -> pd.DataFrame:
    """Verdicts that differ between two reports, or between two models.

    - ``compare_reports(a, b)``: the same (model, claim, phase, family) in two runs.
    - ``compare_reports(a, models=(m1, m2))``: model m1 against model m2 within report ``a``
      (without ``models``, the first two models of ``a``).
    - ``compare_reports(a, b, models=(m1, m2))``: m1 in ``a`` against m2 in ``b``.

    A record present on one side only shows verdict ``"absent"`` on the other. Returns columns
    claim, phase, family, model_a, model_b, verdict_a, verdict_b, effect_a, effect_b, p_a, p_b,
    change ("SUPPORTED → REFUTED"), same_weights (whether the two sides' models had the same
    content fingerprint; None where a report does not say); all matched rows when
    ``changed_only`` is False. When one spec saw different weights in the two reports (a
    checkpoint replaced, a fine-tune saved over its base), a warning says so: the changes then
    come from the weights, not from the harness.
    """
    fa = _frame(a)
    fb = fa if b is None else _frame(b)
    fp_a, fp_b = _fingerprints(fa), _fingerprints(fb)
    if b is None and models is None:
        names = list(dict.fromkeys(fa["model"]))
        if len(names) < 2:
            raise ValueError(f"compare_reports: one report with {len(names)} model(s); give a "
                             f"second report or models=(a, b)")
        models = (names[0], names[1])
    if models is not None:
        ma, mb = models
        for name, frame, side in ((ma, fa, "a"), (mb, fb, "b")):
            if not (frame["model"] == name).any():
                have = ", ".join(dict.fromkeys(frame["model"]))
                raise ValueError(f"compare_reports: model {name!r} has no records in report {side} "
                                 f"(it has: {have})")
        fa = fa[fa["model"] == ma]
        fb = fb[fb["model"] == mb]
        key = KEY
    else:
        key = ["model"] + KEY
    cols = key + (["verdict", "effect", "p"] if "model" in key else ["model", "verdict", "effect", "p"])
    left = _keyed(fa[cols].copy(), key)
    right = _keyed(fb[cols].copy(), key)
    merged = left.merge(right, on=key, how="outer", suffixes=("_a", "_b"), sort=False)
    if "model" in key:
        merged["model_a"] = merged["model"]
        merged["model_b"] = merged["model"]
    for side in ("a", "b"):
        merged[f"verdict_{side}"] = merged[f"verdict_{side}"].fillna("absent")
    if models is not None:
        merged["model_a"] = merged["model_a"].fillna(models[0])
        merged["model_b"] = merged["model_b"].fillna(models[1])
    merged["change"] = merged["verdict_a"] + " → " + merged["verdict_b"]
    merged["same_weights"] = [
        (fp_a[ma] == fp_b[mb]) if ma in fp_a and mb in fp_b else None
        for ma, mb in zip(merged["model_a"], merged["model_b"])]
    _warn_changed_weights(fp_a, fp_b, set(zip(merged["model_a"], merged["model_b"])))
    if changed_only:
        merged = merged[merged["verdict_a"] != merged["verdict_b"]]
    for k in ("phase", "family"):
        merged[k] = pd.Series([None if v == "" else v for v in merged[k]], index=merged.index,
                              dtype=object)
    out = merged[["claim", "phase", "family", "model_a", "model_b", "verdict_a", "verdict_b",
                  "effect_a", "effect_b", "p_a", "p_b", "change", "same_weights"]]
    return out.sort_values(["claim", "phase", "family"], na_position="first",
                           key=lambda s: s.astype(str)).reset_index(drop=True)


def _fingerprints(frame: pd.DataFrame) -> dict[str, str]:
    """spec → content fingerprint, from a report frame's run metadata."""
    models = (frame.attrs.get("run") or {}).get("models") or []
    return {m["spec"]: m["fingerprint"] for m in models if m.get("fingerprint")}


def _warn_changed_weights(fp_a: dict, fp_b: dict, pairs: set) -> None:
    import warnings
    for ma, mb in sorted(pairs):
        if ma == mb and ma in fp_a and mb in fp_b and fp_a[ma] != fp_b[mb]:
            warnings.warn(f"compare_reports: {ma} saw different weights in the two reports "
                          f"(fingerprint {fp_a[ma][:12]}… vs {fp_b[mb][:12]}…): verdict changes "
                          f"may come from the weights, not the harness", UserWarning, stacklevel=3)


def _keyed(frame: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """Missing phase/family as '' so they match in the merge; one row per key."""
    for k in key:
        frame[k] = frame[k].fillna("").astype(str)
    dup = frame.duplicated(key, keep=False)
    if dup.any():
        first = frame[dup].iloc[0]
        raise ValueError("compare_reports: several records share " +
                         ", ".join(f"{k}={first[k]!r}" for k in key))
    return frame
