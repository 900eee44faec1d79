"""The residual stream turns least in the second half of depth (Gromov et al. 2024)."""

import pytest

from probes import residual
from probes.evidence import Claim

CLAIM = Claim(
    id="late-layers-change-least",
    statement="The smallest angular step arccos(cos(h_L, h_L+1))/π between consecutive layers "
              "falls in the second half of depth (last layer excluded), beyond what residual "
              "accumulation alone gives.",
    statistic="log(min step over layers < n/2) − log(min step over layers n/2 … n−2) "
              "(positive ⇔ argmin in the second half; p = 1 if it is not)",
    null="exchangeable layers: each token's layer updates (norm, alignment with the stream) "
         "applied in a random layer order (Monte Carlo, --seed); argmin-position chance "
         "(#second-half candidates / (n−1)) reported beside it",
    direction="greater",
    min_effect=0.1,  # log units
)


@pytest.mark.activations
def test_late_layers_change_least(residual_stream, strata, verdict):
    verdict(CLAIM, residual.late_layers_change_least(residual_stream, seed=strata.seed))
