import json
import threading

import numpy as np

from probes.cache import Cache, cache_key


def test_roundtrip_and_hit(tmp_path):
    c = Cache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"x": np.arange(5.0), "names": ["a", "b"], "n": 3}

    r1 = c.get_or_compute("p", 1, "fp", {"k": 1}, compute)
    r2 = Cache(tmp_path).get_or_compute("p", 1, "fp", {"k": 1}, compute)
    assert len(calls) == 1
    assert np.array_equal(r1["x"], r2["x"]) and r2["names"] == ["a", "b"] and r2["n"] == 3


def test_key_depends_on_every_ingredient():
    base = cache_key("p", 1, "fp", {"a": 1})
    assert len({base, cache_key("q", 1, "fp", {"a": 1}), cache_key("p", 2, "fp", {"a": 1}),
                cache_key("p", 1, "fp2", {"a": 1}), cache_key("p", 1, "fp", {"a": 2})}) == 5


def test_corrupt_entry_is_recomputed(tmp_path):
    c = Cache(tmp_path)
    c.get_or_compute("p", 1, "fp", {}, lambda: {"x": np.ones(3)})
    path = c.entry_path("p", cache_key("p", 1, "fp", {}))
    path.write_bytes(path.read_bytes()[:20])  # truncated
    r = Cache(tmp_path).get_or_compute("p", 1, "fp", {}, lambda: {"x": np.zeros(3)})
    assert np.array_equal(r["x"], np.zeros(3))


def test_foreign_version_entry_is_not_trusted(tmp_path):
    c = Cache(tmp_path)
    c.get_or_compute("p", 1, "fp", {}, lambda: {"x": np.ones(3)})
    path = c.entry_path("p", cache_key("p", 1, "fp", {}))
    # rewrite the entry's metadata as if another probe version had written it at this key
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open
    with safe_open(str(path), "numpy") as f:
        meta = json.loads(f.metadata()["strata"])
    meta["version"] = "0"
    save_file(load_file(str(path)), str(path), metadata={"strata": json.dumps(meta)})
    r = Cache(tmp_path).get_or_compute("p", 1, "fp", {}, lambda: {"x": np.full(3, 7.0)})
    assert np.array_equal(r["x"], np.full(3, 7.0))


def test_refresh_recomputes(tmp_path):
    Cache(tmp_path).get_or_compute("p", 1, "fp", {}, lambda: {"x": np.ones(2)})
    r = Cache(tmp_path, refresh=True).get_or_compute("p", 1, "fp", {}, lambda: {"x": np.zeros(2)})
    assert np.array_equal(r["x"], np.zeros(2))


def test_failed_compute_leaves_nothing(tmp_path):
    c = Cache(tmp_path)

    def boom():
        raise RuntimeError("x")

    try:
        c.get_or_compute("p", 1, "fp", {}, boom)
    except RuntimeError:
        pass
    assert not list((tmp_path / "probes" / "p").glob("*.safetensors"))
    assert not list((tmp_path / "probes" / "p").glob(".tmp-*"))


def test_parallel_writers_compute_once(tmp_path):
    calls = []
    lock = threading.Lock()

    def compute():
        with lock:
            calls.append(1)
        return {"x": np.arange(1000.0)}

    threads = [threading.Thread(target=lambda: Cache(tmp_path).get_or_compute("p", 1, "f", {}, compute))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1


def test_json_documents_are_keyed_by_their_ingredients_and_rebuilt_when_unreadable(tmp_path):
    cache, built = Cache(tmp_path), []

    def build():
        built.append(1)
        return {"rows": [1, 2.5, "x"]}

    assert cache.get_or_build_json("docs", {"a": 1}, build) == {"rows": [1, 2.5, "x"]}
    assert Cache(tmp_path).get_or_build_json("docs", {"a": 1}, build) == {"rows": [1, 2.5, "x"]}
    assert len(built) == 1
    Cache(tmp_path).get_or_build_json("docs", {"a": 2}, build)  # other ingredients: a new doc
    assert len(built) == 2
    (path,) = [p for p in (tmp_path / "docs").glob("*.json") if '"a": 1' in p.read_text()]
    path.write_text("{not json")
    assert Cache(tmp_path).get_or_build_json("docs", {"a": 1}, build) == {"rows": [1, 2.5, "x"]}
    assert len(built) == 3 and json.loads(path.read_text())["ingredients"] == {"a": 1}
    assert not list((tmp_path / "docs").glob(".tmp-*"))
