"""Minimum evidence per claim (issue 17, item 7).

Every claim of ``hypotheses/`` states the least evidence it decides on — a constant beside the
claim (``MIN_PAIRS``, ``MIN_LAYERS``, ``MIN_HEADS``, ``MIN_FAMILIES``), ``Claim.min_evidence``
in words, its module docstring, the README's claims table and ``hypotheses/README.md`` — and
below it gives an N/A record whose reason is worded by one helper,
:func:`probes.evidence.require`: ``"1 adjacent pair on phase tail < 2 needed"``.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from benchmarks.claims import Session, discover, evaluate
from probes.cache import Cache
from probes.errors import NotApplicable
from probes.evidence import count_of, require
from probes.models import open_model
from probes.phases import adjacent_pairs

REPO = Path(__file__).resolve().parent.parent
GAUGE_CLAIMS = ("gauge-delta-null", "aligned-delta-E-exceeds-C")


def _module(claim_id: str):
    return importlib.import_module("hypotheses.test_" + claim_id.lower().replace("-", "_"))


def test_require_words_every_reason_alike():
    with pytest.raises(NotApplicable, match=r"^1 adjacent pair on phase tail < 2 needed$"):
        require(1, 2, "adjacent pair", "on phase tail")
    with pytest.raises(NotApplicable, match=r"^0 adjacent pairs on phase B < 1 needed$"):
        require(0, 1, "adjacent pair", "on phase B")
    with pytest.raises(NotApplicable, match=r"^1 family with positive norms < 2 needed$"):
        require(1, 2, "family with positive norms")
    require(2, 2, "adjacent pair", "on phase C")     # at the minimum: decides
    assert count_of(3, "head per layer") == "3 heads per layer"
    assert count_of(2, "layer outside phase C") == "2 layers outside phase C"


def test_every_claim_states_its_minimum_everywhere():
    """Claim.min_evidence is set, names the numbers the module's MIN_* constants hold, the
    module docstring has a 'Least evidence' paragraph naming each constant, and both claims
    tables (README, hypotheses/README.md) show it."""
    readme = (REPO / "README.md").read_text()
    authors = (REPO / "hypotheses" / "README.md").read_text()
    for ct in discover():
        claim = ct.claim
        mod = _module(claim.id)
        consts = {k: v for k, v in vars(mod).items() if k.startswith("MIN_") and k != "MIN_EFFECT"}
        assert claim.min_evidence, claim.id
        assert consts, f"{claim.id}: no MIN_* constant beside the claim"
        doc = mod.__doc__ or ""
        assert "Least evidence" in doc, claim.id
        for name, value in consts.items():
            assert f"``{name}`` = {value}" in doc, (claim.id, name)
            assert str(value) in claim.min_evidence, (claim.id, name)
        claims_section = readme[readme.index("\n## Claims\n"):]
        row = next((line for line in claims_section.splitlines()
                    if line.startswith(f"| `{claim.id}` |")), None)
        assert row is not None and claim.min_evidence in row, (claim.id, "README claims table")
        row = next((line for line in authors.splitlines() if f"| `{claim.id}` |" in line), None)
        assert row is not None and claim.min_evidence in row, (claim.id, "hypotheses/README.md")


@pytest.fixture(scope="module")
def tiny_records(tmp_path_factory):
    """Every claim on ``synthetic:tiny-llama`` (8 layers, hidden 64) with a phase map whose
    phases sit below and at the minima: A one layer (0 pairs), C two layers (1 pair), E one
    layer, tail four layers (3 pairs)."""
    model = open_model("synthetic:tiny-llama")
    phases = {"A": [0], "C": [1, 2], "E": [3], "tail": [4, 5, 6, 7]}
    session = Session(Cache(tmp_path_factory.mktemp("cache")), calib_tokens=200)
    return phases, evaluate(model, discover(), session, phases=phases)


def test_records_below_the_minimum_are_na_with_the_uniform_reason(tiny_records):
    phases, records = tiny_records
    by = {}
    for r in records:
        by.setdefault((r["claim"], r["phase"]), []).append(r)
    want = {
        ("adjacent-far-from-null", "A"): "0 adjacent pairs on phase A < 2 needed",
        ("adjacent-far-from-null", "C"): "1 adjacent pair on phase C < 2 needed",
        ("gauge-delta-null", "A"): "0 adjacent pairs on phase A < 2 needed",
        ("gauge-delta-null", "C"): "1 adjacent pair on phase C < 2 needed",
        ("gauge-delta-null", "E"): "0 adjacent pairs on phase E < 2 needed",
        ("aligned-delta-E-exceeds-C", None): "0 adjacent pairs on phase E < 2 needed",
        ("head-metric-adjacent", "A"): "0 adjacent pairs on phase A < 1 needed",
        ("phase-C-shared-subspace", None): "2 layers on phase C < 3 needed",
        ("phase-E-specialized", None): "1 layer on phase E < 2 needed",
    }
    for key, reason in want.items():
        assert by[key], key
        for r in by[key]:
            assert r["verdict"] == "N/A" and r["reason"] == reason, (key, r)
    # at or above the minimum a claim decides (its norm families, constant at init, may be
    # N/A for that reason, never for the minimum)
    decided = [("adjacent-far-from-null", "tail"), ("gauge-delta-null", "tail"),
               ("head-metric-adjacent", "C"), ("qk-sym-positive", "A"),
               ("qk-sym-positive", "E"), ("late-layers-change-least", None),
               ("scale-schedule-low-dim", None)]
    for key in decided:
        assert any(r["verdict"] != "N/A" for r in by[key]), (key, by[key])
        assert not any("needed" in (r.get("reason") or "") for r in by[key] if r["verdict"] == "N/A")


def test_no_gauge_record_on_a_phase_below_its_minimum(tmp_path):
    """The must-show: a synthetic model whose tail phase has one adjacent pair gets N/A for
    gauge-delta-null there (and in every phase with fewer pairs than MIN_PAIRS), and
    aligned-delta-E-exceeds-C is N/A when E has one pair; every gauge record that decides sits
    on phases with at least the claim's MIN_PAIRS."""
    model = open_model("synthetic:tiny-llama")
    gauge_claims = [ct for ct in discover() if ct.claim.id in GAUGE_CLAIMS]
    session = Session(Cache(tmp_path / "cache"))
    maps = [{"C": [0, 1, 2], "E": [3, 4, 5], "tail": [6, 7]},     # tail: 1 pair
            {"C": [0, 1, 2, 3, 4], "E": [5, 6], "tail": [7]}]      # E: 1 pair, tail: 0
    for phases in maps:
        records = evaluate(model, gauge_claims, session, phases=phases)
        assert records
        for r in records:
            need = _module(r["claim"]).MIN_PAIRS
            used = [r["phase"]] if r["phase"] else ["E", "C"]
            counts = {ph: len(adjacent_pairs(phases, ph)) for ph in used}
            short = [ph for ph in used if counts[ph] < need]
            if short:
                ph = short[0]
                assert r["verdict"] == "N/A", r
                assert r["reason"] == f"{count_of(counts[ph], 'adjacent pair')} on phase {ph} " \
                                      f"< {need} needed", r
            else:
                assert r["verdict"] != "N/A", r
    delta_null = [ct for ct in gauge_claims if ct.claim.id == "gauge-delta-null"]
    tail = [r for r in evaluate(model, delta_null, session, phases=maps[0]) if r["phase"] == "tail"]
    assert tail and all(r["reason"] == "1 adjacent pair on phase tail < 2 needed" for r in tail)


def test_default_maps_of_30_layers_put_gauge_delta_null_na_on_the_tail():
    """SmolLM2's depth (30 layers, the calibration's shapes): the tail (layers 28–29) is one
    pair, so gauge-delta-null's tail records — counted in the calibration before issue 17 —
    are N/A now; every other phase with pairs keeps its records."""
    from probes.phases import default_phases
    phases = default_phases(30)
    pairs = {ph: len(adjacent_pairs(phases, ph)) for ph in phases}
    assert pairs == {"A": 3, "B": 0, "C": 9, "D": 7, "E": 4, "tail": 1}
    need = _module("gauge-delta-null").MIN_PAIRS
    assert [ph for ph, n in pairs.items() if n < need] == ["B", "tail"]


def test_readme_trust_row_counts_the_records_the_rule_leaves():
    """The trust table's gauge-delta-null row counts 5 models × 4 phases × 7 families = 140
    records per null family (B and tail N/A), as benchmarks/calibration.json does."""
    import json
    cal = json.loads((REPO / "benchmarks" / "calibration.json").read_text())
    fams = cal["claims"]["gauge-delta-null"]["null_families"]
    for fam in ("iid", "shuffled"):
        assert fams[fam]["n"] == 5 * 4 * 7 and fams[fam]["not_applicable"] == 5 * 2 * 7
    row = next(line for line in (REPO / "README.md").read_text().splitlines()
               if line.startswith('| <a id="trust-gauge-delta-null">'))
    assert re.search(r"SUPPORTED 140/140", row), row
