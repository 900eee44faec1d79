"""Attention heads' QK metrics lean positive: g + gᵀ has more positive than negative eigen-mass.

Least evidence: ``MIN_LAYERS`` = 1 layer in the phase (its heads are the replication: the
per-head sign-flip null is exact for any number of heads); below it the record is N/A.
"""

from probes import head_metric
from probes.evidence import Claim

MIN_EFFECT = 0.05  # share units
MIN_LAYERS = 1     # layers in the phase

CLAIM = Claim(
    id="qk-sym-positive",
    statement=f"Within a phase, the symmetric part of the heads' QK metrics g = W_Kᵀ W_Q carries "
              f"more positive than negative eigenvalue mass: share at least {0.5 + MIN_EFFECT:g}, "
              f"above the random value 1/2 by {MIN_EFFECT} or more.",
    statistic="mean over the phase's layers and heads of Σλ₊/Σ|λ| over the eigenvalues of g + gᵀ",
    null="1/2 (exact under sign-symmetric init); sd and p from per-head sign flips of W_Q "
         "(s → 1 − s)",
    direction="greater",
    min_effect=MIN_EFFECT,
    min_effect_why="a random head's share is 1/2 ± ≈ 0.005 on SmolLM2-shaped null models; "
                   "0.55 means the positive part outweighs the negative by 10 % of the "
                   "metric's eigen-mass",
    min_evidence=f"{MIN_LAYERS} layer in the phase",
)


def test_qk_sym_positive(head_metric_result, phases, phase, strata, verdict):
    verdict(CLAIM, head_metric.positive_share_vs_half(head_metric_result, phases, phase,
                                                      seed=strata.seed,
                                                      min_layers=MIN_LAYERS))
