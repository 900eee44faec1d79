"""What every report format shares: claim and model order, record order, the claims × models
cell summary, flags and number formatting. Pure functions over a verdicts document (SPEC §7).

A matrix cell summarises all records of one claim on one model (its phases × families):
the count of each verdict, how many SUPPORTED records do not survive Holm, and how many are
SUPPORTED on the model and on its random-init twin (likely artifacts). Its ``state`` is the single verdict
when all applicable (non-N/A) records agree, ``MIXED`` when they do not, ``N/A`` when none
is applicable. A record whose probe raised is ``ERROR`` (its reason is the one-line cause):
it counts as applicable, so a claim that errored never looks like a gap or a clean N/A.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from .checkpoints import in_checkpoint_order

VERDICTS = ("SUPPORTED", "REFUTED", "INCONCLUSIVE", "N/A", "ERROR")  # ERROR: the probe raised
DECIDING = ("SUPPORTED", "REFUTED", "INCONCLUSIVE", "ERROR")  # what a cell's state is made of
ABBREV = {"SUPPORTED": "S", "REFUTED": "R", "INCONCLUSIVE": "I", "N/A": "N", "ERROR": "E",
          "MIXED": "M"}
STATES = ("SUPPORTED", "REFUTED", "INCONCLUSIVE", "MIXED", "N/A", "ERROR")
FAMILY_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                "input_ln", "post_attn_ln", "q_norm", "k_norm", "pre_ff_ln", "post_ff_ln")

# flags shown beside verdicts in every format
TWIN_FLAG = "⚠"      # SUPPORTED, and SUPPORTED on the random-init twin too: likely an artifact
HOLM_FLAG = "†"      # SUPPORTED at α but not after Holm adjustment over the session


@dataclass
class ClaimInfo:
    id: str
    statement: str
    statistic: str
    null: str
    direction: str | None
    min_effect: float | None


@dataclass
class Cell:
    claim: str
    model: str
    counts: dict = field(default_factory=lambda: {v: 0 for v in VERDICTS})
    not_holm: int = 0        # SUPPORTED records whose support does not survive Holm
    twin_artifacts: int = 0  # records SUPPORTED on the random-init twin
    twin_checked: int = 0    # records with a twin verdict

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def applicable(self) -> int:
        return self.total - self.counts["N/A"]

    @property
    def state(self) -> str:
        decided = [v for v in DECIDING if self.counts[v]]
        if not decided:
            return "N/A"
        return decided[0] if len(decided) == 1 else "MIXED"

    def fractions(self) -> dict:
        """Share of each verdict among all records of the cell (N/A included)."""
        n = self.total or 1
        return {v: self.counts[v] / n for v in VERDICTS}


def claims(doc: dict) -> list[ClaimInfo]:
    """Claims in order of first appearance, described by their first record."""
    out: dict[str, ClaimInfo] = {}
    kinds: dict[str, Counter] = {}
    for rec in doc["records"]:
        kind = (rec.get("null") or {}).get("kind") or ""
        if rec["claim"] not in out:
            out[rec["claim"]] = ClaimInfo(
                id=rec["claim"], statement=rec.get("statement", ""),
                statistic=rec.get("statistic", ""), null=kind,
                direction=rec.get("direction"), min_effect=rec.get("min_effect"))
            kinds[rec["claim"]] = Counter()
        if rec.get("verdict") != "N/A" and kind:
            kinds[rec["claim"]][kind] += 1
    for cid, info in out.items():  # the null the decided records name most often
        if kinds[cid]:
            info.null = kinds[cid].most_common(1)[0][0]
    return list(out.values())


def models(doc: dict) -> list[str]:
    """Models that have records, in run.models order (then any others in record order); the
    revisions of one hub model together, in checkpoint order (:mod:`reports.checkpoints`)."""
    with_records = []
    for rec in doc["records"]:
        if rec["model"] not in with_records:
            with_records.append(rec["model"])
    run_models = doc["run"].get("models", [])
    described = [m["spec"] for m in run_models if m["spec"] in with_records]
    return in_checkpoint_order(described + [m for m in with_records if m not in described],
                               run_models)


def model_info(doc: dict, spec: str) -> dict:
    return next((m for m in doc["run"].get("models", []) if m.get("spec") == spec), {})


def model_phases(doc: dict, spec: str) -> dict:
    return model_info(doc, spec).get("phases") or {}


def short_names(specs: list[str], max_len: int = 24, ellipsis: str = "…") -> dict:
    """{spec: column header}: each model by its name, shortened, still telling them apart.

    A hub id loses its organisation (``Qwen/Qwen3-4B`` → ``Qwen3-4B``), a path keeps its last
    part, a revision and the ``random:`` twin prefix stay (they are what tells two columns
    apart). Where two shortened names collide, those keep their full spec. A name still longer
    than ``max_len`` is cut in the middle (its start names the family, its end the size or
    revision). The full specs go in each format's legend.
    """
    def short(spec: str) -> str:
        prefix = "random:" if spec.startswith("random:") else ""
        base = spec[len(prefix):]
        rev = ""
        if "@" in base and not base.startswith(("/", ".", "~")):
            base, rev = base.rsplit("@", 1)
            rev = "@" + rev
        if base.startswith(("/", "./", "../", "~")):
            base = base.rstrip("/").rsplit("/", 1)[-1]
        elif ":" not in base:  # hub id org/name (synthetic:… specs keep their form)
            base = base.rsplit("/", 1)[-1]
        return prefix + base + rev

    names = {s: short(s) for s in specs}
    seen = Counter(names.values())
    names = {s: (n if seen[n] == 1 else s) for s, n in names.items()}

    def cut(text: str) -> str:
        if len(text) <= max_len:
            return text
        keep = max_len - len(ellipsis)
        head = (keep + 1) // 2
        return text[:head] + ellipsis + text[len(text) - (keep - head):]

    out = {s: cut(n) for s, n in names.items()}
    if len(set(out.values())) < len(out):  # cutting made two equal: number them instead
        out = {s: (cut(n) if list(out.values()).count(out[s]) == 1 else f"M{i + 1}")
               for i, (s, n) in enumerate(names.items())}
    return out


def cell(doc: dict, claim: str, model: str) -> Cell:
    c = Cell(claim, model)
    for rec in doc["records"]:
        if rec["claim"] == claim and rec["model"] == model:
            add_to_cell(c, rec)
    return c


def add_to_cell(c: Cell, rec: dict) -> None:
    c.counts[rec["verdict"]] += 1
    if not_surviving_holm(rec):
        c.not_holm += 1
    if rec.get("twin"):
        c.twin_checked += 1
    if twin_artifact(rec):
        c.twin_artifacts += 1


def cells(doc: dict) -> dict:
    """{(claim, model): Cell} for every claim × model (empty cells included)."""
    out = {(ci.id, m): Cell(ci.id, m) for ci in claims(doc) for m in models(doc)}
    for rec in doc["records"]:
        add_to_cell(out[(rec["claim"], rec["model"])], rec)
    return out


def not_surviving_holm(rec: dict) -> bool:
    return rec.get("verdict") == "SUPPORTED" and rec.get("holm_survives") is False


def twin_artifact(rec: dict) -> bool:
    """Support the random-init twin shows too: the record is SUPPORTED on the model and
    SUPPORTED on its twin (``twin_artifact`` as written by the plugin, else the twin's verdict).
    A twin SUPPORTED where the model is not is shown in the twin column, not flagged."""
    if rec.get("verdict") != "SUPPORTED":
        return False
    if rec.get("twin_artifact") is not None:
        return bool(rec["twin_artifact"])
    twin = rec.get("twin") or {}
    return twin.get("verdict") == "SUPPORTED"


def record_sort_key(doc: dict):
    """Sort records by the model's phase order (claims without phases first), then family."""
    def key(rec):
        order = list(model_phases(doc, rec["model"]))
        ph, fam = rec.get("phase"), rec.get("family")
        pi = (-1 if ph is None else order.index(ph) if ph in order else len(order))
        fi = (-1 if fam is None else FAMILY_ORDER.index(fam) if fam in FAMILY_ORDER else len(FAMILY_ORDER))
        return (pi, str(ph), fi, str(fam))
    return key


def records_for(doc: dict, claim: str, model: str) -> list[dict]:
    recs = [r for r in doc["records"] if r["claim"] == claim and r["model"] == model]
    return sorted(recs, key=record_sort_key(doc))


def totals(doc: dict) -> dict:
    out = {v: 0 for v in VERDICTS}
    for rec in doc["records"]:
        out[rec["verdict"]] += 1
    return out


def verdict_with_flags(rec: dict) -> str:
    text = rec["verdict"]
    if not_surviving_holm(rec):
        text += HOLM_FLAG
    if twin_artifact(rec):
        text += " " + TWIN_FLAG
    return text


# -- numbers -------------------------------------------------------------------------------
def calibration_text(model: dict) -> str:
    """What the activation probes fed a model, in words: tokens fed and scored, and the BOS each
    window started with (``run.models[].calibration``; "—" when no activation claim ran)."""
    cal = model.get("calibration") or {}
    if not cal:
        return "—"
    text = f"{cal.get('tokens'):,} tokens, {cal.get('scored_tokens'):,} scored"
    bos = cal.get("bos")
    return text + (f", windows start with BOS {bos}" if bos is not None else ", no BOS")


def fingerprint_how(model: dict) -> str:
    """How a model's content fingerprint was obtained, in words (empty if the report is older)."""
    m = model.get("fingerprint_method") or {}
    if not m:
        return ""
    text = m.get("algorithm", m.get("kind", ""))
    counts = [f"{m[k]} {k}" for k in ("hashed", "remembered", "hf-blob") if m.get(k)]
    if counts:
        text += f" ({m.get('files')} files: {', '.join(counts)})"
    elif m.get("how"):
        text += f" ({m['how']})"
    if model.get("commit"):   # a hub model: the commit its revision resolved to
        text += f" at commit {str(model['commit'])[:12]}"
    return text


def is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt(x, digits: int = 4) -> str:
    """A statistic: 4 significant digits, '—' when missing."""
    if not is_num(x):
        return "—"
    if x == 0:
        return "0"
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.{max(digits - 2, 1)}e}"
    return f"{x:.{digits}g}"


def fmt_signed(x, digits: int = 4) -> str:
    s = fmt(x, digits)
    return s if not is_num(x) or s.startswith("-") or x == 0 else "+" + s


def fmt_short(x) -> str:
    """Two significant digits with a sign, for dense grids."""
    if not is_num(x):
        return "—"
    return "0" if x == 0 else f"{x:+.2g}"


def fmt_p(p) -> str:
    """A p-value: 2 significant digits; scientific below 0.001."""
    if not is_num(p):
        return "—"
    if p == 0:
        return "0"
    if p < 1e-3:
        return f"{p:.1e}"
    return f"{p:.2g}" if p < 0.1 else f"{p:.2f}"


def fmt_null(null: dict | None) -> str:
    null = null or {}
    mean, sd = null.get("mean"), null.get("sd")
    if not is_num(mean):
        return "—"
    return f"{fmt(mean)} ± {fmt(sd)}" if is_num(sd) else fmt(mean)


def fmt_ci(ci) -> str:
    if not ci or len(ci) != 2 or not (is_num(ci[0]) and is_num(ci[1])):
        return "—"
    return f"[{fmt_signed(ci[0], 3)}, {fmt_signed(ci[1], 3)}]"


def direction_text(direction: str | None, min_effect) -> str:
    m = fmt(min_effect) if is_num(min_effect) else "?"
    return {"greater": f"effect = observed − null ≥ {m}",
            "less": f"effect = null − observed ≥ {m}",
            "two-sided": f"|observed − null| ≥ {m}",
            "equivalent": f"|observed − null| < {m} (equivalence, TOST)"}.get(
        direction or "", f"minimum effect {m}")


def cell_counts_text(c: Cell, sep: str = " ") -> str:
    """'12S 3R 5I 2N' — only the verdicts present."""
    parts = [f"{c.counts[v]}{ABBREV[v]}" for v in VERDICTS if c.counts[v]]
    return sep.join(parts) if parts else "—"


def phase_ranges(phases: dict) -> list[tuple[str, int, int]]:
    """[(name, first, last)] per phase (a phase's layers need not be contiguous: each
    contiguous run is its own entry)."""
    out = []
    for name, layers in phases.items():
        layers = sorted(int(x) for x in layers)
        if not layers:
            continue
        start = prev = layers[0]
        for x in layers[1:]:
            if x != prev + 1:
                out.append((name, start, prev))
                start = x
            prev = x
        out.append((name, start, prev))
    return sorted(out, key=lambda t: t[1])


# -- pooled over models (strata.verdicts/2 ``pooled``) ----------------------------------------
ALL_MODELS = "all models"
POOLED_VERDICTS = ("GENERAL", "HETEROGENEOUS", "ABSENT", "INCONCLUSIVE")
POOLED_ABBREV = {"GENERAL": "G", "HETEROGENEOUS": "H", "ABSENT": "A", "INCONCLUSIVE": "I",
                 "MIXED": "M"}
POOLED_MEANING = {
    "GENERAL": "the prediction interval lies in the claim's region: a new model is expected to show it",
    "HETEROGENEOUS": "neither general nor absent, and the models differ beyond their standard "
                     "errors (Cochran's Q p ≤ α): whether it holds depends on the model",
    "ABSENT": "the pooled interval lies outside the region: the average model does not show it",
    "INCONCLUSIVE": "neither, with no evidence that the models differ: more models needed",
}


@dataclass
class PooledCell:
    """All across-models pooled records of one claim (its phases × families)."""

    claim: str
    counts: dict = field(default_factory=lambda: {v: 0 for v in POOLED_VERDICTS})
    twin_artifacts: int = 0
    models: int = 0  # the most models any of its records pools

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def state(self) -> str:
        present = [v for v in POOLED_VERDICTS if self.counts[v]]
        if not present:
            return "N/A"
        return present[0] if len(present) == 1 else "MIXED"

    def counts_text(self, sep: str = " ") -> str:
        parts = [f"{self.counts[v]}{POOLED_ABBREV[v]}" for v in POOLED_VERDICTS if self.counts[v]]
        return sep.join(parts) if parts else "—"


def pooled(doc: dict, scope: str | None = "models") -> list[dict]:
    """The report's pooled records (of one scope; None: all), [] for a strata.verdicts/1 one."""
    return [p for p in doc.get("pooled") or [] if scope is None or p.get("scope") == scope]


def pooled_cells(doc: dict) -> dict:
    """{claim: PooledCell} over the across-models pooled records (claims without any absent)."""
    out: dict[str, PooledCell] = {}
    for p in pooled(doc):
        c = out.setdefault(p["claim"], PooledCell(p["claim"]))
        c.counts[p["verdict"]] += 1
        c.twin_artifacts += bool(p.get("twin_artifact"))
        c.models = max(c.models, int(p.get("k") or len(p.get("inputs") or [])))
    return out


def pooled_for(doc: dict, claim: str) -> list[dict]:
    """A claim's pooled records, every scope, across-models first, then by phase and family."""
    def key(p):
        ph, fam = p.get("phase"), p.get("family")
        fi = (-1 if fam is None else FAMILY_ORDER.index(fam) if fam in FAMILY_ORDER else len(FAMILY_ORDER))
        return (p.get("scope") != "models", str(p.get("scope")), str(ph), fi, str(fam))
    return sorted((p for p in pooled(doc, None) if p["claim"] == claim), key=key)
