"""Phase E layers write their updates in their own, unshared directions."""

import pytest

from probes import residual
from probes.evidence import Claim

CLAIM = Claim(
    id="phase-E-specialized",
    statement="Phase E layers' top-1 residual-update directions are not more aligned with each "
              "other than with other phases', and their block effective rank is close to the "
              "number of E layers — higher than for a random set of the model's layers.",
    statistic="block effective rank / #layers of E's top-1 update directions (1 = orthogonal), "
              "provided E's intra |cos| ≤ its cross-phase |cos| (else p = 1)",
    null="layer-label permutation (random layer sets of E's size; exact when few); random-"
         "direction ratio reported beside it",
    direction="greater",
    min_effect=0.05,  # ratio units (1/m … 1)
)


@pytest.mark.activations
def test_phase_e_specialized(residual_stream, phases, strata, verdict):
    verdict(CLAIM, residual.specialized(residual_stream, phases, "E", seed=strata.seed))
