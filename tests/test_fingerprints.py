"""Content fingerprints: a cached result is never another model's (a fine-tune shares its base's
config, tensor names, shapes and dtypes; only the bytes tell them apart)."""

import hashlib
import os
import shutil
import warnings

import numpy as np
import torch

from probes import adjacent, filehash
from probes.cache import Cache
from probes.models import open_model
from probes.models.checkpoint import write_checkpoint
from probes.synthetic import get as synthetic_spec
from tests.test_plugin_e2e import WEIGHT_CLAIMS, records, run_pytest


def fine_tune(seed: int, scale: float = 0.05, name: str = "tiny-llama"):
    """A synthetic model's config and tensor names/shapes/dtypes, its weights nudged by seeded
    noise (what a fine-tune or a later training checkpoint looks like)."""
    spec = synthetic_spec(name)
    g = torch.Generator().manual_seed(seed)
    state = {n: t + scale * t.std() * torch.randn(t.shape, generator=g) if t.ndim == 2 else t.clone()
             for n, t in spec.state_dict.items()}
    return spec.config, state


def adjacent_cos(model, cache):
    res = cache.get_or_compute(adjacent.PROBE_ID, adjacent.VERSION, model.fingerprint, {},
                               lambda: adjacent.compute(model))
    return res


def test_same_shapes_other_weights_get_other_fingerprints_and_their_own_results(tmp_path):
    base = write_checkpoint(fine_tune(1), tmp_path / "base")
    tuned = write_checkpoint(fine_tune(2), tmp_path / "tuned")
    assert (base / "config.json").read_bytes() == (tuned / "config.json").read_bytes()
    cache = Cache(tmp_path / "cache")
    m_base, m_tuned = open_model(str(base), cache), open_model(str(tuned), cache)
    assert m_base.fingerprint != m_tuned.fingerprint
    r_base, r_tuned = adjacent_cos(m_base, cache), adjacent_cos(m_tuned, cache)
    assert cache.misses == 2 and cache.hits == 0
    # each result is its own model's: equal to a computation on a fresh cache
    fresh = adjacent.compute(open_model(str(tuned), Cache(tmp_path / "fresh")))
    for fam in ("q_proj", "down_proj"):
        key = f"{fam}/gram"
        # the same float32 Gram pass on the same weights (bitwise equal: rtol=1e-6 is only room
        # for another machine's kernels, ≪ the fine-tune's O(1e-2) change asserted next)
        assert np.allclose(r_tuned[key], fresh[key], rtol=1e-6, atol=1e-9)
        assert not np.allclose(r_base[key], r_tuned[key], rtol=1e-6, atol=1e-9)


def test_a_checkpoint_rewritten_in_place_loses_its_entries(tmp_path):
    d = write_checkpoint(fine_tune(1), tmp_path / "ckpt")
    cache = Cache(tmp_path / "cache")
    first = open_model(str(d), cache)
    before = adjacent_cos(first, cache)
    # other weights of the same shapes written over the same file (same name, same size)
    from safetensors.torch import save_file
    size = (d / "model.safetensors").stat().st_size
    save_file(fine_tune(3)[1], str(d / "model.safetensors"), metadata={"format": "pt"})
    assert (d / "model.safetensors").stat().st_size == size
    cache2 = Cache(tmp_path / "cache")
    second = open_model(str(d), cache2)
    assert second.fingerprint != first.fingerprint
    after = adjacent_cos(second, cache2)
    assert cache2.misses == 1 and cache2.hits == 0
    assert not np.allclose(before["q_proj/gram"], after["q_proj/gram"])


def test_end_to_end_two_checkpoints_one_cache(tmp_path):
    """The reported bug: `pytest hypotheses/ --model=DIR` on a base and its fine-tune, one
    cache — the second run must report its own numbers and its own fingerprint."""
    base = write_checkpoint(fine_tune(1, 0.5, "planted-adjacent"), tmp_path / "base")
    tuned = write_checkpoint(fine_tune(2, 0.5, "planted-adjacent"), tmp_path / "tuned")
    cache = tmp_path / "cache"
    for name, d in (("base", base), ("tuned", tuned)):
        run_pytest([*WEIGHT_CLAIMS, f"--model={d}", "--no-twin"], cache, tmp_path / name)
    run_pytest([*WEIGHT_CLAIMS, f"--model={tuned}", "--no-twin"], tmp_path / "fresh-cache",
               tmp_path / "tuned-fresh")
    a, b, b_fresh = (records(tmp_path / n) for n in ("base", "tuned", "tuned-fresh"))
    fp = lambda doc: doc["run"]["models"][0]["fingerprint"]
    assert fp(a) != fp(b) == fp(b_fresh)
    assert b["run"]["models"][0]["fingerprint_method"]["kind"] == "content"
    obs = lambda doc: {(r["claim"], r["phase"], r["family"]): r["observed"] for r in doc["records"]
                       if r["observed"] is not None}
    assert obs(b) == obs(b_fresh)
    shared = [k for k in obs(a) if k in obs(b)]
    assert len(shared) > 20
    same = [k for k in shared if obs(a)[k] == obs(b)[k]]
    assert len(same) <= len(shared) // 10, same   # was 93 of 119 identical before the fix


def test_remembered_digest_reads_nothing_and_a_changed_stat_rehashes(tmp_path, monkeypatch):
    monkeypatch.setattr(filehash, "RACY_NS", 0)   # trust entries at once (no 2 s wait)
    f = tmp_path / "w.bin"
    f.write_bytes(os.urandom(1 << 16))
    index = filehash.FileHashIndex(tmp_path / "idx")
    (d1,) = filehash.digest_files([f], index)
    assert d1.how == "hashed" and d1.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()

    def no_reads(*a, **k):
        raise AssertionError("a remembered file was read again")

    monkeypatch.setattr(filehash, "sha256_file", no_reads)
    (d2,) = filehash.digest_files([f], index)
    assert (d2.how, d2.sha256) == ("remembered", d1.sha256)
    monkeypatch.undo()
    monkeypatch.setattr(filehash, "RACY_NS", 0)
    # same size, same inode, new bytes; mtime moved on as any later write moves it
    st = f.stat()
    with open(f, "r+b") as fh:
        fh.write(b"\xff" * 64)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    (d3,) = filehash.digest_files([f], index)
    assert d3.how == "hashed" and d3.sha256 == hashlib.sha256(f.read_bytes()).hexdigest() != d1.sha256


def test_a_file_changed_close_to_its_hashing_is_hashed_again(tmp_path):
    # git's racily-clean case: a write within the timestamp granularity of the hash could keep
    # the same stat, so an entry recorded within RACY_NS of the file's mtime is not trusted
    f = tmp_path / "w.bin"
    f.write_bytes(b"x" * 1000)
    index = filehash.FileHashIndex(tmp_path / "idx")
    assert filehash.digest_files([f], index)[0].how == "hashed"
    assert index.lookup(f) is None
    assert filehash.digest_files([f], index)[0].how == "hashed"


def test_hf_cache_blobs_are_named_by_content(tmp_path):
    """A hub snapshot's safetensors are symlinks to blobs/<sha256>: the fingerprint reads no
    weights, and equals the fingerprint of a plain local copy of the same files."""
    local = write_checkpoint(fine_tune(1), tmp_path / "local")
    repo = tmp_path / "hub" / "models--org--name"
    blobs, snap = repo / "blobs", repo / "snapshots" / ("a" * 40)
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in local.iterdir():
        sha = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, blobs / sha)
        os.symlink(os.path.relpath(blobs / sha, snap), snap / f.name)
    cache = Cache(tmp_path / "cache")
    hub, plain = open_model(str(snap), cache), open_model(str(local), cache)
    assert hub.meta["fingerprint_method"]["hf-blob"] == 1
    assert plain.meta["fingerprint_method"]["hashed"] == 1
    assert hub.fingerprint == plain.fingerprint


def test_report_says_how_and_compare_flags_other_weights(tmp_path):
    from reports.api import compare_reports
    base = write_checkpoint(fine_tune(1), tmp_path / "m")
    run_pytest([*WEIGHT_CLAIMS, f"--model={base}", "--no-twin"], tmp_path / "c", tmp_path / "r1")
    shutil.rmtree(base)
    write_checkpoint(fine_tune(2), base)   # the same path now holds other weights
    run_pytest([*WEIGHT_CLAIMS, f"--model={base}", "--no-twin"], tmp_path / "c", tmp_path / "r2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        diff = compare_reports(tmp_path / "r1", tmp_path / "r2", changed_only=False)
    assert any("saw different weights" in str(w.message) for w in caught)
    assert len(diff) > 0 and not diff["same_weights"].any()
    same = compare_reports(tmp_path / "r1", tmp_path / "r1", changed_only=False)
    assert same["same_weights"].all()
    html = (tmp_path / "r2" / "verdicts.html").read_text()
    assert "sha256 of config.json and every weight file" in html


def test_the_twin_of_a_directory_reads_no_weights(tmp_path, monkeypatch):
    d = write_checkpoint(fine_tune(1), tmp_path / "m")
    cache = Cache(tmp_path / "cache")
    expected = open_model(f"random:{d}", cache)

    def no_reads(*a, **k):
        raise AssertionError("the twin hashed the base's weights")

    monkeypatch.setattr(filehash, "sha256_file", no_reads)
    (d / "model.safetensors").write_bytes(b"\0" * 16)   # weights unreadable: never touched
    twin = open_model(f"random:{d}", Cache(tmp_path / "other-cache"))
    assert twin.fingerprint == expected.fingerprint and twin.is_twin
    assert torch.equal(twin.weight(3, "q_proj"), expected.weight(3, "q_proj"))
