"""Claims, the evidence a probe produces for them, and the verdict rule (SPEC §6).

A :class:`Claim` declares what is tested; an :class:`Evidence` carries one measured statistic
beside its null; :func:`decide` turns the pair into a verdict. None of this knows about pytest:
the ``verdict`` fixture in ``reports/`` calls :func:`decide` and records the result.

Effect sign convention: ``effect`` is oriented so that the claimed direction is positive
(for ``direction="greater"`` effect = observed − null mean; for ``"less"`` it is
null mean − observed). ``ci`` is the interval of that oriented effect. For
``"two-sided"`` the effect is observed − null mean and support needs ``|effect| ≥ min_effect``.
For ``"equivalent"`` the claim is that the effect lies within ±``min_effect`` (the margin):
``p`` is the TOST p-value.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal, Sequence

import numpy as np

Direction = Literal["greater", "less", "two-sided", "equivalent"]
VERDICTS = ("SUPPORTED", "REFUTED", "INCONCLUSIVE", "N/A")


@dataclass(frozen=True)
class Claim:
    id: str                 # stable, used in reports
    statement: str          # one sentence
    statistic: str          # what `observed` is
    null: str               # what the null is
    direction: Direction = "greater"
    min_effect: float = 0.0  # in the statistic's units; the margin for "equivalent"
    min_effect_why: str = ""  # why that minimum: the scale below which a difference is no finding
    # the least evidence the claim decides on (pairs, layers, heads, ...), in words: below it
    # the record is N/A, with the reason :func:`require` words
    min_evidence: str = ""


@dataclass
class Profile:
    """A per-layer (or per-adjacent-pair: ``layers`` = first layer) quantity over the whole depth."""

    layers: Sequence[int]
    values: Sequence[float]
    null: Sequence[float] | None = None
    label: str = ""
    null_sd: Sequence[float] | None = None  # per-layer null sd: the report draws null ± 1.96 sd
    highlight: str | Sequence[str] | None = None  # phase(s) to shade when the record has no phase

    def to_json(self) -> dict:
        def clean(xs):
            return None if xs is None else [_finite_or_none(x) for x in xs]
        out = {"layers": [int(x) for x in self.layers], "values": clean(self.values),
               "null": clean(self.null), "label": self.label}
        if self.null_sd is not None:
            out["null_sd"] = clean(self.null_sd)
        if self.highlight is not None:
            out["highlight"] = self.highlight
        return out


@dataclass
class Matrix:
    """An L×L (layer by layer) quantity, drawn as a heatmap in the report."""

    layers: Sequence[int]
    values: Sequence[Sequence[float]]
    label: str = ""

    def to_json(self) -> dict:
        return {"layers": [int(x) for x in self.layers], "label": self.label,
                "values": [[_finite_or_none(x) for x in row] for row in self.values]}


@dataclass
class Evidence:
    """One statistic against its null. ``effect``/``ci`` follow the module's sign convention."""

    observed: float
    null_kind: str
    null_mean: float
    null_sd: float
    effect: float
    ci: tuple[float, float]
    p: float
    profile: Profile | None = None
    matrix: Matrix | None = None
    extra: dict = field(default_factory=dict)  # anything else worth showing (n, raw numbers, notes)
    reason: str = ""  # why, in words (filled by decide when empty)
    # standard error of ``effect`` that ``ci`` is built on; None means ci = effect ± z·null_sd,
    # so the se is the null sd. Pooling across models (probes.meta_analysis) weights by it.
    se: float | None = None

    @property
    def standard_error(self) -> float:
        return float(self.null_sd if self.se is None else self.se)


@dataclass
class Decision:
    verdict: str
    reason: str


_PLURAL = {"family": "families"}


def count_of(n: int, unit: str) -> str:
    """``1 adjacent pair``, ``2 adjacent pairs``, ``0 families``: ``n`` and ``unit`` in the
    right number (the unit's first word takes the plural: ``head per layer`` → ``heads per
    layer``)."""
    if n == 1:
        return f"{n} {unit}"
    words = unit.split(" ")
    # the noun is the last word before a preposition ("head per layer"), else the last word
    preps = {"per", "in", "on", "of", "with", "outside"}
    i = next((k - 1 for k, w in enumerate(words) if k > 0 and w in preps), len(words) - 1)
    words[i] = _PLURAL.get(words[i], words[i] + "s")
    return f"{n} {' '.join(words)}"


def require(have: int, need: int, unit: str, where: str = "") -> None:
    """The check behind every claim's stated minimum evidence (``Claim.min_evidence``): raise
    :class:`~probes.errors.NotApplicable` when ``have < need``, with one wording for every
    claim — ``"1 adjacent pair on phase tail < 2 needed"``. ``unit`` is the singular noun
    (``adjacent pair``, ``layer``, ``head per layer``), ``where`` the place (``on phase
    tail``)."""
    if have < need:
        from .errors import NotApplicable
        place = f" {where}" if where else ""
        raise NotApplicable(f"{count_of(int(have), unit)}{place} < {int(need)} needed")


def _finite_or_none(x):
    x = float(x)
    return x if math.isfinite(x) else None


def decide(claim: Claim, ev: Evidence | None, alpha: float) -> Decision:
    """Apply SPEC §6: SUPPORTED (p ≤ α and effect ≥ minimum), REFUTED (the interval excludes the
    minimum effect in the claimed direction), INCONCLUSIVE (neither), N/A (not computable)."""
    if ev is None:
        return Decision("N/A", "no evidence")
    vals = [ev.observed, ev.effect, ev.p, *ev.ci]
    if not all(np.isfinite(v) for v in vals):
        return Decision("N/A", ev.reason or "statistic is not finite (NaN/Inf in the inputs)")
    lo, hi = ev.ci
    m = claim.min_effect
    d = claim.direction
    if d in ("greater", "less"):
        if ev.p <= alpha and ev.effect >= m:
            return Decision("SUPPORTED", f"p={ev.p:.3g} ≤ α={alpha:g} and effect {ev.effect:+.4g} ≥ {m:g}")
        if hi < m:
            return Decision("REFUTED", f"interval [{lo:+.4g}, {hi:+.4g}] lies below the minimum effect {m:g}")
        return Decision("INCONCLUSIVE", f"p={ev.p:.3g}, effect {ev.effect:+.4g}, interval "
                        f"[{lo:+.4g}, {hi:+.4g}] vs minimum {m:g}")
    if d == "two-sided":
        if ev.p <= alpha and abs(ev.effect) >= m:
            return Decision("SUPPORTED", f"p={ev.p:.3g} ≤ α={alpha:g} and |effect| {abs(ev.effect):.4g} ≥ {m:g}")
        if -m < lo and hi < m:
            return Decision("REFUTED", f"interval [{lo:+.4g}, {hi:+.4g}] lies within ±{m:g} of the null")
        return Decision("INCONCLUSIVE", f"p={ev.p:.3g}, effect {ev.effect:+.4g}, interval "
                        f"[{lo:+.4g}, {hi:+.4g}] vs ±{m:g}")
    if d == "equivalent":
        if ev.p <= alpha and -m < lo and hi < m:
            return Decision("SUPPORTED", f"TOST p={ev.p:.3g} ≤ α={alpha:g}: interval "
                            f"[{lo:+.4g}, {hi:+.4g}] within ±{m:g}")
        if lo >= m or hi <= -m:
            return Decision("REFUTED", f"interval [{lo:+.4g}, {hi:+.4g}] lies outside ±{m:g}")
        return Decision("INCONCLUSIVE", f"TOST p={ev.p:.3g}, interval [{lo:+.4g}, {hi:+.4g}] vs ±{m:g}")
    raise ValueError(f"unknown direction {d!r}")


def claim_json(claim: Claim) -> dict:
    return asdict(claim)
