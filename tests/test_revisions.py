"""Hub revisions (`org/name@REV`: training checkpoints, tags, commits) from the local HF cache,
and the claims × checkpoints report (reports/checkpoints.py). The HF cache is built in tmp_path
in huggingface_hub's own layout (models--org--name/{blobs,snapshots/<commit>,refs/<branch>});
huggingface_hub resolves the revisions from it, offline."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from probes import filehash
from probes.cache import Cache
from probes.errors import StrataError
from probes.models import open_model
from probes.models.checkpoint import write_checkpoint
from probes.models.hub import parse_hub_spec
from reports import checkpoints
from tests.test_fingerprints import fine_tune
from tests.test_plugin_e2e import WEIGHT_CLAIMS, records, run_pytest


def checkpoint(seed: int):
    return fine_tune(seed, 0.05, "planted-adjacent")


def add_revision(hub: Path, repo: str, ref: str | None, model, tmp: Path) -> str:
    """Put ``model`` ((config, state)) into the HF cache ``hub`` as a snapshot of ``repo``, its
    commit named by its content, with ``refs/<ref>`` pointing at it (a branch or tag; None: no
    ref, reachable by commit only). Blobs are named as the hub names them: LFS files by sha256,
    others by their git blob sha1. Returns the commit hash."""
    folder = hub / ("models--" + repo.replace("/", "--"))
    src = write_checkpoint(model, tmp / f"src-{len(list(tmp.iterdir()))}")
    files = sorted(src.iterdir())
    commit = hashlib.sha1(b"".join(f.read_bytes() for f in files)).hexdigest()
    snap = folder / "snapshots" / commit
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for f in files:
        data = f.read_bytes()
        blob = (hashlib.sha256(data).hexdigest() if f.suffix == ".safetensors"
                else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
        shutil.copy(f, folder / "blobs" / blob)
        os.symlink(os.path.relpath(folder / "blobs" / blob, snap), snap / f.name)
    if ref is not None:
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / ref).write_text(commit)
    return commit


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An HF cache with org/pythia-tiny at branches step500, step1000 (the planted-adjacent
    control, its weights nudged by two seeds: same config and shapes, other weights), tag v1 →
    step1000's commit, main → step1000; offline."""
    from huggingface_hub import constants
    root = tmp_path / "hf"
    work = tmp_path / "work"
    work.mkdir()
    commits = {rev: add_revision(root, "org/pythia-tiny", rev, checkpoint(seed), work)
               for rev, seed in (("step500", 1), ("step1000", 2))}
    for ref in ("v1", "main"):
        (root / "models--org--pythia-tiny" / "refs" / ref).write_text(commits["step1000"])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root, commits


def test_revisions_open_their_own_weights_with_their_own_fingerprints(hub, tmp_path, monkeypatch):
    root, commits = hub
    cache = Cache(tmp_path / "cache")

    def no_reads(*a, **k):
        raise AssertionError("a hub revision's weights were hashed: its blob names are sha256s")

    monkeypatch.setattr(filehash, "sha256_file", no_reads)
    early = open_model("org/pythia-tiny@step500", cache)
    late = open_model("org/pythia-tiny@step1000", cache)
    assert early.fingerprint != late.fingerprint
    assert early.meta["fingerprint_method"]["hf-blob"] == 1
    for model, seed in ((early, 1), (late, 2)):
        state = checkpoint(seed)[1]
        for name in ("model.layers.3.self_attn.q_proj.weight", "model.embed_tokens.weight"):
            assert torch.equal(model.tensor(name), state[name]), (model.spec, name)
    info = dict(early.describe())
    assert (info["repo"], info["revision"], info["commit"]) == \
        ("org/pythia-tiny", "step500", commits["step500"])
    # a tag, the full commit hash and the default branch: the same content, the same fingerprint
    for spec in ("org/pythia-tiny@v1", f"org/pythia-tiny@{commits['step1000']}", "org/pythia-tiny"):
        other = open_model(spec, cache)
        assert other.fingerprint == late.fingerprint, spec
        assert other.describe()["commit"] == commits["step1000"]
    assert open_model("org/pythia-tiny", cache).describe()["revision"] is None


def test_an_uncached_revision_offline_names_the_command_that_fetches_it(hub, tmp_path):
    cache = Cache(tmp_path / "cache")
    for spec in ("org/pythia-tiny@step2000", "random:org/pythia-tiny@step2000"):
        with pytest.raises(StrataError) as e:
            open_model(spec, cache)
        msg = str(e.value)
        assert "\n" not in msg
        assert "hf download org/pythia-tiny --revision step2000" in msg, msg
        assert "revision 'step2000'" in msg
    assert not (cache.root / "file-hashes").exists() or not any((cache.root / "file-hashes").iterdir())


def test_the_twin_of_a_revision_reads_its_config_only(hub, tmp_path, monkeypatch):
    root, commits = hub
    cache = Cache(tmp_path / "cache")
    for blob in (root / "models--org--pythia-tiny" / "blobs").iterdir():
        if len(blob.name) == 64:   # the weights: unreadable, and never read
            blob.write_bytes(b"\0" * 16)
    twin = open_model("random:org/pythia-tiny@step500", cache)
    assert twin.is_twin and twin.layout.num_layers == 24
    info = twin.describe()
    assert (info["repo"], info["revision"], info["commit"]) == \
        ("org/pythia-tiny", "step500", commits["step500"])
    assert twin.weight(2, "q_proj").shape == (64, 64)


@pytest.mark.parametrize("spec,expected", [
    ("EleutherAI/pythia-70m@step1000", ("EleutherAI/pythia-70m", "step1000")),
    ("allenai/OLMo-1B@stage1-step140000-tokens588B", ("allenai/OLMo-1B", "stage1-step140000-tokens588B")),
    ("org/name@refs/pr/1", ("org/name", "refs/pr/1")),
    ("org/name", ("org/name", None)),
    ("org/name@", None), ("org/name@a..b", None), ("org/name@x/", None), ("@step1", None),
    ("org/name@step1@step2", None), ("/abs/dir@step1", None),
])
def test_hub_spec_forms(spec, expected):
    got = parse_hub_spec(spec)
    assert (None if got is None else (got.repo, got.revision)) == expected


def test_revisions_of_one_repo_are_separate_xdist_groups():
    from fixtures.plugin import _group_name
    names = {_group_name(s) for s in ("org/name@step1.0", "org/name@step1_0", "org/name@step2",
                                      "org/name")}
    assert len(names) == 4
    assert _group_name("random:org/name@step2") == _group_name("org/name@step2")


# -- checkpoint order ----------------------------------------------------------------------------
def _entry(spec, **kw):
    repo, _, rev = spec.partition("@")
    return {"spec": spec, "repo": repo.removeprefix("random:"), "revision": rev or None,
            "role": "model", **kw}


def test_checkpoint_order_is_the_step_in_the_name_else_the_command_line():
    by_step = [_entry("o/m@step1000"), _entry("o/m@step500"), _entry("o/m@step20000"),
               _entry("o/other"), _entry("o/single@step3")]
    checkpoints.annotate(by_step, ["o/m@step1000", "o/other", "o/m@step20000", "o/m@step500"])
    got = {m["spec"]: m.get("checkpoint") for m in by_step}
    assert [got[s]["index"] for s in ("o/m@step500", "o/m@step1000", "o/m@step20000")] == [0, 1, 2]
    assert got["o/m@step500"]["order_by"] == checkpoints.BY_STEP
    assert got["o/other"] is None and got["o/single@step3"] is None   # not a series
    # the matrix columns: the series together, in order, where its first member stood
    specs = ["o/m@step1000", "o/m@step20000", "o/other", "o/m@step500"]
    assert checkpoints.in_checkpoint_order(specs, by_step) == \
        ["o/m@step500", "o/m@step1000", "o/m@step20000", "o/other"]
    mixed = [_entry("o/m@v2"), _entry("o/m@step9"), _entry("o/m@v1")]
    checkpoints.annotate(mixed, ["o/m@v2", "o/m@v1", "o/m@step9"])
    assert [m["spec"] for m in sorted(mixed, key=lambda m: m["checkpoint"]["index"])] == \
        ["o/m@v2", "o/m@v1", "o/m@step9"]
    assert mixed[0]["checkpoint"]["order_by"] == checkpoints.BY_COMMAND_LINE
    # twins given as models are their own series; twins beside their models (role twin) none
    twins = [_entry("random:o/m@step2"), _entry("random:o/m@step1"),
             _entry("o/m@step1", role="twin")]
    checkpoints.annotate(twins, [])
    assert twins[1]["checkpoint"]["series"] == "random:o/m" and "checkpoint" not in twins[2]


# -- the report ------------------------------------------------------------------------------------
def _doc():
    """A report of one claim with two phases × two families on three checkpoints, given on the
    command line out of order; one record N/A at the middle checkpoint."""
    specs = ["o/m@step300", "o/m@step100", "o/m@step200"]
    models = [_entry(s, fingerprint=s) for s in specs]
    checkpoints.annotate(models, specs)
    recs = []
    for s in specs:
        step = int(s.rsplit("p", 1)[1])
        for phase in ("C", "E"):
            for fam in ("q_proj", "k_proj"):
                na = s.endswith("200") and phase == "E" and fam == "k_proj"
                recs.append({"claim": "adj", "statement": "", "statistic": "", "model": s,
                             "phase": phase, "family": fam, "direction": "greater",
                             "min_effect": 0.05, "null": {"kind": "perm"},
                             "effect": None if na else step / 1000 + (fam == "k_proj") / 10,
                             "verdict": "N/A" if na else "SUPPORTED" if step > 150 else "REFUTED",
                             "nodeid": f"hypotheses/test_adj.py::test_adj[{s}-{phase}-{fam}]"})
    return {"schema": "strata.verdicts/1", "run": {"models": models}, "records": recs}


def test_the_html_plots_each_record_at_each_checkpoint_in_order():
    from reports import summary
    from reports.html import render_html
    doc = _doc()
    assert summary.models(doc) == ["o/m@step100", "o/m@step200", "o/m@step300"]
    html = render_html(doc)
    section = re.search(r'<section class="card" id="checkpoints-o-m">(.*?)</section>', html, re.S)
    assert section, "no checkpoint section"
    body = section[1]
    assert "step100, step200, step300" in body and checkpoints.BY_STEP in body
    svgs = re.findall(r"<svg class=\"checkpoints\".*?</svg>", body, re.S)
    assert len(svgs) == 2                              # one plot per phase: C, E
    for svg, phase in zip(svgs, ("C", "E")):
        for fam in ("q_proj", "k_proj"):
            pts = [(int(k), float(x), float(y)) for k, x, y in re.findall(
                rf'class="pt" data-line="{fam}" data-checkpoint="(\d)" cx="([\d.]+)" cy="([\d.]+)"',
                svg)]
            missing = phase == "E" and fam == "k_proj"
            assert [k for k, _, _ in pts] == ([0, 2] if missing else [0, 1, 2])
            xs = [x for _, x, _ in pts]
            assert xs == sorted(xs)                    # left to right in checkpoint order
            ys = [y for _, _, y in pts]
            assert ys == sorted(ys, reverse=True)      # effect grows with the step: up the plot
    # a point's fill is its verdict at that checkpoint: REFUTED at step100, SUPPORTED after
    first = re.findall(r'data-checkpoint="(\d)" [^>]*fill="(#[0-9a-f]{6})"', svgs[0])
    from reports.html import COLOURS
    assert {c for k, c in first if k == "0"} == {COLOURS["REFUTED"][1]}
    assert {c for k, c in first if k != "0"} == {COLOURS["SUPPORTED"][1]}


def test_two_revisions_two_fingerprints_two_columns(hub, tmp_path):
    """End to end: `--model org/name@step1000 --model org/name@step500` (given late first) on
    the weight claims, twins on: two run.models entries naming their revisions and commits, two
    fingerprints, two matrix columns in step order, the twins' records beside them, and the
    checkpoint section in the HTML."""
    root, commits = hub
    res = run_pytest([*WEIGHT_CLAIMS, "--model=org/pythia-tiny@step1000",
                      "--model=org/pythia-tiny@step500"], tmp_path / "cache",
                     tmp_path / "report", env={"HF_HUB_CACHE": str(root)})
    doc = records(tmp_path / "report")
    assert doc, res.stdout[-3000:]
    models = {m["spec"]: m for m in doc["run"]["models"]}
    early, late = models["org/pythia-tiny@step500"], models["org/pythia-tiny@step1000"]
    assert early["fingerprint"] != late["fingerprint"]
    for m, rev in ((early, "step500"), (late, "step1000")):
        assert (m["repo"], m["revision"], m["commit"]) == ("org/pythia-tiny", rev, commits[rev])
        twin = models[f"random:org/pythia-tiny@{rev}"]
        assert twin["role"] == "twin" and twin["revision"] == rev
    assert early["checkpoint"]["index"] == 0 and late["checkpoint"]["index"] == 1
    from reports import summary
    assert summary.models(doc) == ["org/pythia-tiny@step500", "org/pythia-tiny@step1000"]
    cols = {r["model"] for r in doc["records"]}
    assert cols == {"org/pythia-tiny@step500", "org/pythia-tiny@step1000"}
    assert all(r["twin"] for r in doc["records"] if r["verdict"] != "N/A")
    md = (tmp_path / "report" / "verdicts.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| claim"))
    assert header.index("step500") < header.index("step1000")
    html = (tmp_path / "report" / "verdicts.html").read_text()
    assert 'id="checkpoints-org-pythia-tiny"' in html
    assert f"at commit {commits['step500'][:12]}" in html
