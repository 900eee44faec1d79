"""Hugging Face hub ids: the local HF cache first, a restricted download when online."""

from __future__ import annotations

import json
import os
from pathlib import Path

from probes.errors import StrataError

WEIGHT_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.tiktoken"]
CONFIG_PATTERNS = ["config.json", "tokenizer*", "special_tokens_map.json", "*.model",
                   "vocab.*", "merges.txt"]


def fetch_command(repo_id: str) -> str:
    return (f"hf download {repo_id} --include '*.json' --include '*.safetensors' "
            f"--include '*.model' --include '*.txt'")


def offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except Exception:
        return False


def _not_available(repo_id: str, why: str = "") -> StrataError:
    reason = f" ({why})" if why else ""
    return StrataError(f"model '{repo_id}' is not in the local Hugging Face cache and cannot be "
                       f"downloaded here{reason}; fetch it with: {fetch_command(repo_id)}")


def _weights_complete(d: Path) -> bool:
    if not (d / "config.json").is_file():
        return False
    if (d / "model.safetensors").is_file():
        return True
    index = d / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError):
            return False
        return all((d / s).is_file() for s in shards)
    return any(d.glob("*.safetensors")) or any(d.glob("*.bin"))


def snapshot(repo_id: str, patterns: list[str], complete) -> Path:
    """A local snapshot dir of ``repo_id`` holding ``patterns``: the HF cache when it has a
    complete one, else a download (unless offline)."""
    from huggingface_hub import snapshot_download
    try:
        local = Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
        if complete(local):
            return local
    except Exception:
        pass
    if offline():
        raise _not_available(repo_id, "HF_HUB_OFFLINE is set")
    try:
        local = Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _not_available(repo_id, f"{type(exc).__name__}: {first[:200]}") from None
    if not complete(local):
        raise StrataError(f"model '{repo_id}' has no config.json and safetensors weights on "
                          f"the hub (Strata reads safetensors only)")
    return local


def open_hub(repo_id: str, cache=None):
    from probes.models.loaded import from_dir
    d = snapshot(repo_id, WEIGHT_PATTERNS, _weights_complete)
    # the HF cache names safetensors blobs by their sha256: the fingerprint reads no weights
    return from_dir(d, repo_id, meta={"source": "hub", "repo_id": repo_id}, cache=cache)


def resolve_config_only(repo_id: str) -> tuple[dict, Path | None]:
    """The config (and tokenizer dir) of a hub model without fetching its weights."""
    from probes.models.loaded import _has_tokenizer
    d = snapshot(repo_id, CONFIG_PATTERNS, lambda p: (p / "config.json").is_file())
    try:
        config = json.loads((d / "config.json").read_text())
    except ValueError as exc:
        raise StrataError(f"{d / 'config.json'} is not valid JSON: {exc}") from None
    return config, d if _has_tokenizer(d) else None
