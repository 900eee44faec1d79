"""Phase C layers update the residual stream within a shared subspace.

Least evidence: ``MIN_LAYERS`` = 3 layers in phase C (leaving one out must leave two whose
basis can capture it) and 1 layer outside it (cross-phase pairs, the layer-label null); below
it the record is N/A ("2 layers on phase C < 3 needed").
"""

import pytest

from probes import residual
from probes.evidence import Claim

MIN_EFFECT = 0.1  # capture units (0 … 1)
MIN_LAYERS = 3    # layers in phase C (and one outside it)

CLAIM = Claim(
    id="phase-C-shared-subspace",
    statement=f"Phase C layers' top residual-update directions share a subspace: each layer's "
              f"top-1 direction is captured by the other C layers' rank-8 basis, at least "
              f"{MIN_EFFECT} more than by random layer sets, and C's top-1 directions are more "
              f"aligned with each other than with other phases'.",
    statistic="mean leave-one-out capture ‖P u_L‖² of C's top-1 update directions by the rank-8 "
              "basis of the other C layers' top-8 directions (random direction: 8/d)",
    null="layer-label permutation (random layer sets of C's size; exact when few); p = max of "
         "the capture's and the intra − cross |cos| permutation p-values (both must exceed)",
    direction="greater",
    min_effect=MIN_EFFECT,
    min_effect_why="a random direction's capture by a rank-8 basis is 8/576 ≈ 0.014; 0.1 more "
                   "than random layer sets is a tenth of a direction's energy in the shared basis",
    min_evidence=f"{MIN_LAYERS} layers in phase C and 1 outside it",
)


@pytest.mark.activations
def test_phase_c_shared_subspace(residual_stream, phase_c_capture_null, phases, strata,
                                 verdict):
    verdict(CLAIM, residual.shared_subspace(residual_stream, phases, "C", seed=strata.seed,
                                            min_layers=MIN_LAYERS, null=phase_c_capture_null))
