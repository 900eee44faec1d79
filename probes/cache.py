"""Content-addressed cache of probe results (SPEC §8).

key = sha256 of (probe id, probe version, model fingerprint, parameters, the major.minor
versions of the numerical libraries). The model fingerprint covers the weights' content
(:mod:`probes.filehash`), so two checkpoints that differ only in weight values never share an
entry. An entry is one safetensors file of numpy arrays whose header metadata holds the JSON-able
rest of the result, the key's ingredients and a sha256 checksum over both.

Faults, and what each does:

* a crash (even SIGKILL) while computing or writing: entries are written to a temp file in the
  same directory and ``os.replace``d into place, so a reader never sees half a file; a crashed
  writer's temp file is never read (and is swept away after a day);
* parallel workers or two sessions on one cache: a file lock per key, so each entry is computed
  once; where the filesystem refuses locks (some network filesystems) a one-time warning says
  so and the run goes on unlocked (entries stay whole; a key may be computed twice);
* an entry that fails to read, whose checksum does not match its bytes, or whose ingredients
  differ from the request (another probe version): recomputed, never trusted;
* a cache directory that cannot be written (read-only, full disk): a one-time warning, and the
  run goes on computing without caching; nothing half-written is left.

Entries, conversions and lock files get the process's umask modes, so a cache on a shared disk
is readable (and, with a group-writable umask, writable) by colleagues.

Location: ``--cache-dir``, else ``$STRATA_CACHE_DIR``, else the user cache dir
(``~/.cache/strata`` on Linux). ``python -m probes.cache clear [DIR]`` empties it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from filelock import FileLock

CACHE_FORMAT = "strata.cache/2"   # /2: checksum over arrays and metadata
# libraries whose numerics a probe result depends on: an upgrade (major.minor) re-computes
NUMERIC_LIBRARIES = ("torch", "numpy", "scipy", "transformers")
STALE_TEMP_S = 24 * 3600
# errors that mean "this directory cannot take writes", not "the code is wrong"
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}


class CacheWarning(UserWarning):
    """The cache degraded (not writable, no file locks); results stay correct."""


@lru_cache(maxsize=1)
def _library_versions() -> tuple[tuple[str, str], ...]:
    out = {}
    for name in NUMERIC_LIBRARIES:
        try:
            out[name] = ".".join(metadata.version(name).split(".")[:2])
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return tuple(out.items())


def library_versions() -> dict[str, str]:
    """major.minor of each of :data:`NUMERIC_LIBRARIES` (read from package metadata once:
    imports nothing)."""
    return dict(_library_versions())


def umask() -> int:
    """The process's umask, read without changing it where Linux shows it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_shareable(path: str | os.PathLike) -> None:
    """Give a file (0666) or directory (0777) the modes the umask allows: ``mkstemp`` and
    ``mkdtemp`` make private ones (0600/0700), which a colleague sharing the cache cannot read."""
    base = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, base & ~umask())


def default_cache_dir() -> Path:
    env = os.environ.get("STRATA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs
    return Path(platformdirs.user_cache_dir("strata"))


def _ingredients(probe_id: str, version: str | int, fingerprint: str, params: Mapping) -> dict:
    return {"format": CACHE_FORMAT, "probe": probe_id, "version": str(version),
            "model": fingerprint, "params": json.loads(json.dumps(params, default=str)),
            "libraries": library_versions()}


def cache_key(probe_id: str, version: str | int, fingerprint: str, params: Mapping) -> str:
    blob = json.dumps(_ingredients(probe_id, version, fingerprint, params), sort_keys=True)
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
        self.writable = True        # False once a write failed: compute without caching
        self.locking = True         # False once the filesystem refused a lock
        self.notices: list[str] = []

    # -- probe results -------------------------------------------------------------------
    def entry_path(self, probe_id: str, key: str) -> Path:
        return self.root / "probes" / probe_id / f"{key}.safetensors"

    def get_or_compute(self, probe_id: str, version: str | int, fingerprint: str,
                       params: Mapping, compute: Callable[[], Result]) -> Result:
        """The cached result for this key, computing and storing it if absent or unreadable."""
        ingredients = _ingredients(probe_id, version, fingerprint, params)
        key = hashlib.sha256(json.dumps(ingredients, sort_keys=True).encode()).hexdigest()
        if key in self._memo:
            return self._memo[key]
        path = self.entry_path(probe_id, key)
        if self.writable:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self._unwritable(exc, path.parent)
        with self._lock(path):
            result = None if self.refresh else _read(path, ingredients)
            if result is None:
                self.misses += 1
                result = compute()
                stored = False
                if self.writable:
                    try:
                        _write(path, result, ingredients)
                        stored = True
                    except OSError as exc:
                        self._unwritable(exc, path.parent)
                # read back what was stored (or its in-memory round trip) so a first run, a
                # cached run and an uncached run see identical values
                result = _read(path, ingredients) if stored else _roundtrip(result, ingredients)
            else:
                self.hits += 1
        self._memo[key] = result
        return result

    def cached(self, probe_id: str, version: str | int, fingerprint: str,
               params: Mapping) -> Result | None:
        """The valid entry for this key (kept for :meth:`get_or_compute`), or None; computes
        nothing and takes no lock. None under ``refresh``."""
        ingredients = _ingredients(probe_id, version, fingerprint, params)
        key = hashlib.sha256(json.dumps(ingredients, sort_keys=True).encode()).hexdigest()
        if key in self._memo:
            return self._memo[key]
        if self.refresh:
            return None
        result = _read(self.entry_path(probe_id, key), ingredients)
        if result is not None:
            self._memo[key] = result
        return result

    def forget(self) -> None:
        """Drop the results held in memory (entries on disk stay)."""
        self._memo.clear()

    # -- degraded modes --------------------------------------------------------------------
    def _notice(self, text: str) -> None:
        if text not in self.notices:
            self.notices.append(text)
            warnings.warn(CacheWarning(text), stacklevel=3)

    def _unwritable(self, exc: OSError, where: Path) -> None:
        if exc.errno not in _UNWRITABLE:
            raise exc
        self.writable = False
        self._notice(f"cache {self.root} cannot be written ({where}: "
                     f"{exc.strerror or exc}); results are computed but not cached — free "
                     f"space or pass --cache-dir to a writable directory")

    def _lock(self, path: Path):
        """The per-key file lock, acquired; a no-op where the cache cannot be written or the
        filesystem has no working locks (said once)."""
        if not (self.writable and self.locking):
            return nullcontext()
        try:
            held = FileLock(str(path) + ".lock").acquire()   # released when the with-block exits
        except OSError as exc:
            if exc.errno in _UNWRITABLE:
                self._unwritable(exc, path.parent)
            elif exc.errno in _NO_LOCKS:
                self.locking = False
                self._notice(f"the filesystem of cache {self.root} refuses file locks "
                             f"({exc.strerror or exc}); going on without them: entries stay "
                             f"whole, but parallel workers may compute one twice")
            else:
                raise
            return nullcontext()
        _sweep_stale_temps(path.parent)
        return held

    # -- small derived documents -----------------------------------------------------------
    def get_or_build_json(self, kind: str, ingredients: Mapping, build: Callable[[], object]):
        """A small JSON document under ``kind/`` keyed by ``ingredients`` (e.g. a random twin's
        init plan, which otherwise costs a transformers import and a meta-device model build on
        every run): read when present with the same ingredients, else built and written
        atomically (a concurrent writer writes the same bytes). Such a document is a function
        of its ingredients alone (no probe's result), so ``refresh`` — which recomputes probe
        results — reads it too."""
        wanted = json.loads(json.dumps(ingredients, sort_keys=True, default=str))
        key = hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()
        path = self.root / kind / f"{key}.json"
        try:
            doc = json.loads(path.read_text())
            if doc["ingredients"] == wanted:
                return doc["value"]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # absent or unreadable: rebuild
        value = build()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomically(path, {"ingredients": wanted, "value": value})
        except OSError as exc:
            self._unwritable(exc, path.parent)
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


def _sweep_stale_temps(directory: Path) -> None:
    """Remove temp files a killed writer left (older than :data:`STALE_TEMP_S`: a live writer's
    temp file is younger). They are never read; this only frees their space."""
    cutoff = time.time() - STALE_TEMP_S
    try:
        for tmp in directory.glob(".tmp-*"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
            except OSError:
                pass
    except OSError:
        pass


def _replace_atomically(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` a temp file beside ``path``, flush it to disk, give it the umask's mode,
    then ``os.replace`` it into place; on any failure the temp file is removed, so a reader
    never sees half a file (and a crash mid-write leaves only an unread temp file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        make_shareable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomically(path: Path, doc) -> None:
    """A small JSON document written whole or not at all (see :func:`_replace_atomically`)."""
    text = json.dumps(doc)
    _replace_atomically(path, lambda tmp: Path(tmp).write_text(text))


def _checksum(arrays: Mapping[str, np.ndarray], meta_json: str) -> str:
    """sha256 over the metadata JSON and every array's name, dtype, shape and bytes (in name
    order), hashed from the arrays' memory without copies."""
    h = hashlib.sha256()
    h.update(meta_json.encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"\0{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(memoryview(a.reshape(-1)).cast("B") if a.size else b"")
    return h.hexdigest()


def _encode(result: Result, ingredients: dict) -> tuple[dict[str, np.ndarray], dict]:
    arrays, rest = _split(result)
    meta_json = json.dumps({**ingredients, "rest": rest}, default=_json_default)
    return arrays, {"strata": meta_json, "strata_sha256": _checksum(arrays, meta_json)}


def _write(path: Path, result: Result, ingredients: dict) -> None:
    from safetensors.numpy import save_file
    arrays, meta = _encode(result, ingredients)
    _replace_atomically(path, lambda tmp: save_file(arrays, tmp, metadata=meta))


def _decode(meta: dict, arrays: dict[str, np.ndarray], ingredients: dict) -> Result:
    """The stored result, after checking the checksum and the ingredients (ValueError)."""
    meta_json = meta["strata"]
    if _checksum(arrays, meta_json) != meta.get("strata_sha256"):
        raise ValueError("cache entry's checksum does not match its bytes")
    doc = json.loads(meta_json)
    if {k: doc.get(k) for k in ingredients} != ingredients:
        raise ValueError("cache entry from another version or key")
    result = dict(arrays)
    result.update(doc.get("rest", {}))
    return result


def _read(path: Path, ingredients: dict) -> Result | None:
    if not path.exists():
        return None
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
        return _decode(meta, arrays, ingredients)
    except Exception:
        # corrupt, truncated, altered or foreign: never trusted, recomputed by the caller
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass   # a read-only cache: left in place, still never trusted
        return None


def _roundtrip(result: Result, ingredients: dict) -> Result:
    """What :func:`_read` would return for ``result``, without a file (an uncached run)."""
    from safetensors.numpy import load, save
    arrays, meta = _encode(result, ingredients)
    return _decode(meta, load(save(arrays, metadata=meta)), ingredients)


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
