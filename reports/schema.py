"""The ``verdicts.json`` contract (SPEC §7) and a validator for it.

Versions: ``strata.verdicts/2`` (written now) adds the ``pooled`` list (random-effects records
over the models of a run, ``reports/pooled.py``) and each record's ``se``; ``strata.verdicts/1``
documents (no ``pooled``) are still read and validated. A pooled record's verdict is GENERAL
(its prediction interval lies in the claim's supported region), ABSENT (its pooled interval
lies outside it), else HETEROGENEOUS (the models differ: Cochran's Q p ≤ α) or INCONCLUSIVE:
``probes/meta_analysis.py`` and the README ("Pooled over models").

``SCHEMA`` is a JSON Schema (a plain subset: ``type``, ``properties``, ``required``,
``additionalProperties``, ``items``, ``enum``, ``const``, ``minItems``, ``maxItems``), so any
JSON Schema tool can check a report against it. :func:`validate` implements exactly that subset
(no dependency on the ``jsonschema`` package) and adds the checks a schema cannot express:
a decided record (anything but N/A) carries finite numbers, every record's model is described
in ``run.models``, p-values lie in [0, 1]. Fields beyond the contract are allowed everywhere
("add fields freely"); the names below must stay.
"""

from __future__ import annotations

import math
from typing import Any

SCHEMA_ID = "strata.verdicts/2"
SCHEMA_IDS = ("strata.verdicts/1", "strata.verdicts/2")  # readers accept both; writers write /2
VERDICTS = ("SUPPORTED", "REFUTED", "INCONCLUSIVE", "N/A", "ERROR")  # ERROR: the probe raised
POOLED_VERDICTS = ("GENERAL", "HETEROGENEOUS", "ABSENT", "INCONCLUSIVE")
DIRECTIONS = ("greater", "less", "two-sided", "equivalent")

_NUM = {"type": ["number", "null"]}
_STR_OR_NULL = {"type": ["string", "null"]}

PROFILE = {
    "type": ["object", "null"],
    "required": ["layers", "values", "null"],
    "properties": {
        "layers": {"type": "array", "items": {"type": "integer"}},
        "values": {"type": "array", "items": _NUM},
        "null": {"type": ["array", "null"], "items": _NUM},
        "label": {"type": "string"},
    },
}

MATRIX = {
    "type": ["object", "null"],
    "required": ["layers", "values"],
    "properties": {
        "layers": {"type": "array", "items": {"type": "integer"}},
        "values": {"type": "array", "items": {"type": "array", "items": _NUM}},
        "label": {"type": "string"},
    },
}

TWIN = {
    "type": ["object", "null"],
    "required": ["observed", "effect", "p", "verdict"],
    "properties": {
        "observed": _NUM, "effect": _NUM, "p": _NUM,
        "verdict": {"enum": list(VERDICTS)},
        "reason": {"type": "string"},
    },
}

RECORD = {
    "type": "object",
    "required": ["claim", "statement", "model", "phase", "family", "statistic", "observed",
                 "null", "effect", "min_effect", "ci", "p", "p_holm", "verdict", "reason",
                 "twin", "profile"],
    "properties": {
        "claim": {"type": "string"},
        "statement": {"type": "string"},
        "model": {"type": "string"},
        "phase": _STR_OR_NULL,
        "family": _STR_OR_NULL,
        "statistic": {"type": "string"},
        "observed": _NUM,
        "null": {
            "type": "object",
            "required": ["kind", "mean", "sd"],
            "properties": {"kind": {"type": "string"}, "mean": _NUM, "sd": _NUM},
        },
        "effect": _NUM,
        "min_effect": {"type": "number"},
        "ci": {"type": "array", "items": _NUM, "minItems": 2, "maxItems": 2},
        "p": _NUM,
        "p_holm": _NUM,
        "verdict": {"enum": list(VERDICTS)},
        "reason": {"type": "string"},
        "twin": TWIN,
        "profile": PROFILE,
        # additions beyond SPEC §7 (optional, type-checked when present)
        "direction": {"enum": list(DIRECTIONS)},
        "holm_survives": {"type": ["boolean", "null"]},
        "twin_artifact": {"type": ["boolean", "null"]},
        "matrix": MATRIX,
        "extra": {"type": ["object", "null"]},
        "se": _NUM,  # strata.verdicts/2: the standard error the interval is built on
    },
}

_INTERVAL = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}

POOLED_INPUT = {
    "type": "object",
    "required": ["model", "effect", "se"],
    "properties": {"model": {"type": "string"}, "effect": {"type": "number"},
                   "se": {"type": "number"}, "verdict": {"enum": list(VERDICTS)}},
}

_POOLED_NUMBERS = {
    "k": {"type": "integer"},
    "method": {"type": "string"},
    "effect": {"type": "number"},
    "se": {"type": "number"},
    "ci": _INTERVAL,
    "ci_level": {"type": "number"},
    "tau2": {"type": "number"},
    "tau": {"type": "number"},
    "i2": {"type": "number"},
    "q": {"type": "number"},
    "q_p": {"type": "number"},
    "prediction_interval": _INTERVAL,
    "pi_level": {"type": "number"},
    "fixed_effect": {"type": "number"},
    "verdict": {"enum": list(POOLED_VERDICTS)},
    "reason": {"type": "string"},
    "inputs": {"type": "array", "items": POOLED_INPUT, "minItems": 3},
    "left_out": {"type": "array", "items": {
        "type": "object", "required": ["model", "reason"],
        "properties": {"model": {"type": "string"}, "reason": {"type": "string"}}}},
}
_POOLED_REQUIRED = ["method", "effect", "ci", "tau2", "i2", "prediction_interval", "verdict",
                    "inputs"]

POOLED = {
    "type": "object",
    "required": ["claim", "phase", "family", "scope", *_POOLED_REQUIRED, "twin"],
    "properties": {
        "claim": {"type": "string"},
        "statement": {"type": "string"},
        "phase": _STR_OR_NULL,
        "family": _STR_OR_NULL,
        "scope": {"type": "string"},
        "direction": {"enum": list(DIRECTIONS)},
        "min_effect": {"type": "number"},
        **_POOLED_NUMBERS,
        "twin": {"type": ["object", "null"], "required": _POOLED_REQUIRED,
                 "properties": _POOLED_NUMBERS},
        "twin_artifact": {"type": ["boolean", "null"]},
        "twin_reason": {"type": "string"},
    },
}

MODEL = {
    "type": "object",
    "required": ["spec", "architecture", "num_layers", "fingerprint", "phases"],
    "properties": {
        "spec": {"type": "string"},
        "architecture": {"type": "string"},
        "num_layers": {"type": "integer"},
        "fingerprint": {"type": "string"},
        "fingerprint_method": {"type": ["object", "null"]},
        # what the activation probes fed it: tokens fed and scored, the BOS windows start with
        "calibration": {"type": "object",
                        "properties": {"tokens": {"type": ["integer", "null"]},
                                       "scored_tokens": {"type": ["integer", "null"]},
                                       "bos": {"type": ["integer", "null"]}}},
        "phases": {"type": "object",
                   "additionalProperties": {"type": "array", "items": {"type": "integer"}}},
    },
}

SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "title": "Strata verdict report",
    "type": "object",
    "required": ["schema", "run", "records"],
    "properties": {
        "schema": {"enum": list(SCHEMA_IDS)},
        "run": {
            "type": "object",
            "required": ["harness_commit", "started", "versions", "alpha", "seed", "models",
                         "calibration"],
            "properties": {
                "harness_commit": {"type": "string"},
                "started": {"type": "string"},
                "versions": {"type": "object"},
                "machine": _STR_OR_NULL,
                "alpha": {"type": "number"},
                "seed": {"type": "integer"},
                "models": {"type": "array", "items": MODEL},
                "calibration": {
                    "type": ["object", "null"],
                    "required": ["source", "sha256", "tokens"],
                    "properties": {"source": {"type": "string"}, "sha256": _STR_OR_NULL,
                                   "tokens": {"type": ["integer", "null"]}},
                },
            },
        },
        "records": {"type": "array", "items": RECORD},
        "pooled": {"type": "array", "items": POOLED},
    },
}


def schema_errors(value: Any, schema: dict = SCHEMA) -> list[str]:
    """Every violation of ``schema`` by ``value`` (jsonschema), as '$.path: problem' lines."""
    from jsonschema import Draft202012Validator
    out = []
    for err in sorted(Draft202012Validator(schema).iter_errors(value), key=lambda e: list(e.path)):
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.path)
        out.append(f"{path}: {err.message}")
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def semantic_errors(doc: dict) -> list[str]:
    """Checks beyond structure: decided records carry finite numbers, p-values in [0, 1],
    every record's model appears in run.models, profile lists have matching lengths."""
    errors: list[str] = []
    specs = {m.get("spec") for m in doc["run"]["models"]}
    if doc["schema"] != SCHEMA_IDS[0] and "pooled" not in doc:
        errors.append(f"$: a {doc['schema']} report needs 'pooled' (an empty list when no claim "
                      f"has three models)")
    for i, p in enumerate(doc.get("pooled") or []):
        where = f"$.pooled[{i}] ({p.get('claim')} / {p.get('scope')} / {p.get('phase')} / {p.get('family')})"
        for side, body in (("", p), ("twin.", p.get("twin"))):
            if not body:
                continue
            for name in ("effect", "tau2", "i2"):
                if not _finite(body[name]):
                    errors.append(f"{where}: {side}{name} must be finite, got {body[name]!r}")
            lo, hi = body["ci"]
            plo, phi = body["prediction_interval"]
            if not (lo <= body["effect"] <= hi and plo <= lo and hi <= phi):
                errors.append(f"{where}: {side}intervals must nest: prediction "
                              f"[{plo}, {phi}] ⊇ pooled [{lo}, {hi}] ∋ effect {body['effect']}")
            if body["tau2"] < 0 or not 0 <= body["i2"] <= 1:
                errors.append(f"{where}: {side}tau2 ≥ 0 and i2 in [0, 1] required")
            for inp in body["inputs"]:
                if inp["model"] not in specs:
                    errors.append(f"{where}: input model {inp['model']!r} is not described in run.models")
    for i, rec in enumerate(doc["records"]):
        where = f"$.records[{i}] ({rec.get('claim')} / {rec.get('model')} / {rec.get('phase')} / {rec.get('family')})"
        if rec["model"] not in specs:
            errors.append(f"{where}: model {rec['model']!r} is not described in run.models")
        if rec["verdict"] != "N/A":
            for name, val in (("observed", rec["observed"]), ("effect", rec["effect"]),
                              ("p", rec["p"]), ("ci[0]", rec["ci"][0]), ("ci[1]", rec["ci"][1])):
                if not _finite(val):
                    errors.append(f"{where}: verdict {rec['verdict']} needs a finite {name}, got {val!r}")
        for name in ("p", "p_holm"):
            val = rec[name]
            if _finite(val) and not 0.0 <= val <= 1.0:
                errors.append(f"{where}: {name}={val!r} is not a probability")
        prof = rec["profile"]
        if prof is not None:
            n = len(prof["layers"])
            if len(prof["values"]) != n or (prof["null"] is not None and len(prof["null"]) != n):
                errors.append(f"{where}: profile layers/values/null lengths differ")
        mat = rec.get("matrix")
        if mat is not None:
            n = len(mat["layers"])
            if len(mat["values"]) != n or any(len(row) != n for row in mat["values"]):
                errors.append(f"{where}: matrix is not {n}×{n} (its layers list has {n} entries)")
    return errors


def validate(doc: Any) -> dict:
    """Check a verdicts document against SPEC §7; return it, or raise ValueError listing the
    problems (first ten), each with its JSON path."""
    errors = schema_errors(doc, SCHEMA)
    if not errors:
        errors = semantic_errors(doc)
    if errors:
        shown = errors[:10]
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        name = doc.get("schema") if isinstance(doc, dict) and doc.get("schema") in SCHEMA_IDS else SCHEMA_ID
        raise ValueError(f"not a valid {name} report ({len(errors)} problem"
                         f"{'s' if len(errors) != 1 else ''}):\n  " + "\n  ".join(shown) + more)
    return doc
