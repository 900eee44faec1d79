"""Adjacent layers' weights are more (or less) alike than a shuffle of their entries.

Least evidence: ``MIN_PAIRS`` = 2 adjacent pairs inside the phase (the t interval over the
phase's pairs needs a spread); below it the record is N/A ("1 adjacent pair on phase tail < 2
needed").
"""

from probes import adjacent
from probes.evidence import Claim

MIN_EFFECT = 0.05  # cos units
MIN_PAIRS = 2      # adjacent pairs inside the phase: a t test over them needs a spread

CLAIM = Claim(
    id="adjacent-far-from-null",
    statement=f"Within a phase, adjacent layers' weights of a family are more or less alike "
              f"than the entry-permutation null says by chance, by at least {MIN_EFFECT} in cos.",
    statistic="mean adjacent cos over the phase's pairs",
    null="entry-permutation (exact moments)",
    direction="two-sided",
    min_effect=MIN_EFFECT,
    min_effect_why="two unrelated SmolLM2-sized matrices have |cos| < 0.007 and the null sd per "
                   "pair is ≈ 0.001; 0.05 is ≥ 7× that, and a shared direction that small "
                   "explains 0.25 % of a layer's energy",
    min_evidence=f"{MIN_PAIRS} adjacent pairs in the phase",
)


def test_adjacent_far_from_null(weight_gram, phases, phase, family, verdict):
    verdict(CLAIM, adjacent.far_from_null(weight_gram, phases, phase, family,
                                          min_pairs=MIN_PAIRS))
