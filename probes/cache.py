"""Content-addressed cache of probe results (SPEC §8).

key = sha256 of (probe id, probe version, model fingerprint, parameters). An entry is one
safetensors file of numpy arrays whose header metadata holds the JSON-able rest of the result
and the key's ingredients. Entries are written to a temp file in the same directory and
``os.replace``d into place, under a file lock per key, so parallel pytest-xdist workers compute
each entry once and a reader never sees half a file. An entry that fails to read, or whose
recorded ingredients differ from the request (another probe version), is recomputed.

Location: ``--cache-dir``, else ``$STRATA_CACHE_DIR``, else the user cache dir
(``~/.cache/strata`` on Linux). ``python -m probes.cache clear [DIR]`` empties it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from filelock import FileLock

CACHE_FORMAT = "strata.cache/1"


def default_cache_dir() -> Path:
    env = os.environ.get("STRATA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs
    return Path(platformdirs.user_cache_dir("strata"))


def cache_key(probe_id: str, version: str | int, fingerprint: str, params: Mapping) -> str:
    blob = json.dumps({"probe": probe_id, "version": str(version), "model": fingerprint,
                       "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


Result = dict  # str -> np.ndarray | JSON-able


class Cache:
    """Probe-result cache rooted at ``root``; ``refresh=True`` recomputes each key once."""

    def __init__(self, root: str | os.PathLike | None = None, refresh: bool = False):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.refresh = refresh
        self._memo: dict[str, Result] = {}
        self.hits = 0
        self.misses = 0

    # -- probe results -------------------------------------------------------------------
    def entry_path(self, probe_id: str, key: str) -> Path:
        return self.root / "probes" / probe_id / f"{key}.safetensors"

    def get_or_compute(self, probe_id: str, version: str | int, fingerprint: str,
                       params: Mapping, compute: Callable[[], Result]) -> Result:
        """The cached result for this key, computing and storing it if absent or unreadable."""
        key = cache_key(probe_id, version, fingerprint, params)
        if key in self._memo:
            return self._memo[key]
        ingredients = {"format": CACHE_FORMAT, "probe": probe_id, "version": str(version),
                       "model": fingerprint, "params": json.loads(json.dumps(params, default=str))}
        path = self.entry_path(probe_id, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            result = None if self.refresh else _read(path, ingredients)
            if result is None:
                self.misses += 1
                result = compute()
                _write(path, result, ingredients)
                # read back what was stored so a first run and a cached run see identical values
                result = _read(path, ingredients)
            else:
                self.hits += 1
        self._memo[key] = result
        return result

    # -- small derived documents -----------------------------------------------------------
    def get_or_build_json(self, kind: str, ingredients: Mapping, build: Callable[[], object]):
        """A small JSON document under ``kind/`` keyed by ``ingredients`` (e.g. a random twin's
        init plan, which otherwise costs a transformers import and a meta-device model build on
        every run): read when present with the same ingredients, else built and written
        atomically (a concurrent writer writes the same bytes)."""
        wanted = json.loads(json.dumps(ingredients, sort_keys=True, default=str))
        key = hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()
        path = self.root / kind / f"{key}.json"
        if not self.refresh:
            try:
                doc = json.loads(path.read_text())
                if doc["ingredients"] == wanted:
                    return doc["value"]
            except (OSError, ValueError, KeyError, TypeError):
                pass  # absent or unreadable: rebuild
        value = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = json.dumps({"ingredients": wanted, "value": value})
        _replace_atomically(path, lambda tmp: Path(tmp).write_text(doc))
        return value

    # -- converted checkpoints (GGUF → safetensors) ----------------------------------------
    def models_dir(self) -> Path:
        d = self.root / "models"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def clear(self) -> None:
        shutil.rmtree(self.root / "probes", ignore_errors=True)
        self._memo.clear()


def _split(result: Result) -> tuple[dict[str, np.ndarray], dict]:
    arrays, rest = {}, {}
    for k, v in result.items():
        if isinstance(v, np.ndarray) and v.dtype.kind in "fiub":
            arrays[k] = np.ascontiguousarray(v)
        else:
            rest[k] = v
    return arrays, rest


def _replace_atomically(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` a temp file beside ``path``, then ``os.replace`` it into place; on any
    failure the temp file is removed, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write(path: Path, result: Result, ingredients: dict) -> None:
    from safetensors.numpy import save_file
    arrays, rest = _split(result)
    meta = {"strata": json.dumps({**ingredients, "rest": rest}, default=_json_default)}
    _replace_atomically(path, lambda tmp: save_file(arrays, tmp, metadata=meta))


def _read(path: Path, ingredients: dict) -> Result | None:
    if not path.exists():
        return None
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {})["strata"])
            stored = {k: meta.get(k) for k in ingredients}
            if stored != ingredients:
                raise ValueError("cache entry from another version or key")
            result = {k: f.get_tensor(k) for k in f.keys()}
        result.update(meta.get("rest", {}))
        return result
    except Exception:
        # corrupt, truncated or foreign: never trusted, recomputed by the caller
        path.unlink(missing_ok=True)
        return None


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"cannot store {type(o).__name__} in a cache entry")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("clear", "where"):
        print("usage: python -m probes.cache {clear|where} [DIR]", file=sys.stderr)
        return 2
    cache = Cache(argv[1] if len(argv) > 1 else None)
    if argv[0] == "clear":
        cache.clear()
        print(f"cleared {cache.root / 'probes'}")
    else:
        print(cache.root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
