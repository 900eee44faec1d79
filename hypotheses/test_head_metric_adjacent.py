"""Matched attention heads of adjacent layers have more alike QK metrics than other heads do.

Least evidence: ``MIN_PAIRS`` = 1 adjacent pair inside the phase and ``MIN_HEADS`` = 2 heads
per layer (the null relabels heads by a derangement; the pair's heads are the replication);
below it the record is N/A ("0 adjacent pairs on phase B < 1 needed").
"""

from probes import head_metric
from probes.evidence import Claim

MIN_EFFECT = 0.05  # metric-cosine units
MIN_PAIRS = 1      # adjacent pairs inside the phase
MIN_HEADS = 2      # heads per layer: a derangement needs two

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
    min_effect_why="unrelated heads' metrics (rank 64 in 576 dimensions) have cos 0 ± 0.004 "
                   "per head on SmolLM2-shaped null models; 0.05 is over ten of those sds, a "
                   "matched-head continuity no init gives",
    min_evidence=f"{MIN_PAIRS} adjacent pair in the phase and {MIN_HEADS} heads per layer",
)


def test_head_metric_adjacent(head_metric_result, phases, phase, strata, verdict):
    verdict(CLAIM, head_metric.adjacent_vs_head_permuted(head_metric_result, phases, phase,
                                                         seed=strata.seed,
                                                         min_pairs=MIN_PAIRS,
                                                         min_heads=MIN_HEADS))
