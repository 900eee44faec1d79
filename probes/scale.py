"""Scale schedule: how each family's Frobenius norm moves across depth (SPEC §5.2).

The track of family f is t_f[L] = log ‖W_f,L‖_F. Each track is centred over layers (the
families' absolute scales differ by orders of magnitude; only the shape across depth is of
interest), the centred F × L matrix is decomposed by SVD, and the explained-variance share of
each mode is s_k² / Σ s². A low-dimensional schedule means one depth profile moves every family
together: a large mode-1 share.

Null: each family's track shuffled across layers independently (seeded Monte Carlo). It keeps
every family's set of scales and destroys their shared ordering in depth. With F families the
null mode-1 share is well above 1/F (the largest of F random directions), which is why the null
is needed: the seed script printed the share alone.

Invariances: to a per-family rescaling (a constant shift of its log track), and to permuting
families. Families with a zero or non-finite norm in any layer are left out (recorded).
The norms come from the weight-gram pass (probes.adjacent), so no extra read of the model.
"""

from __future__ import annotations

import numpy as np

from .adjacent import layer_norms
from .errors import NotApplicable
from .evidence import Evidence, Profile, require
from .stats import evidence_vs_null_samples

NULL_DRAWS = 2000


def log_tracks(result: dict) -> tuple[list[str], np.ndarray]:
    """Families kept and their log-norm tracks (F × L), before centring."""
    fams, rows = [], []
    for fam in result["families"]:
        norms = layer_norms(result, fam)
        if np.all(np.isfinite(norms)) and np.all(norms > 0):
            fams.append(fam)
            rows.append(np.log(norms))
    return fams, np.array(rows)


def explained_variance(tracks: np.ndarray) -> np.ndarray:
    """Share of the centred tracks' variance in each SVD mode (sums to 1)."""
    centred = tracks - tracks.mean(axis=1, keepdims=True)
    s = np.linalg.svd(centred, compute_uv=False)
    total = float((s ** 2).sum())
    return s ** 2 / total if total > 0 else np.full_like(s, np.nan)


def mode1_share_null(tracks: np.ndarray, draws: int = NULL_DRAWS, seed: int = 0) -> np.ndarray:
    """Mode-1 share of tracks whose rows are permuted across layers independently."""
    rng = np.random.default_rng(seed)
    centred = tracks - tracks.mean(axis=1, keepdims=True)
    f, n = centred.shape
    # independent row shuffles for all draws at once: argsort of uniform keys
    order = np.argsort(rng.random((draws, f, n)), axis=2)
    shuffled = np.take_along_axis(np.broadcast_to(centred, (draws, f, n)), order, axis=2)
    s = np.linalg.svd(shuffled, compute_uv=False)
    return s[:, 0] ** 2 / (s ** 2).sum(axis=1)


def low_dim(result: dict, seed: int = 0, draws: int = NULL_DRAWS, min_layers: int = 3,
            min_families: int = 2) -> Evidence:
    """Evidence that the mode-1 share of the scale track exceeds the layer-shuffle null; N/A
    (:func:`probes.evidence.require`) below ``min_families`` families with positive norms or
    ``min_layers`` layers (one family's track is its own mode 1)."""
    fams, tracks = log_tracks(result)
    require(len(fams), max(min_families, 2), "family with positive norms", "")
    require(tracks.shape[1], max(min_layers, 3), "layer", "in the model")
    centred = tracks - tracks.mean(axis=1, keepdims=True)
    if not np.any(np.abs(centred) > 1e-12):
        raise NotApplicable("every family's norm is constant across depth: no schedule to decompose")
    shares = explained_variance(tracks)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    sign = np.sign(u[:, 0].sum()) or 1.0  # orient mode 1 so families load positively on average
    scores = sign * s[0] * vt[0]
    null = mode1_share_null(tracks, draws=draws, seed=seed)
    return evidence_vs_null_samples(
        float(shares[0]), null, "greater", null_kind=f"per-family layer shuffle ({draws} draws)",
        profile=Profile(layers=list(range(tracks.shape[1])), values=scores.tolist(),
                        null=[0.0] * tracks.shape[1], label="mode-1 score of centred log ‖W‖"),
        families=fams, explained_variance=shares.tolist(),
        excluded_families=[f for f in result["families"] if f not in fams],
        loadings=dict(zip(fams, (sign * u[:, 0]).tolist())),
        first_share_uniform=1.0 / len(fams))
