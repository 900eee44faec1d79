"""Write an HF-format checkpoint directory (config.json + safetensors, optionally sharded).

Used by tests and benchmarks to turn a synthetic spec, a ``(config, state_dict)`` pair or any
:class:`~probes.models.loaded.LoadedModel` (e.g. a ``random:`` twin with real shapes) into a
directory that ``open_model(dir)`` and ``from_pretrained`` read. Tensors are produced and
written one shard at a time, so a large random checkpoint needs one shard's memory.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

_TOKENIZER_GLOBS = ("tokenizer*", "special_tokens_map.json", "vocab.*", "merges.txt",
                    "generation_config.json", "chat_template*")


def write_checkpoint(model_or_spec_state, directory, shards: int = 1,
                     dtype: torch.dtype | None = None) -> Path:
    """Write ``config.json`` and the tensors to ``directory`` (created; must be empty or new).

    ``model_or_spec_state``: a :class:`~probes.synthetic.SyntheticSpec`, a
    ``(config, state_dict)`` tuple, or a loaded model (anything with ``config``,
    ``tensor_names()`` and ``tensor(name)``). ``shards > 1`` splits the tensors, in order, into
    that many files of about equal bytes plus ``model.safetensors.index.json``. ``dtype``
    converts floating tensors (e.g. ``torch.bfloat16``); default keeps them.
    """
    from safetensors.torch import save_file

    config, names, get, size_of, tok_dir = _unpack(model_or_spec_state)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty")
    groups = _split(names, {n: size_of(n) for n in names}, max(1, int(shards)))
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        fname = ("model.safetensors" if len(groups) == 1
                 else f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors")
        tensors = {}
        for n in group:
            t = get(n).detach().contiguous()
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            tensors[n] = t
            total += t.numel() * t.element_size()
            weight_map[n] = fname
        tmp = out / f".{fname}.tmp"
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, out / fname)
        del tensors
    if len(groups) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    if tok_dir is not None:
        for pattern in _TOKENIZER_GLOBS:
            for f in Path(tok_dir).glob(pattern):
                if f.is_file():
                    shutil.copy2(f, out / f.name)
    return out


def _unpack(obj):
    from probes.synthetic import SyntheticSpec
    if isinstance(obj, SyntheticSpec) or (isinstance(obj, tuple) and len(obj) == 2):
        config, state = (obj.config, obj.state_dict) if isinstance(obj, SyntheticSpec) else obj
        return (config, list(state), state.__getitem__,
                lambda n: state[n].numel() * state[n].element_size(), None)
    if hasattr(obj, "tensor_names") and hasattr(obj, "tensor"):
        def size_of(n):  # from the shape, without producing the tensor
            numel = 1
            for d in obj.source.shape(n):
                numel *= d
            return numel
        return (obj.config, obj.tensor_names(), obj.tensor, size_of,
                getattr(obj, "tokenizer_dir", None))
    raise TypeError("write_checkpoint needs a SyntheticSpec, (config, state_dict) or a model")


def _split(names: list[str], sizes: dict[str, int], shards: int) -> list[list[str]]:
    shards = min(shards, len(names))
    total = sum(sizes.values())
    groups: list[list[str]] = [[]]
    acc = 0
    for n in names:
        # start a new shard once this one holds its share, keeping enough names for the rest
        if (groups[-1] and len(groups) < shards and acc >= total * len(groups) / shards):
            groups.append([])
        groups[-1].append(n)
        acc += sizes[n]
    while len(groups) < shards:  # tiny inputs: move single names to fill the count
        biggest = max((g for g in groups if len(g) > 1), key=len)
        groups.append([biggest.pop()])
    return groups
