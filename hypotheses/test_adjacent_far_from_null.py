"""Adjacent layers' weights are more (or less) alike than a shuffle of their entries."""

from probes import adjacent
from probes.evidence import Claim

CLAIM = Claim(
    id="adjacent-far-from-null",
    statement="Within a phase, adjacent layers' weights of a family are more or less alike "
              "than the entry-permutation null says by chance.",
    statistic="mean adjacent cos over the phase's pairs",
    null="entry-permutation (exact moments)",
    direction="two-sided",
    min_effect=0.05,  # cos units: a difference from the null smaller than this is not a finding
)


def test_adjacent_far_from_null(weight_gram, phases, phase, family, verdict):
    verdict(CLAIM, adjacent.far_from_null(weight_gram, phases, phase, family))
