"""Matched attention heads of adjacent layers have more alike QK metrics than other heads do."""

from probes import head_metric
from probes.evidence import Claim

MIN_EFFECT = 0.05  # metric-cosine units

CLAIM = Claim(
    id="head-metric-adjacent",
    statement=f"Within a phase, head h's QK metric g = W_Kᵀ W_Q in layer L+1 is more aligned with "
              f"head h's metric in layer L than with the metrics of the other heads of layer L, "
              f"by at least {MIN_EFFECT} in cos.",
    statistic="mean over the phase's adjacent pairs and heads of cos(g_L,h, g_L+1,h)",
    null="head-permuted: layer L+1's heads relabelled by a random derangement per pair "
         "(exact mean over h ≠ h', Monte Carlo sd)",
    direction="greater",
    min_effect=MIN_EFFECT,
    min_effect_why="unrelated rank-64 metrics in 576 dimensions have cos ≈ 0 ± 0.01; 0.05 is "
                   "five of those sds, a matched-head continuity the init cannot give",
)


def test_head_metric_adjacent(head_metric_result, phases, phase, strata, verdict):
    verdict(CLAIM, head_metric.adjacent_vs_head_permuted(head_metric_result, phases, phase,
                                                         seed=strata.seed))
