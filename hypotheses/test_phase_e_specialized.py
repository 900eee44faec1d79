"""Phase E layers write their updates in their own, unshared directions.

Least evidence: ``MIN_LAYERS`` = 2 layers in phase E (alignment within it) and 1 layer outside
it (cross-phase pairs, the layer-label null); below it the record is N/A ("1 layer on phase E
< 2 needed").
"""

import pytest

from probes import residual
from probes.evidence import Claim

MIN_EFFECT = 0.05  # ratio units (1/m … 1)
MIN_LAYERS = 2     # layers in phase E (and one outside it)

CLAIM = Claim(
    id="phase-E-specialized",
    statement=f"Phase E layers' top-1 residual-update directions are not more aligned with each "
              f"other than with other phases', and their block effective rank per layer exceeds "
              f"that of a random set of the model's layers by at least {MIN_EFFECT}.",
    statistic="block effective rank / #layers of E's top-1 update directions (1 = orthogonal), "
              "provided E's intra |cos| ≤ its cross-phase |cos| (else p = 1)",
    null="layer-label permutation (random layer sets of E's size; exact when few); random-"
         "direction ratio reported beside it",
    direction="greater",
    min_effect=MIN_EFFECT,
    min_effect_why="for E's 5 layers the ratio runs from 0.2 (one shared direction) to 1 "
                   "(orthogonal); 0.05 is a quarter of one layer's worth of extra rank",
    min_evidence=f"{MIN_LAYERS} layers in phase E and 1 outside it",
)


@pytest.mark.activations
def test_phase_e_specialized(residual_stream, phases, strata, verdict):
    verdict(CLAIM, residual.specialized(residual_stream, phases, "E", seed=strata.seed,
                                        min_layers=MIN_LAYERS))
