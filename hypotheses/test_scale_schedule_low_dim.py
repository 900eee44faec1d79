"""One depth profile moves every family's weight scale together."""

from probes import scale
from probes.evidence import Claim

CLAIM = Claim(
    id="scale-schedule-low-dim",
    statement="The log Frobenius-norm tracks of all families share one dominant depth profile.",
    statistic="mode-1 explained-variance share of the centred log-norm tracks",
    null="each family's track shuffled across layers",
    direction="greater",
    min_effect=0.10,  # share units above the shuffle null's mean
)


def test_scale_schedule_low_dim(weight_gram, strata, verdict):
    verdict(CLAIM, scale.low_dim(weight_gram, seed=strata.seed))
