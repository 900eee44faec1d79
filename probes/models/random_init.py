"""The architecture's own initialisation, one tensor at a time (``random:`` twins, synthetic models).

transformers initialises a causal LM as ``PreTrainedModel._init_weights`` does: every
``nn.Linear`` and ``nn.Embedding`` weight ~ N(0, initializer_range²) i.i.d., biases 0, RMSNorm
gains 1 — except gemma, whose norms compute ``x·(1 + w)`` and so store ``w = 0``. We reproduce
that distribution tensor by tensor, without building the model: the tensor names and shapes come
from instantiating the HF class on the ``meta`` device (no memory), and each tensor is drawn from
its own generator seeded by a stable hash of ``(salt, name)``. So a tensor can be generated
alone, in any order, in any process, and comes out bit-identical.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache

import torch

from probes.errors import StrataError

NORMAL, ONES, ZEROS = "normal", "ones", "zeros"


@dataclass(frozen=True)
class TensorInit:
    """How one parameter is initialised."""

    shape: tuple[int, ...]
    kind: str  # normal | ones | zeros
    std: float = 0.0


def hf_config(config: dict):
    """A transformers ``PretrainedConfig`` from a config.json dict."""
    from transformers import AutoConfig
    cfg = dict(config)
    model_type = cfg.pop("model_type", None)
    if not model_type:
        raise StrataError("config has no 'model_type'; cannot build the model")
    for key in ("transformers_version", "_name_or_path"):
        cfg.pop(key, None)
    return AutoConfig.for_model(model_type, **cfg)


@lru_cache(maxsize=32)
def _plan_cached(config_json: str) -> tuple[tuple[str, TensorInit], ...]:
    from transformers import AutoModelForCausalLM
    config = json.loads(config_json)
    cfg = hf_config(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    std = float(_initializer_range(config))
    gemma = str(config.get("model_type", "")).startswith("gemma")
    owner = dict(model.named_modules())
    plan = []
    # remove_duplicate=True drops tied parameters (lm_head when tie_word_embeddings)
    for name, param in model.named_parameters():
        module_name, _, pname = name.rpartition(".")
        module = owner[module_name]
        if pname == "bias":
            init = TensorInit(tuple(param.shape), ZEROS)
        elif isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            init = TensorInit(tuple(param.shape), NORMAL, std)
        elif "norm" in type(module).__name__.lower():
            init = TensorInit(tuple(param.shape), ZEROS if gemma else ONES)
        else:
            raise StrataError(f"no known initialisation for parameter {name} "
                              f"({type(module).__name__})")
        plan.append((name, init))
    return tuple(plan)


def _initializer_range(config: dict) -> float:
    if "initializer_range" in config:
        return config["initializer_range"]
    text = config.get("text_config") or {}
    return text.get("initializer_range", 0.02)


PLAN_FORMAT = "strata.init-plan/1"


def init_plan(config: dict, cache=None) -> dict[str, TensorInit]:
    """Every parameter the HF causal-LM class for ``config`` holds (tied copies excluded),
    in the model's parameter order, with its init. With a :class:`~probes.cache.Cache` the plan
    is stored there, keyed by the config and the transformers version (the classes define the
    names and shapes), so a cached run neither imports transformers nor builds the model."""
    config_json = json.dumps(config, sort_keys=True, default=str)
    if cache is None:
        return dict(_plan_cached(config_json))
    from importlib.metadata import version
    ingredients = {"format": PLAN_FORMAT, "config": config_json,
                   "transformers": version("transformers")}
    rows = cache.get_or_build_json("init-plans", ingredients, lambda: [
        [name, list(init.shape), init.kind, init.std] for name, init in _plan_cached(config_json)])
    return {name: TensorInit(tuple(shape), kind, float(std)) for name, shape, kind, std in rows}


def tensor_seed(salt: str, name: str) -> int:
    """A stable 63-bit seed for tensor ``name`` (independent of Python's hash randomisation)."""
    digest = hashlib.sha256(f"{salt}\x00{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


ROW_BLOCK = 512  # rows drawn per generator: a row slice costs only the blocks it touches


def draw(name: str, init: TensorInit, salt: str) -> torch.Tensor:
    """Tensor ``name`` drawn from its init, float32 on CPU, determined by (salt, name)."""
    return draw_rows(name, init, salt, 0, init.shape[0])


def draw_rows(name: str, init: TensorInit, salt: str, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of :func:`draw` without drawing the rest: each block of ROW_BLOCK
    rows has its own generator, seeded by (salt, name, block)."""
    rows = init.shape[0]
    start, stop = max(0, start), min(stop, rows)
    shape = (max(0, stop - start), *init.shape[1:])
    if init.kind == ONES:
        return torch.ones(shape, dtype=torch.float32)
    if init.kind == ZEROS:
        return torch.zeros(shape, dtype=torch.float32)
    parts = []
    for block in range(start // ROW_BLOCK, (stop - 1) // ROW_BLOCK + 1 if stop > start else 0):
        b0, b1 = block * ROW_BLOCK, min(rows, (block + 1) * ROW_BLOCK)
        gen = torch.Generator().manual_seed(tensor_seed(salt, f"{name}#{block}"))
        part = torch.randn((b1 - b0, *init.shape[1:]), generator=gen, dtype=torch.float32)
        parts.append(part[max(start, b0) - b0:min(stop, b1) - b0])
    out = torch.cat(parts) if parts else torch.empty(shape, dtype=torch.float32)
    return out.mul_(init.std)
