"""The residual stream turns least in the second half of depth (Gromov et al. 2024).

Minimum effect, measured (``benchmarks/calibration.py``): with 0.1 (a 10 % smaller minimum
step) the claim was SUPPORTED on 1 of 20 shuffled-real null models — SmolLM2's own layers in a
random order, so no depth trend — because real layers' update sizes differ by factors of 2–3
whatever their depth: the effect spreads by ≈ 0.4 log units (sd) between such models, and
whenever the exchangeable-layers p falls below α the effect is 0.3 or more. The null is right
(on those models the layer order is random, which is what it simulates); the minimum was below
the spread. With log 2: 1 false positive in 50 shuffled models (bound 0.091), 0 in 30 i.i.d. log 2 ≈ 0.69 (beyond
what accumulation gives, the second half's smallest step is at most half the first half's) is
above that spread and is what "the late layers change least" asserts.

Least evidence: ``MIN_LAYERS`` = 4 layers in the model (both halves need a candidate layer, and
the last layer is none); below it the record is N/A ("3 layers in the model < 4 needed").
"""

import math

import pytest

from probes import residual
from probes.evidence import Claim

MIN_EFFECT = round(math.log(2), 2)  # 0.69 log units: a minimum step at most half as large
MIN_LAYERS = 4                      # layers in the model: a candidate in each half

CLAIM = Claim(
    id="late-layers-change-least",
    statement=f"The smallest angular step arccos(cos(h_L, h_L+1))/π between consecutive layers "
              f"falls in the second half of depth (last layer excluded), beyond what residual "
              f"accumulation alone gives, by at least {MIN_EFFECT} in log step.",
    statistic="log(min step over layers < n/2) − log(min step over layers n/2 … n−2) "
              "(positive ⇔ argmin in the second half; p = 1 if it is not)",
    null="exchangeable layers: each token's layer updates (norm, alignment with the stream) "
         "applied in a random layer order (Monte Carlo, --seed); argmin-position chance "
         "(#second-half candidates / (n−1)) reported beside it",
    direction="greater",
    min_effect=MIN_EFFECT,
    min_effect_why="log 2: beyond residual accumulation, the second half's smallest step is at "
                   "most half the first half's; real layers in a random depth order spread this "
                   "effect by ≈ 0.4 (sd), and 0.1 gave 1 false positive in 20 shuffled models",
    min_evidence=f"{MIN_LAYERS} layers in the model",
)


@pytest.mark.activations
def test_late_layers_change_least(residual_stream, late_layers_null, strata, verdict):
    verdict(CLAIM, residual.late_layers_change_least(residual_stream, seed=strata.seed,
                                                     min_layers=MIN_LAYERS,
                                                     null=late_layers_null))
