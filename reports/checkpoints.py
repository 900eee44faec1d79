"""Several revisions of one hub model in one run: its training checkpoints, in checkpoint order.

A *series* is the revisions of one repository given as models (``--model org/name@step1000
--model org/name@step2000``; ``random:org/name@REV`` twins given as models form their own
series): at least two run.models entries with the same ``repo`` and the same spec before ``@``.

The order: the number after ``step`` in each revision's name (Pythia's ``step1000``, OLMo's
``stage1-step140000-tokens588B``) when every revision of the series has one; otherwise the order
in which they were given on the command line. The plugin writes it into the report
(:func:`annotate`: run.models[].checkpoint = {series, index, of, step, order_by}); the readers
(:func:`in_checkpoint_order`, :func:`trajectories`) only read it back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

STEP = re.compile(r"step[-_]?(\d+)", re.IGNORECASE)
BY_STEP = "the step number in the revision name"
BY_COMMAND_LINE = "the order given on the command line"


def step_of(revision: str | None) -> int | None:
    """The training step a revision's name states (``step1000`` → 1000), else None."""
    m = STEP.search(revision or "")
    return int(m[1]) if m else None


def series_name(entry: dict) -> str | None:
    """The series a run.models entry belongs to: its spec without ``@REV`` (None when it names
    no revision)."""
    rev = entry.get("revision")
    spec = str(entry.get("spec", ""))
    if not entry.get("repo") or not rev or not spec.endswith("@" + rev):
        return None
    return spec[: -len(rev) - 1]


def annotate(models: list[dict], command_line: list[str]) -> None:
    """Add ``checkpoint`` to every run.models entry (role ``model``) that is one of two or more
    revisions of one series: its place in checkpoint order (see the module docstring)."""
    given = {spec: i for i, spec in enumerate(command_line)}
    groups: dict[str, list[dict]] = {}
    for m in models:
        name = series_name(m)
        if name is not None and m.get("role", "model") == "model":
            groups.setdefault(name, []).append(m)
    for name, members in groups.items():
        if len(members) < 2:
            continue
        steps = [step_of(m["revision"]) for m in members]
        by_step = all(s is not None for s in steps)
        if by_step:
            ordered = sorted(members, key=lambda m: (step_of(m["revision"]), m["spec"]))
        else:
            ordered = sorted(members, key=lambda m: (given.get(m["spec"], len(given)), m["spec"]))
        for k, m in enumerate(ordered):
            m["checkpoint"] = {"series": name, "index": k, "of": len(ordered),
                               "step": step_of(m["revision"]),
                               "order_by": BY_STEP if by_step else BY_COMMAND_LINE}


def in_checkpoint_order(specs: list[str], run_models: list[dict]) -> list[str]:
    """``specs`` with each series' revisions together, in checkpoint order, where the first of
    them stood; every other spec keeps its place."""
    info = {m["spec"]: m["checkpoint"] for m in run_models if m.get("checkpoint")}
    out, placed = [], set()
    for spec in specs:
        if spec in placed:
            continue
        c = info.get(spec)
        if c is None:
            out.append(spec)
            continue
        members = sorted((s for s in specs if info.get(s, {}).get("series") == c["series"]),
                         key=lambda s: info[s]["index"])
        out += members
        placed.update(members)
    return out


@dataclass
class Series:
    """One series in a report: its revisions in order and how the order was found."""

    name: str
    specs: list[str]
    labels: list[str]          # the revision names, in order
    order_by: str
    trajectories: dict = field(default_factory=dict)   # record key → [record or None per spec]


def record_key(rec: dict) -> tuple:
    """What identifies one record across checkpoints: its claim, test function, phase and
    family."""
    return (rec["claim"], str(rec.get("nodeid", "")).split("[")[0], rec.get("phase"),
            rec.get("family"))


def series(doc: dict) -> list[Series]:
    """The report's series (revisions with records), each with every record's value at each
    checkpoint (``trajectories``: record key → records in checkpoint order, None where a
    checkpoint has no such record)."""
    models = [m for m in doc.get("run", {}).get("models", []) if m.get("checkpoint")]
    with_records = {r["model"] for r in doc.get("records", [])}
    groups: dict[str, list[dict]] = {}
    for m in models:
        if m["spec"] in with_records:
            groups.setdefault(m["checkpoint"]["series"], []).append(m)
    out = []
    for name, members in groups.items():
        if len(members) < 2:
            continue
        members.sort(key=lambda m: m["checkpoint"]["index"])
        specs = [m["spec"] for m in members]
        s = Series(name, specs, [m["revision"] for m in members],
                   members[0]["checkpoint"]["order_by"])
        position = {spec: i for i, spec in enumerate(specs)}
        for rec in doc["records"]:
            if rec["model"] in position:
                row = s.trajectories.setdefault(record_key(rec), [None] * len(specs))
                row[position[rec["model"]]] = rec
        out.append(s)
    return out
