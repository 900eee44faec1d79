"""reports/api.py and reports/schema.py: a report loads into a DataFrame (one row per record,
flattened columns), comparisons find changed verdicts, and the validator enforces SPEC §7."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from reports import api, schema
from tests.report_docs import make_doc


@pytest.fixture(scope="module")
def doc():
    return make_doc()


@pytest.fixture
def report_dir(tmp_path, doc):
    (tmp_path / "verdicts.json").write_text(json.dumps(doc, allow_nan=False))
    return tmp_path


def test_load_report_one_row_per_record(report_dir, doc):
    df = api.load_report(report_dir)
    assert len(df) == len(doc["records"])
    assert list(df.columns) == api.COLUMNS
    assert df.attrs["run"]["alpha"] == 0.05
    # flattened nested fields match the records, row by row
    for (_, row), rec in zip(df.iterrows(), doc["records"]):
        assert row["claim"] == rec["claim"] and row["verdict"] == rec["verdict"]
        if rec["verdict"] == "N/A":
            assert np.isnan(row["observed"]) and np.isnan(row["ci_lo"])
        else:
            assert row["null_mean"] == rec["null"]["mean"] and row["null_sd"] == rec["null"]["sd"]
            assert (row["ci_lo"], row["ci_hi"]) == tuple(rec["ci"])
        if rec["twin"]:
            assert row["twin_verdict"] == rec["twin"]["verdict"]
            assert row["twin_p"] == pytest.approx(rec["twin"]["p"])
            assert row["twin_artifact"] == (rec["twin"]["verdict"] == "SUPPORTED" == rec["verdict"])
        else:
            assert pd.isna(row["twin_verdict"]) and np.isnan(row["twin_p"])
        assert row["has_profile"] == (rec["profile"] is not None)
    assert df["p"].dtype == float and df["effect"].dtype == float


def test_load_report_accepts_dir_file_and_dict(report_dir, doc):
    a = api.load_report(report_dir)
    b = api.load_report(report_dir / "verdicts.json")
    c = api.load_report(doc)
    assert a.drop(columns="extra").equals(b.drop(columns="extra"))
    assert a.drop(columns="extra").equals(c.drop(columns="extra"))


def test_load_report_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        api.load_report(tmp_path)
    (tmp_path / "verdicts.json").write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        api.load_report(tmp_path)


def test_profiles_frame_long_form(report_dir, doc):
    pf = api.profiles_frame(report_dir)
    assert len(pf) == sum(len(r["profile"]["layers"]) for r in doc["records"] if r["profile"])
    one = next(r for r in doc["records"] if r["profile"])
    sel = pf[(pf.claim == one["claim"]) & (pf.model == one["model"]) & (pf.phase == one["phase"])
             & (pf.family == one["family"])]
    assert list(sel["layer"]) == one["profile"]["layers"]
    assert np.allclose(sel["value"], one["profile"]["values"])


def test_compare_two_runs_finds_the_changed_verdict(doc):
    b = copy.deepcopy(doc)
    i = next(k for k, r in enumerate(b["records"]) if r["verdict"] == "SUPPORTED" and r["phase"] == "C")
    b["records"][i]["verdict"] = "REFUTED"
    removed = b["records"].pop(0)
    out = api.compare_reports(doc, b)
    assert len(out) == 2
    changed = out[out.change == "SUPPORTED → REFUTED"]
    assert len(changed) == 1
    rec = doc["records"][i]
    row = changed.iloc[0]
    assert (row.claim, row.phase, row.family, row.model_a) == (rec["claim"], rec["phase"], rec["family"], rec["model"])
    gone = out[out.verdict_b == "absent"].iloc[0]
    assert (gone.claim, gone.phase, gone.family) == (removed["claim"], removed["phase"], removed["family"])
    assert len(api.compare_reports(doc, doc)) == 0
    assert len(api.compare_reports(doc, doc, changed_only=False)) == len(doc["records"])


def test_compare_two_models_of_one_report(doc):
    m1, m2 = "smollm2-135m", "synthetic:planted-adjacent"
    out = api.compare_reports(doc)       # defaults to the first two models
    explicit = api.compare_reports(doc, models=(m1, m2))
    assert out.equals(explicit)
    v1 = {(r["claim"], r["phase"], r["family"]): r["verdict"] for r in doc["records"] if r["model"] == m1}
    v2 = {(r["claim"], r["phase"], r["family"]): r["verdict"] for r in doc["records"] if r["model"] == m2}
    expected = {k for k in v1.keys() | v2.keys() if v1.get(k, "absent") != v2.get(k, "absent")}
    got = {(r.claim, r.phase, r.family) for r in out.itertuples()}
    assert got == expected and len(expected) > 0
    assert set(out.model_a) == {m1} and set(out.model_b) == {m2}
    # phase-C-only entries of smollm2 (phases D, tail) show as absent on the synthetic model
    assert ((out.phase == "tail") & (out.verdict_b == "absent")).any()
    with pytest.raises(ValueError, match="no records"):
        api.compare_reports(doc, models=(m1, "nope"))


def test_validate_accepts_the_fixture_and_extra_fields(doc):
    d = json.loads(json.dumps(doc))
    d["records"][0]["my_new_field"] = [1, 2]
    d["run"]["anything"] = {"x": 1}
    assert schema.validate(d) is d


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["records"][3].pop("verdict"), r"records\[3\]: 'verdict' is a required property"),
    (lambda d: d["records"][0].update(verdict="YES"), r"records\[0\]\.verdict: 'YES' is not one of \['SUPPORTED'"),
    (lambda d: d.update(schema="strata.verdicts/3"), r"\$\.schema: 'strata.verdicts/3' is not one of \['strata.verdicts/1', 'strata.verdicts/2'\]"),
    (lambda d: d["run"].pop("alpha"), r"\$\.run: 'alpha' is a required property"),
    (lambda d: d["run"]["models"][0].update(num_layers="30"), r"models\[0\]\.num_layers: '30' is not of type 'integer'"),
    (lambda d: d["records"][1].update(ci=[0.1]), r"records\[1\]\.ci: \[0\.1\] is too short"),
    (lambda d: d["records"][2]["null"].update(mean="x"), r"records\[2\]\.null\.mean: 'x' is not of type 'number', 'null'"),
    (lambda d: d["records"][0].update(p=True), r"records\[0\]\.p: True is not of type 'number', 'null'"),
    (lambda d: d["records"][0].update(model="other"), r"model 'other' is not described in run\.models"),
    (lambda d: d["records"][0].update(p=None), r"verdict \w+ needs a finite p"),
    (lambda d: d["records"][0].update(p_holm=1.5), r"p_holm=1\.5 is not a probability"),
    (lambda d: d["records"][0]["profile"]["values"].pop(), r"profile layers/values/null lengths differ"),
    (lambda d: d["records"][0]["matrix"]["values"].pop(), r"matrix is not 30×30"),
])
def test_validate_rejects(doc, mutate, message):
    d = copy.deepcopy(doc)
    assert d["records"][0]["verdict"] != "N/A" and d["records"][0]["profile"] and d["records"][0]["matrix"]
    mutate(d)
    with pytest.raises(ValueError, match=message):
        schema.validate(d)


def test_load_report_names_the_file_when_invalid(tmp_path, doc):
    d = copy.deepcopy(doc)
    del d["records"][0]["claim"]
    (tmp_path / "verdicts.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"verdicts\.json: not a valid strata\.verdicts/2 report"):
        api.load_report(tmp_path)


def test_schema_is_valid_json_schema_and_rejects_a_missing_field(doc):
    import jsonschema
    jsonschema.Draft202012Validator.check_schema(schema.SCHEMA)
    jsonschema.validate(json.loads(json.dumps(doc)), schema.SCHEMA)
    bad = copy.deepcopy(doc)
    bad["records"][0].pop("verdict")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema.SCHEMA)


def test_plugin_writes_files_the_api_reads_back(tmp_path, doc):
    from reports.plugin import write_report
    written = write_report(copy.deepcopy(doc), tmp_path)
    assert sorted(p.name for p in written) == ["verdicts.html", "verdicts.json", "verdicts.md"]
    df = api.load_report(tmp_path)
    assert len(df) == len(doc["records"])
    assert (tmp_path / "verdicts.html").read_text().count('<svg class="profile"') == df.has_profile.sum()
