"""Strata's report plugin: the ``verdict`` fixture and the verdict report (SPEC §6–7).

Shaped like pytest-html: options in ``pytest_addoption``; each test attaches its record to
``item.user_properties`` (which pytest copies into every report, so records cross the
pytest-xdist wire); the controller collects them in ``pytest_runtest_logreport`` and writes the
files once, in ``pytest_sessionfinish`` (workers never write).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from fixtures.plugin import get_session, report_directory
from probes.errors import NotApplicable
from probes.evidence import Claim, Evidence, decide
from probes.stats import holm
from reports import checkpoints
from reports.schema import SCHEMA_ID as SCHEMA

RECORD_KEY = "strata_record"
MODEL_KEY = "strata_model"


def pytest_addoption(parser):
    g = parser.getgroup("strata")
    g.addoption("--report-dir", default=None, metavar="DIR",
                help="where verdicts.json/.md/.html go (default reports/out under the rootdir)")


def pytest_configure(config):
    config._strata_report = VerdictReport(config)
    config.pluginmanager.register(config._strata_report, "strata-verdict-report")


def pytest_unconfigure(config):
    report = getattr(config, "_strata_report", None)
    if report is not None:
        config.pluginmanager.unregister(report)


# -- the verdict fixture -----------------------------------------------------------------
class Verdict:
    """``verdict(CLAIM, evidence)``: decide, attach the record, set the pytest outcome."""

    def __init__(self, request: pytest.FixtureRequest):
        self.request = request
        self.called = False

    def __call__(self, claim: Claim, evidence: Evidence | None, *, reason: str = ""):
        self.called = True
        item = self.request.node
        session = get_session(item.config)
        decision = decide(claim, evidence, session.alpha)
        rec = _record(item, claim, evidence, decision.verdict, reason or decision.reason)
        _attach(item, rec)
        if rec["role"] == "twin":
            return rec  # a control: recorded beside its model's verdict, never fails by itself
        if decision.verdict == "REFUTED":
            pytest.fail(f"REFUTED {claim.id}: {_numbers(rec)} — {rec['reason']}", pytrace=False)
        if decision.verdict in ("INCONCLUSIVE", "N/A"):
            _skip(f"{decision.verdict} {claim.id}: {_numbers(rec)} — {rec['reason']}")
        return rec


def _skip(reason: str):
    """Skip, reported at the test's location rather than this plugin's line."""
    try:
        raise pytest.skip.Exception(reason, _use_item_location=True)
    except TypeError:  # pragma: no cover - older pytest
        pytest.skip(reason)


@pytest.fixture
def verdict(request) -> Verdict:
    """Decide a claim from its evidence and record the verdict for the report."""
    return Verdict(request)


def _catch_not_applicable(item):
    """Wrapper body: NotApplicable raised by the test or one of its fixtures records N/A."""
    try:
        return (yield)
    except NotApplicable as e:
        _record_na(item, str(e))


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    return (yield from _catch_not_applicable(pyfuncitem))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _catch_not_applicable(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A claim whose probe (or test body) raised gets an ERROR record with the one-line cause,
    attached before pytest builds the report, so the report and its matrix show the error
    instead of a silent gap. The traceback stays pytest's (an error is a bug to look into)."""
    exc = call.excinfo
    if (exc is not None and _claim_of(item) is not None
            and not exc.errisinstance(_NOT_ERRORS)
            and not any(key == RECORD_KEY for key, _ in item.user_properties)):
        _attach(item, _record(item, _claim_of(item), None, "ERROR",
                              f"{call.when}: {_one_line(exc.value)}"))
    return (yield)


# outcomes that are not probe errors: skips and N/A, pytest.exit, interrupts
_NOT_ERRORS = (pytest.skip.Exception, pytest.exit.Exception, NotApplicable, KeyboardInterrupt)


def _claim_of(item) -> Claim | None:
    claim = getattr(getattr(item, "module", None), "CLAIM", None)
    return claim if isinstance(claim, Claim) else None


def _one_line(error: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (clipped): what the matrix and the report show."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = type(error).__name__ + (f": {lines[0]}" if lines else "")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _record_na(item, reason: str):
    claim = getattr(getattr(item, "module", None), "CLAIM", None)
    if claim is None:
        raise NotApplicable(reason)
    rec = _record(item, claim, None, "N/A", reason)
    _attach(item, rec)
    if rec["role"] == "twin":
        return
    _skip(f"N/A {claim.id}: {reason}")


def _attach(item, rec):
    item.user_properties.append((RECORD_KEY, rec))
    model = _item_model(item)
    if model is not None:
        info = dict(model.describe())
        info["role"] = rec["role"]
        info["phases"] = get_session(item.config).phases(model)
        item.user_properties.append((MODEL_KEY, info))


def _item_model(item):
    """The item's Model: from its fixtures, or (when a fixture failed during setup, before
    they were filled in) from its ``model`` parameter."""
    model = getattr(item, "funcargs", {}).get("model")
    if model is None:
        spec = getattr(getattr(item, "callspec", None), "params", {}).get("model")
        if spec is not None:
            model = get_session(item.config).model(spec)
    return model


def _record(item, claim: Claim, ev: Evidence | None, verdict: str, reason: str) -> dict:
    params = getattr(getattr(item, "callspec", None), "params", {})
    model = _item_model(item)
    is_twin = bool(model is not None and model.is_twin and model.spec not in get_session(item.config).specs)
    rec = {
        "claim": claim.id, "statement": claim.statement, "statistic": claim.statistic,
        "direction": claim.direction, "model": model.spec if model is not None else None,
        "phase": params.get("phase"), "family": params.get("family"),
        "observed": None, "null": {"kind": claim.null, "mean": None, "sd": None},
        "effect": None, "min_effect": claim.min_effect, "ci": [None, None], "p": None,
        "p_holm": None, "holm_survives": None, "verdict": verdict, "reason": reason,
        "twin": None, "twin_artifact": None, "profile": None, "matrix": None, "extra": {},
        "se": None, "role": "twin" if is_twin else "model",
        "twin_of": model.spec[len("random:"):] if is_twin else None,
        "nodeid": item.nodeid,
    }
    if ev is not None:
        rec.update({
            "observed": _num(ev.observed),
            "null": {"kind": ev.null_kind or claim.null, "mean": _num(ev.null_mean), "sd": _num(ev.null_sd)},
            "effect": _num(ev.effect), "ci": [_num(ev.ci[0]), _num(ev.ci[1])], "p": _num(ev.p),
            "profile": ev.profile.to_json() if ev.profile is not None else None,
            "matrix": ev.matrix.to_json() if ev.matrix is not None else None,
            "extra": _jsonable(ev.extra), "se": _num(ev.standard_error),
        })
    return rec


def _num(x):
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def _jsonable(o):
    return json.loads(json.dumps(o, default=lambda v: v.item() if isinstance(v, np.generic)
                                 else v.tolist() if isinstance(v, np.ndarray) else str(v),
                                 allow_nan=True).replace("NaN", "null").replace("Infinity", "null"))


def _numbers(rec) -> str:
    def f(x):
        return "NA" if x is None else f"{x:.4g}"
    lo, hi = rec["ci"]
    return (f"observed={f(rec['observed'])} null={f(rec['null']['mean'])}±{f(rec['null']['sd'])} "
            f"({rec['null']['kind']}) effect={f(rec['effect'])} CI=[{f(lo)}, {f(hi)}] "
            f"p={f(rec['p'])} min_effect={rec['min_effect']:g}")


# -- verdicts as pytest outcomes ---------------------------------------------------------
# (pytest category, progress letter, verbose word, colour) per verdict. The category is what
# pytest's last line counts ("9 supported, 61 refuted, ..."): a REFUTED claim stays a failure
# for the exit status and JUnit (the report's outcome is untouched), but the terminal files it
# under "refuted", so it is not listed among FAILURES with a traceback.
STATUS = {
    "SUPPORTED": ("supported", "S", "SUPPORTED", {"green": True}),
    "REFUTED": ("refuted", "R", "REFUTED", {"red": True}),
    "INCONCLUSIVE": ("inconclusive", "I", "INCONCLUSIVE", {"yellow": True}),
    "N/A": ("n/a", "N", "N/A", {}),
}
TWIN_CATEGORY = "twins"   # controls: recorded beside their model's records, never failing


def _decisive_record(report) -> dict | None:
    """The record a setup/call report decided, if any (setup only when it did not pass)."""
    if report.when == "teardown" or (report.when == "setup" and report.passed):
        return None
    recs = [value for key, value in getattr(report, "user_properties", ()) if key == RECORD_KEY]
    return recs[-1] if recs else None


@pytest.hookimpl(tryfirst=True)
def pytest_report_teststatus(report, config):
    rec = _decisive_record(report)
    if rec is None or rec["verdict"] == "ERROR":
        return None  # pytest's own outcome: an error stays an error, with its traceback
    if rec["role"] == "twin":
        return TWIN_CATEGORY, "t", (f"TWIN {rec['verdict']}", {"cyan": True})
    category, letter, word, colour = STATUS[rec["verdict"]]
    return category, letter, (word, colour)


# -- collection on the controller ----------------------------------------------------------
class VerdictReport:
    """Collects records from test reports (on the controller under xdist) and writes the files."""

    def __init__(self, config):
        self.config = config
        self.records: list[dict] = []
        self.models: dict[str, dict] = {}
        self.started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.written: list[Path] = []

    def pytest_runtest_logreport(self, report):
        # user_properties ride on every report; the teardown report carries the final list once
        if report.when != "teardown":
            return
        for key, value in report.user_properties:
            if key == RECORD_KEY:
                self.records.append(value)
            elif key == MODEL_KEY:
                self.models.setdefault(value["spec"], value)

    def pytest_sessionfinish(self, session, exitstatus):
        if hasattr(self.config, "workerinput") or not self.records:
            return  # xdist workers never write; a run without claims writes nothing
        doc = build_document(self.config, self.records, self.models, self.started)
        self.written = write_report(doc, report_directory(self.config))

    def pytest_terminal_summary(self, terminalreporter, exitstatus, config):
        if not self.written:
            return
        from reports import terminal
        doc = json.loads(self.written[0].read_text())
        width = max(60, min(terminalreporter._tw.fullwidth, 160))
        refuted = terminal.refuted_lines(doc, width)
        if refuted:
            terminalreporter.section("strata: refuted claims", red=True)
            for line in refuted:
                terminalreporter.write_line(line)
        errors = terminal.error_lines(doc, width)
        if errors:
            terminalreporter.section("strata: claims whose probe raised (see ERRORS above)", red=True)
            for line in errors:
                terminalreporter.write_line(line)
        terminalreporter.section("strata verdicts")
        terminalreporter.write_line(terminal.render_matrix(doc, width=min(width, 100)))
        terminalreporter.write_line("")
        terminalreporter.write_line("strata: " + terminal.counts_line(doc), bold=True)
        html = next((p for p in self.written if p.suffix == ".html"), self.written[0])
        terminalreporter.write_line(f"report: {html}  (also "
                                    + ", ".join(p.name for p in self.written if p != html) + ")")


def build_document(config, records: list[dict], model_info: dict, started: str) -> dict:
    strata = getattr(config, "_strata", None)
    alpha = strata.alpha if strata else config.getoption("alpha")
    models = [r for r in records if r["role"] == "model"]
    twins = [r for r in records if r["role"] == "twin"]
    def key(r, model):  # the test function, not just the claim: a claim may have several
        return (r["claim"], r["nodeid"].split("[")[0], model, r["phase"], r["family"])

    by_key = {key(r, r["model"]): r for r in models}
    for t in twins:
        parent = by_key.get(key(t, t["twin_of"]))
        if parent is not None:
            parent["twin"] = {"observed": t["observed"], "effect": t["effect"], "p": t["p"],
                              "verdict": t["verdict"], "reason": t["reason"]}
            # a likely artifact: what the trained model shows, random init shows too. For an
            # equivalence claim ("≈ 0") agreement with random init is expected, not an artifact.
            parent["twin_artifact"] = (parent["verdict"] == "SUPPORTED" and t["verdict"] == "SUPPORTED"
                                       and parent["direction"] != "equivalent")
    _dedup_matrices(models)
    for t in twins:
        t["matrix"] = None  # the twin's heatmap is not drawn; its record stays for the numbers
    adj = holm([r["p"] if r["p"] is not None else np.nan for r in models])
    for r, ph in zip(models, adj):
        r["p_holm"] = _num(ph)
        if r["verdict"] == "SUPPORTED":
            r["holm_survives"] = bool(r["p_holm"] is not None and r["p_holm"] <= alpha)
    models.sort(key=lambda r: (r["claim"], r["model"], str(r["phase"]), str(r["family"])))
    # per model, from its activation records: the forward's dtype (run.models[].activation_forward)
    # and what it was fed — its tokenizer's count, its BOS (run.models[].calibration)
    for r in records:
        extra = r["extra"] if isinstance(r.get("extra"), dict) else {}
        if r["model"] not in model_info:
            continue
        if extra.get("forward"):
            model_info[r["model"]].setdefault("activation_forward", extra["forward"])
        if extra.get("calibration"):
            model_info[r["model"]].setdefault("calibration", {
                k: extra["calibration"].get(k) for k in ("tokens", "scored_tokens", "bos")})
    calibration = next((r["extra"].get("calibration") for r in models
                        if isinstance(r.get("extra"), dict) and r["extra"].get("calibration")), None)
    if calibration is not None:   # the corpus; the BOS is a model's (run.models[].calibration)
        calibration = {k: v for k, v in calibration.items() if k != "bos"}
    run_models = sorted(model_info.values(), key=lambda m: (m.get("role") != "model", m["spec"]))
    # revisions of one hub model: their checkpoint order (reports.checkpoints), in the order
    # given (--model, then the --models zoo files; read here: under xdist the controller has no
    # session object)
    from probes.zoo import read_zoo
    given = [*(config.getoption("model") or []),
             *(spec for path in config.getoption("models") or [] for spec in read_zoo(path))]
    checkpoints.annotate(run_models, list(dict.fromkeys(given)))
    doc = {
        "schema": SCHEMA,
        "run": {
            "harness_commit": _git_commit(config.rootpath),
            "started": started,
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
            "machine": _machine(),
            "alpha": alpha,
            "seed": strata.seed if strata else config.getoption("seed"),
            "models": run_models,
            "calibration": calibration,
        },
        "records": models,
        "twin_records": twins,
    }
    from reports.pooled import pooled_records
    doc["pooled"] = pooled_records(doc)
    return doc


def _dedup_matrices(records: list[dict]) -> None:
    """A probe's L×L matrix is the same for every phase of a (claim, model, family): keep it on
    the first such record only and point the others at it (``matrix_ref`` = that nodeid)."""
    first: dict[tuple, str] = {}
    for r in sorted(records, key=lambda r: r["nodeid"]):
        if r.get("matrix") is None:
            continue
        key = (r["claim"], r["model"], r["family"], r["matrix"].get("label"))
        if key in first:
            r["matrix"] = None
            r["matrix_ref"] = first[key]
        else:
            first[key] = r["nodeid"]


def write_report(doc: dict, out: Path) -> list[Path]:
    """Write verdicts.json/.md/.html into ``out`` atomically (temp file, then os.replace)."""
    out.mkdir(parents=True, exist_ok=True)
    from reports import html, markdown
    files = {"verdicts.json": json.dumps(doc, indent=1, allow_nan=False),
             "verdicts.md": markdown.render_markdown(doc),
             "verdicts.html": html.render_html(doc)}
    written = []
    for name, text in files.items():
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is for reading
        os.replace(tmp, out / name)
        written.append(out / name)
    return written


def _git_commit(root) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def _machine() -> str:
    """Where pytest ran (under --cluster: the client; each task's worker is in
    cluster-tasks.json)."""
    from probes.machine import cpu_description
    try:
        return cpu_description()
    except Exception:   # the report is written whatever the platform
        return "unknown machine"


def _versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "numpy", "scipy", "safetensors", "pytest"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out
