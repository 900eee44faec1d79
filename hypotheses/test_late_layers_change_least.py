"""The residual stream turns least in the second half of depth (Gromov et al. 2024)."""

import pytest

from probes import residual
from probes.evidence import Claim

MIN_EFFECT = 0.1  # log units

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
    min_effect_why="0.1 in log is a 10 % smaller minimum step; smaller differences between the "
                   "two halves' minima are within the token-sampling noise of the step profile",
)


@pytest.mark.activations
def test_late_layers_change_least(residual_stream, strata, verdict):
    verdict(CLAIM, residual.late_layers_change_least(residual_stream, seed=strata.seed))
