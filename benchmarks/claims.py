"""The claims of ``hypotheses/`` run without pytest: one model, every claim, plain records.

Each ``hypotheses/test_*.py`` declares a ``CLAIM`` and one test function whose arguments are
fixture names. :func:`discover` imports them; :func:`evaluate` calls each function once per
phase × family it would be parametrized over (``phase``: every phase of the map; ``family``:
the ``@pytest.mark.families`` list, else the model's families), with

* the probe fixtures (``weight_gram``, ``head_metric_result``, ``gauge_alignment``,
  ``residual_stream``, and the claims' nulls derived from it: ``late_layers_null``,
  ``phase_c_capture_null``) computed by the fixtures' own code (``fixtures/<probe>.py``, called
  through a stand-in for the ``strata`` session), so the cache keys — and the numbers — are
  those of a ``pytest hypotheses/`` run, and each probe runs once per model;
* ``verdict`` collecting ``probes.evidence.decide(claim, evidence, alpha)``;
* ``NotApplicable`` (from a claim or a probe) recorded as N/A.

So the calibration measures the claims exactly as written, and a new claim file is picked up
with no change here.
"""

from __future__ import annotations

import importlib.util
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from probes.cache import Cache
from probes.errors import NotApplicable
from probes.evidence import Claim, decide
from probes.models.base import claim_families
from probes.phases import default_phases

REPO = Path(__file__).resolve().parent.parent
HYPOTHESES = REPO / "hypotheses"
PROBE_FIXTURES = ("weight_gram", "head_metric_result", "gauge_alignment", "residual_stream",
                  "late_layers_null", "phase_c_capture_null")


@dataclass(frozen=True)
class ClaimTest:
    """One claim file: its CLAIM, its test function and what the function asks for."""

    claim: Claim
    fn: Callable
    params: tuple[str, ...]
    families: tuple[str, ...] | None   # @pytest.mark.families, else every family of the model
    path: Path

    @property
    def probes(self) -> tuple[str, ...]:
        return tuple(p for p in self.params if p in PROBE_FIXTURES)


def discover(directory: Path = HYPOTHESES) -> list[ClaimTest]:
    """Every ``test_*.py`` claim in ``directory``, in file order."""
    out = []
    for path in sorted(Path(directory).glob("test_*.py")):
        spec = importlib.util.spec_from_file_location(f"_strata_claims.{path.stem}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        fn = getattr(mod, path.stem)
        fams = None
        for mark in getattr(fn, "pytestmark", []):
            if mark.name == "families":
                fams = tuple(mark.args)
        out.append(ClaimTest(mod.CLAIM, fn, tuple(inspect.signature(fn).parameters), fams, path))
    return out


class _OptionDefaults:
    """Records the defaults of the options the fixture plugins declare (``pytest_addoption``)."""

    def __init__(self):
        self.defaults: dict = {}

    def getgroup(self, *args, **kwargs):
        return self

    def addoption(self, *names, **kwargs):
        dest = kwargs.get("dest") or names[0].lstrip("-").replace("-", "_")
        action = kwargs.get("action")
        default = kwargs.get("default", False if action == "store_true" else None)
        self.defaults[dest] = default


def option_defaults() -> dict:
    """Every fixture option's pytest default (``fixtures/*.py``), as ``getoption`` names them."""
    import importlib
    import pkgutil

    import fixtures
    rec = _OptionDefaults()
    for info in pkgutil.iter_modules(fixtures.__path__):
        mod = importlib.import_module(f"fixtures.{info.name}")
        if hasattr(mod, "pytest_addoption"):
            mod.pytest_addoption(rec)
    return rec.defaults


class _Config:
    """What the probe fixtures read from ``strata.config``: their pytest defaults, except the
    head-metric Gram over adjacent pairs only (what the claims use), overridable."""

    OVERRIDES = {"head_gram": "adjacent"}

    def __init__(self, **options):
        self.options = {**option_defaults(), **self.OVERRIDES, **options}

    def getoption(self, name):
        return self.options[name]


class Session:
    """A stand-in for the ``strata`` fixture: seed, device, options and the probe cache."""

    def __init__(self, cache: Cache | None = None, seed: int = 0, device: str = "cpu",
                 **options):
        self.cache = cache or Cache()
        self.seed = seed
        self.device = device
        self.config = _Config(**options)

    def probe(self, model, probe_id, version, params, compute):
        return self.cache.get_or_compute(probe_id, version, model.fingerprint, params, compute)

    def request(self, model, req):
        """As ``StrataSession.request``: the cached or computed result of a ``ProbeRequest``."""
        return self.probe(model, req.probe_id, req.version, req.params, req.compute)

    def derive(self, model, req, base_result):
        """As ``StrataSession.derive``: a derived entry, computed from ``base_result``."""
        return self.request(model, req._replace(compute=lambda: req.derived.compute(base_result)))


class _WithPhases:
    """The session as one :func:`evaluate` call sees it: its phase map for ``phases(model)``
    (what a derived null's parameters read, as ``StrataSession.phases`` does under pytest)."""

    def __init__(self, session: Session, phases: dict):
        self._session, self._phases = session, phases

    def phases(self, model) -> dict:
        return self._phases

    def __getattr__(self, name):
        return getattr(self._session, name)


def probe_fixture(name: str) -> Callable:
    """The undecorated function of the probe fixture ``name`` (takes ``strata``, ``model``)."""
    import fixtures.gauge
    import fixtures.head_metric
    import fixtures.residual
    import fixtures.weights
    fixture = {"weight_gram": fixtures.weights.weight_gram,
               "head_metric_result": fixtures.head_metric.head_metric_result,
               "gauge_alignment": fixtures.gauge.gauge_alignment,
               "residual_stream": fixtures.residual.residual_stream,
               "late_layers_null": fixtures.residual.late_layers_null,
               "phase_c_capture_null": fixtures.residual.phase_c_capture_null}[name]
    return fixture.__wrapped__


class ModelProbes:
    """Probe results of one model, each computed (or read from the cache) once, on demand; a
    fixture that takes another probe fixture (a derived null) gets that one's result."""

    def __init__(self, model, session: Session, phases: dict | None = None):
        self.model, self.session = model, session
        self.phases = phases or default_phases(model.layout.num_layers)
        self._done: dict[str, object] = {}

    def get(self, name: str):
        if name not in self._done:
            fn = probe_fixture(name)
            try:
                inputs = {p: self.get(p) for p in inspect.signature(fn).parameters
                          if p in PROBE_FIXTURES}
                self._done[name] = fn(strata=_WithPhases(self.session, self.phases),
                                      model=self.model, **inputs)
            except NotApplicable as exc:
                self._done[name] = exc
        value = self._done[name]
        if isinstance(value, NotApplicable):
            raise value
        return value


def evaluate(model, claims: Iterable[ClaimTest], session: Session, alpha: float = 0.05,
             phases: dict | None = None, probes: ModelProbes | None = None,
             only: dict | None = None) -> list[dict]:
    """Every record the claims give on ``model``: one dict per claim × phase × family with
    the verdict and the numbers it rests on. ``only`` maps a claim id to the (phase, family)
    pairs to evaluate (None: all), for power runs that look at the planted region only."""
    phases = phases or default_phases(model.layout.num_layers)
    probes = probes or ModelProbes(model, session, phases)
    records = []
    for ct in claims:
        want = (only or {}).get(ct.claim.id)
        for phase in (list(phases) if "phase" in ct.params else [None]):
            fams = ([None] if "family" not in ct.params
                    else claim_families(ct.families, model.families) if ct.families
                    else list(model.families))
            for family in fams:
                if want is not None and (phase, family) not in want \
                        and (phase, None) not in want:
                    continue
                records.append(_run_one(ct, model, phases, phase, family, session, probes, alpha))
    return records


def _run_one(ct: ClaimTest, model, phases, phase, family, session, probes, alpha) -> dict:
    rec = {"claim": ct.claim.id, "phase": phase, "family": family}
    got = []

    def verdict(claim, evidence):
        got.append((claim, evidence))

    values = {"model": model, "phases": phases, "phase": phase, "family": family,
              "strata": session, "verdict": verdict}
    try:
        kwargs = {p: probes.get(p) if p in PROBE_FIXTURES else values[p] for p in ct.params}
        ct.fn(**kwargs)
    except NotApplicable as exc:
        return {**rec, "verdict": "N/A", "reason": str(exc)}
    if len(got) != 1:
        raise RuntimeError(f"{ct.path.name} called verdict {len(got)} times; a claim calls it once")
    claim, ev = got[0]
    dec = decide(claim, ev, alpha)
    return {**rec, "verdict": dec.verdict, "reason": dec.reason, "observed": ev.observed,
            "null_mean": ev.null_mean, "effect": ev.effect, "ci": list(ev.ci), "p": ev.p,
            "min_effect": claim.min_effect, "direction": claim.direction,
            "se": ev.standard_error}
