"""The pooled section of a report: one random-effects record per claim × phase × family that
has a decided verdict (not N/A) on at least three independent models (``probes.meta_analysis``
has the estimators and the verdict rule).

Which models are pooled together (``scope``):

* ``"models"``: one entry per *lineage* — a model repository and its checkpoints. Revisions of
  one repository (``org/name@REV``, or ``repo``/``revision`` in ``run.models``) share their
  training run, so they are not independent draws from "models in general": a lineage with
  several specs is represented by its bare spec (the released model) when the run has it, and
  otherwise left out of this pool (named in ``left_out``).
* ``"revisions of org/name"``: the revisions of one repository pooled by themselves (when three
  or more are decided): whether the claim holds along that training run. Checkpoints of one run
  are serially dependent, so τ² there describes the spread along training, not sampling.

Each input's standard error is its record's ``se`` (the standard error its interval is built
on, see ``probes.evidence.Evidence.se``); a record written before that field existed
(``strata.verdicts/1``) gives it back where its interval says how: ``extra.se``, or an interval
of effect ± 1.96·null sd (the null sd). Records with no usable standard error are left out, and
said so. Twins (``random:<model>``, in ``twin_records``) are pooled the same way, beside.

Models with the same weights (equal content fingerprints in ``run.models``: one checkpoint under
two specs) count once. This matters most for twins: a random-init twin depends only on its
model's config, so the twins of models that share a config (fine-tunes of one base, planted
controls of one shape) are one draw, and pooling them would count it k times; the pooled
record then has no ``twin`` and says why in ``twin_reason``.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

from probes.meta_analysis import (MIN_MODELS, POOLED_VERDICTS, levels, pooled_verdict,
                                  random_effects, supported_region_contains)
from probes.stats import Z95

DECIDED = ("SUPPORTED", "REFUTED", "INCONCLUSIVE")
MODELS_SCOPE = "models"
REVISIONS_SCOPE = "revisions of "
_REVISION = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*)@(?P<rev>[^/@\s]+)$")


def lineage(spec: str, info: dict | None = None) -> tuple[str, str | None]:
    """(repository, revision or None) of a model spec: ``run.models``' ``repo``/``revision``
    when the report has them, else ``org/name@REV`` parsed from the spec; any other spec is
    its own lineage. A twin (``random:X``) has X's."""
    info = info or {}
    if info.get("repo"):
        return str(info["repo"]), info.get("revision")
    base = spec[len("random:"):] if spec.startswith("random:") else spec
    m = _REVISION.match(base)
    return (m["repo"], m["rev"]) if m else (base, None)


def standard_error(rec: dict) -> float | None:
    """The record's standard error of its effect (see the module docstring), or None."""
    def ok(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0
    if "se" in rec:  # strata.verdicts/2: written by the plugin from the evidence
        return float(rec["se"]) if ok(rec["se"]) else None
    extra = rec.get("extra") or {}
    if ok(extra.get("se")):
        return float(extra["se"])
    sd, eff, ci = (rec.get("null") or {}).get("sd"), rec.get("effect"), rec.get("ci") or [None, None]
    if ok(sd) and all(isinstance(x, (int, float)) for x in (eff, *ci)):
        if all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12 * sd)
               for a, b in zip(ci, (eff - Z95 * sd, eff + Z95 * sd))):
            return float(sd)
    return None


def _key(rec: dict) -> tuple:
    """What a pooled record pools over: one claim's test function × phase × family (a claim
    may have several test functions; records from outside pytest have no nodeid)."""
    function = str(rec.get("nodeid") or "").split("::")[-1].split("[")[0]
    return rec["claim"], function, rec.get("phase"), rec.get("family")


def _groups(records: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        out[_key(r)].append(r)
    return out


def pooled_records(doc: dict, method: str = "pm") -> list[dict]:
    """Every pooled record of a verdicts document (``pooled`` in strata.verdicts/2), in claim,
    scope, phase, family order."""
    alpha = float(doc["run"]["alpha"])
    info = {m["spec"]: m for m in doc["run"].get("models", [])}
    twins = _groups(doc.get("twin_records") or [])
    out = []
    for key, recs in _groups(doc["records"]).items():
        recs = sorted(recs, key=lambda r: r["model"])
        members = _members(recs, info)
        for scope, chosen, left_out in members:
            pooled = _pool(chosen, left_out, scope, alpha, method, info)
            if pooled is None:
                continue
            twin_recs = [t for t in twins.get(key, ())
                         if t.get("twin_of") in {r["model"] for r in pooled["_used"]}]
            twin = _pool(sorted(twin_recs, key=lambda r: r["model"]), [], scope, alpha, method, info)
            pooled["twin"] = _twin_public(twin) if twin else None
            if twin is None and twin_recs:
                pooled["twin_reason"] = _too_few(twin_recs, info)
            # a likely artifact: the twins' pooled interval lies in the claim's region too
            # (as for records, agreement with random init is expected for equivalence claims)
            pooled["twin_artifact"] = (None if twin is None else
                                       pooled["direction"] != "equivalent"
                                       and _average_in_region(pooled) and _average_in_region(twin))
            out.append(_public(pooled))
    return sorted(out, key=lambda p: (p["claim"], p["scope"] != MODELS_SCOPE, p["scope"],
                                      str(p["phase"]), str(p["family"])))


def _members(recs: list[dict], info: dict) -> list[tuple[str, list[dict], list[dict]]]:
    """[(scope, records to pool, left-out entries)]: the across-models pool and one pool per
    repository with several revisions."""
    by_repo: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        by_repo[lineage(r["model"], info.get(r["model"]))[0]].append(r)
    chosen, left_out, scopes = [], [], []
    for repo, rs in by_repo.items():
        if len(rs) == 1:
            chosen.append(rs[0])
            continue
        revs = [r for r in rs if lineage(r["model"], info.get(r["model"]))[1] is not None]
        bare = [r for r in rs if r not in revs]
        if bare:
            chosen.append(bare[0])
        for r in revs:
            left_out.append({"model": r["model"], "reason": (
                f"a revision of {repo}: checkpoints of one training run are not independent "
                f"draws ({'the released ' + bare[0]['model'] + ' stands for them' if bare else 'no released spec in the run'}"
                f"; pooled by themselves under '{REVISIONS_SCOPE}{repo}')")})
        if len(revs) >= 2:  # in checkpoint order where the report gives one (reports.checkpoints)
            revs.sort(key=lambda r: (((info.get(r["model"]) or {}).get("checkpoint") or {})
                                     .get("index", 0), r["model"]))
            scopes.append((REVISIONS_SCOPE + repo, revs, []))
    return [(MODELS_SCOPE, chosen, left_out)] + scopes


def _fingerprint(info: dict, spec: str) -> str | None:
    return (info.get(spec) or {}).get("fingerprint") or None


def _too_few(twin_recs: list[dict], info: dict) -> str:
    distinct = {_fingerprint(info, t["model"]) or t["model"] for t in twin_recs
                if t["verdict"] in DECIDED}
    return (f"{len(distinct)} distinct random-init twin(s) decided, fewer than {MIN_MODELS} "
            f"(a twin depends only on its model's config, so models of one config share one)")


def _pool(recs: list[dict], left_out: list[dict], scope: str, alpha: float,
          method: str, info: dict) -> dict | None:
    """One pooled record (with the private ``_used`` list), or None below three inputs.
    Records of models with the same weights (content fingerprint: one checkpoint under two
    specs, or the random twins of models that share a config) count once."""
    inputs, used, left = [], [], list(left_out)
    seen: dict[str, str] = {}
    for r in recs:
        if r["verdict"] not in DECIDED:
            left.append({"model": r["model"], "reason": f"{r['verdict']}: {r.get('reason') or ''}".strip()})
            continue
        fp = _fingerprint(info, r["model"])
        if fp in seen:
            left.append({"model": r["model"], "reason": f"the same weights as {seen[fp]} (content "
                                                        f"fingerprint): counted once"})
            continue
        se = standard_error(r)
        if se is None or not isinstance(r.get("effect"), (int, float)):
            left.append({"model": r["model"], "reason": "no standard error in the record "
                         "(a report from before strata.verdicts/2 whose interval is not "
                         "effect ± 1.96·null sd: re-run the model to pool it)"})
            continue
        inputs.append({"model": r["model"], "effect": float(r["effect"]), "se": se,
                       "ci": r.get("ci"), "verdict": r["verdict"]})
        used.append(r)
        if fp is not None:
            seen[fp] = r["model"]
    if len(inputs) < MIN_MODELS:
        return None
    first = used[0]
    direction, m = first.get("direction") or "greater", float(first["min_effect"])
    ci_alpha, pi_alpha = levels(direction, alpha)
    re_ = random_effects([i["effect"] for i in inputs], [i["se"] for i in inputs],
                         alpha=pi_alpha, ci_alpha=ci_alpha, method=method)
    verdict, reason = pooled_verdict(re_, direction, m, alpha)
    body = re_.to_json()
    body.pop("k")
    return {"claim": first["claim"], "statement": first.get("statement", ""),
            "statistic": first.get("statistic", ""), "direction": direction, "min_effect": m,
            "phase": first.get("phase"), "family": first.get("family"), "scope": scope,
            "k": len(inputs), **body, "verdict": verdict, "reason": reason,
            "inputs": inputs, "left_out": left, "twin": None, "twin_artifact": None,
            "_used": used}


def _average_in_region(p: dict) -> bool:
    return supported_region_contains(*p["ci"], p["direction"], p["min_effect"])


def _public(p: dict) -> dict:
    return {k: v for k, v in p.items() if not k.startswith("_")}


TWIN_DROP = ("claim", "statement", "statistic", "direction", "min_effect", "phase", "family",
             "scope", "twin", "twin_artifact")


def _twin_public(p: dict) -> dict:
    """A pooled twin record, beside its model's: the numbers, verdict and inputs only."""
    return {k: v for k, v in _public(p).items() if k not in TWIN_DROP}


def summary_counts(pooled: list[dict]) -> dict:
    out = {v: 0 for v in POOLED_VERDICTS}
    for p in pooled:
        out[p["verdict"]] += 1
    return out
