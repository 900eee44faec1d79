"""sha256 of checkpoint files, each file hashed once per version of it.

A model's fingerprint must change whenever its weights do (a fine-tune shares its base's config,
tensor names, shapes and dtypes, so only the bytes tell them apart). Hashing an 8 GB checkpoint
costs seconds, so each file's digest is remembered the way git's index avoids re-reading
unchanged files: keyed by what changes when the file changes — real path, size, mtime and ctime
in ns, inode and device. A file rewritten in place gets a new mtime/ctime (and usually a new
inode), so it is hashed again.

Racy entries (git's "racily clean" problem): a file modified within the filesystem's timestamp
granularity of the moment it was hashed could keep the same stat. A remembered digest is only
trusted when the file's mtime and ctime lie at least :data:`RACY_NS` before the moment the
digest was recorded; otherwise the file is hashed again.

Where a file is already named by its content, nothing is read: the Hugging Face cache stores LFS
files (safetensors) as ``blobs/<sha256>`` behind the snapshot's symlinks, so the blob's name is
the file's sha256 — the same digest a hash of a local copy gives, so one checkpoint has one
fingerprint wherever it lies.

The remembered digests live in ``<cache>/file-hashes/``, one small JSON file per real path,
written atomically; without a cache directory nothing is remembered.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

INDEX_FORMAT = "strata.filehash/1"
RACY_NS = 2_000_000_000
CHUNK = 8 << 20            # bytes per read: large reads keep the hash at memory speed
_SHA256_NAME = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class FileDigest:
    """The sha256 of one file and how it was obtained: ``hashed`` (read now), ``remembered``
    (same file version hashed before) or ``hf-blob`` (named by content in the HF cache)."""

    path: Path
    sha256: str
    how: str
    size: int
    stat: dict | None = None      # the file version hashed (``hashed`` only)
    hashed_at_ns: int = 0


def _stat_key(path: Path) -> tuple[str, dict]:
    real = os.path.realpath(path)
    st = os.stat(real)
    return real, {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
                  "ino": st.st_ino, "dev": st.st_dev}


def hf_blob_sha256(path: Path) -> str | None:
    """The sha256 a Hugging Face cache blob is named by, when ``path`` is a snapshot symlink
    into ``.../blobs/<64 hex digits>`` (LFS files; small git files are named by a 40-digit
    git sha1 and are hashed instead)."""
    if not os.path.islink(path):
        return None
    real = Path(os.path.realpath(path))
    if real.parent.name == "blobs" and _SHA256_NAME.match(real.name):
        return real.name
    return None


def sha256_file(path: Path, progress=None) -> str:
    """sha256 of a file's bytes, read in :data:`CHUNK` blocks into one reused buffer (hashlib
    releases the GIL on large updates, so two files hash on two cores)."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
            if progress is not None:
                progress.update(n)
    return h.hexdigest()


class FileHashIndex:
    """Remembered digests under ``root`` (``None``: remember nothing)."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root is not None else None

    def _entry(self, real: str) -> Path:
        return self.root / (hashlib.sha256(real.encode()).hexdigest()[:32] + ".json")

    def lookup(self, path: Path) -> str | None:
        if self.root is None:
            return None
        real, stat = _stat_key(path)
        try:
            doc = json.loads(self._entry(real).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT \
                or doc.get("path") != real or doc.get("stat") != stat:
            return None
        recorded = doc.get("recorded_ns", 0)
        if max(stat["mtime_ns"], stat["ctime_ns"]) > recorded - RACY_NS:
            return None   # changed too close to when it was hashed: cannot tell, hash again
        sha = doc.get("sha256")
        return sha if isinstance(sha, str) and _SHA256_NAME.match(sha) else None

    def remember(self, digest: FileDigest) -> None:
        """Store a freshly hashed digest for the file version it was read from (skipped if the
        file changed while it was hashed). A cache that cannot be written remembers nothing."""
        if self.root is None or digest.how != "hashed":
            return
        real, stat_after = _stat_key(digest.path)
        if stat_after != digest.stat:
            return
        from probes.cache import write_json_atomically
        doc = {"format": INDEX_FORMAT, "path": real, "stat": digest.stat,
               "sha256": digest.sha256, "recorded_ns": digest.hashed_at_ns}
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_json_atomically(self._entry(real), doc)
        except OSError:
            pass


def digest_files(paths: list[Path], index: FileHashIndex, desc: str = "hashing",
                 remember: bool = True) -> list[FileDigest]:
    """The sha256 of each file in ``paths`` (in order): from its HF blob name, from ``index``,
    or read now — on two threads, with a progress bar over the bytes still to hash. Fresh
    digests are remembered in ``index`` unless ``remember=False`` (a caller that first checks
    the file, e.g. converts it, then calls ``index.remember``)."""
    out: dict[int, FileDigest] = {}
    todo = []
    for i, p in enumerate(paths):
        p = Path(p)
        blob = hf_blob_sha256(p)
        size = os.stat(p).st_size
        if blob is not None:
            out[i] = FileDigest(p, blob, "hf-blob", size)
            continue
        known = index.lookup(p)
        if known is not None:
            out[i] = FileDigest(p, known, "remembered", size)
        else:
            todo.append((i, p, size))
    if todo:
        from probes.progress import progress
        total = sum(size for _, _, size in todo)
        with progress(total, f"{desc} ({len(todo)} files)", unit="B", unit_scale=True) as bar:
            def one(item):
                i, p, size = item
                _, stat = _stat_key(p)
                started = time.time_ns()
                digest = FileDigest(p, sha256_file(p, bar), "hashed", size, stat, started)
                if remember:
                    index.remember(digest)
                return i, digest
            with ThreadPoolExecutor(max_workers=min(2, len(todo))) as pool:
                for i, d in pool.map(one, todo):
                    out[i] = d
    return [out[i] for i in range(len(paths))]
