"""Attention heads' QK metrics lean positive: g + gᵀ has more positive than negative eigen-mass."""

from probes import head_metric
from probes.evidence import Claim

CLAIM = Claim(
    id="qk-sym-positive",
    statement="Within a phase, the symmetric part of the heads' QK metrics g = W_Kᵀ W_Q carries "
              "more positive than negative eigenvalue mass (share above the random value 1/2).",
    statistic="mean over the phase's layers and heads of Σλ₊/Σ|λ| over the eigenvalues of g + gᵀ",
    null="1/2 (exact under sign-symmetric init); sd and p from per-head sign flips of W_Q "
         "(s → 1 − s)",
    direction="greater",
    min_effect=0.05,  # share units
)


def test_qk_sym_positive(head_metric_result, phases, phase, strata, verdict):
    verdict(CLAIM, head_metric.positive_share_vs_half(head_metric_result, phases, phase,
                                                      seed=strata.seed))
