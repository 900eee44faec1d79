"""Hugging Face hub ids, at a revision or not: the local HF cache first, a restricted download
when online.

``org/name@REV`` names a revision: a branch (Pythia's training checkpoints ``step1000``), a tag,
or a commit hash (all 40 hex digits). huggingface_hub resolves it, from the local cache's
``refs/<REV>`` file or ``snapshots/<commit>/`` folder when offline
(``snapshot_download(..., revision=REV, local_files_only=True)``); the snapshot folder's name is
the commit the model was read at.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from probes.errors import StrataError

WEIGHT_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.tiktoken"]
CONFIG_PATTERNS = ["config.json", "tokenizer*", "special_tokens_map.json", "*.model",
                   "vocab.*", "merges.txt"]


_REPO = r"[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*"
HUB_ID = re.compile(rf"^{_REPO}$")
# a git ref name (branch or tag, may hold '/') or a commit hash
HUB_REVISION = re.compile(rf"^(?P<repo>{_REPO})@(?P<revision>[A-Za-z0-9][A-Za-z0-9_.\-/]*)$")


@dataclass(frozen=True)
class HubSpec:
    repo: str
    revision: str | None = None   # None: the repository's default branch


def parse_hub_spec(spec: str) -> HubSpec | None:
    """``org/name`` or ``org/name@REV`` → its parts; None for anything else."""
    if HUB_ID.match(spec):
        return HubSpec(spec)
    m = HUB_REVISION.match(spec)
    if m and ".." not in m["revision"] and not m["revision"].endswith(("/", ".")):
        return HubSpec(m["repo"], m["revision"])
    return None


def fetch_command(repo_id: str, revision: str | None = None) -> str:
    rev = f" --revision {revision}" if revision else ""
    return (f"hf download {repo_id}{rev} --include '*.json' --include '*.safetensors' "
            f"--include '*.model' --include '*.txt'")


def offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except Exception:
        return False


def _not_available(repo_id: str, revision: str | None, why: str = "") -> StrataError:
    reason = f" ({why})" if why else ""
    what = f"model '{repo_id}' at revision '{revision}'" if revision else f"model '{repo_id}'"
    return StrataError(f"{what} is not in the local Hugging Face cache and cannot be "
                       f"downloaded here{reason}; fetch it with: "
                       f"{fetch_command(repo_id, revision)}")


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


def snapshot(repo_id: str, patterns: list[str], complete, revision: str | None = None) -> Path:
    """A local snapshot dir of ``repo_id`` (at ``revision``: branch, tag or commit; default
    branch if None) holding ``patterns``: the HF cache when it has a complete one, else a
    download (unless offline). The folder's name is the commit hash."""
    from huggingface_hub import snapshot_download
    try:
        local = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                       local_files_only=True))
        if complete(local):
            return local
    except Exception:
        pass
    if offline():
        raise _not_available(repo_id, revision, "HF_HUB_OFFLINE is set")
    try:
        local = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _not_available(repo_id, revision, f"{type(exc).__name__}: {first[:200]}") from None
    if not complete(local):
        at = f" at revision '{revision}'" if revision else ""
        raise StrataError(f"model '{repo_id}'{at} has no config.json and safetensors weights on "
                          f"the hub (Strata reads safetensors only)")
    return local


def hub_meta(hub: HubSpec, snapshot_dir: Path) -> dict:
    """What a model's ``meta`` (and the report's run.models entry) says of its hub origin."""
    return {"source": "hub", "repo_id": hub.repo, "revision": hub.revision,
            "commit": Path(snapshot_dir).name}


def open_hub(spec: str, cache=None):
    """``org/name`` or ``org/name@REV`` (see :func:`parse_hub_spec`)."""
    from probes.models.loaded import from_dir
    hub = parse_hub_spec(spec)
    d = snapshot(hub.repo, WEIGHT_PATTERNS, _weights_complete, hub.revision)
    # the HF cache names safetensors blobs by their sha256: the fingerprint reads no weights
    return from_dir(d, spec, meta=hub_meta(hub, d), cache=cache)


def resolve_config_only(spec: str) -> tuple[dict, Path | None, dict]:
    """The config, tokenizer dir and hub meta of a hub model (``org/name[@REV]``) without
    fetching its weights."""
    from probes.models.loaded import _has_tokenizer
    hub = parse_hub_spec(spec)
    d = snapshot(hub.repo, CONFIG_PATTERNS, lambda p: (p / "config.json").is_file(),
                 hub.revision)
    try:
        config = json.loads((d / "config.json").read_text())
    except ValueError as exc:
        raise StrataError(f"{d / 'config.json'} is not valid JSON: {exc}") from None
    return config, d if _has_tokenizer(d) else None, hub_meta(hub, d)
