"""The architecture's own initialisation, one tensor at a time (``random:`` twins, synthetic models).

transformers initialises a causal LM with its ``initialize_weights``: for most architectures
every ``nn.Linear`` and ``nn.Embedding`` weight ~ N(0, initializer_range²) i.i.d., biases 0,
norm gains 1 — gemma's norms compute ``x·(1 + w)`` and so store ``w = 0``, GPT-2 draws its
residual projections with std / √(2·layers), mixtures of experts draw their fused expert tensors
and router like Linear weights. We read that plan from the architecture's own code — the model
built on the ``meta`` device (no memory) runs its ``initialize_weights`` with transformers' torch
init primitives replaced by recorders — and reproduce it tensor by tensor: each tensor is drawn
from its own generator seeded by a stable hash of ``(salt, name)``. So a tensor can be generated
alone, in any order, in any process, and comes out bit-identical.
"""

from __future__ import annotations

import contextlib
import contextvars
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


def buildable_pad(config: dict) -> dict:
    """``config`` with a ``pad_token_id`` the embedding module cannot hold set to None (also in
    a nested ``text_config``): an id outside ``[-vocab_size, vocab_size)`` or not one integer.

    The pad id only becomes the embedding's ``padding_idx``, which masks its row's gradient and
    zeroes that row at init — it changes no forward pass — but ``nn.Embedding`` asserts it lies
    inside the vocabulary, so a checkpoint whose config says ``pad_token_id = vocab_size`` (some
    fine-tunes do: the pad token was added to the tokenizer, not to the embedding) could not be
    built at all. Returns ``config`` itself when nothing changes."""
    def fix(cfg: dict) -> dict:
        pad, vocab = cfg.get("pad_token_id"), cfg.get("vocab_size")
        ok = pad is None or vocab is None or (
            isinstance(pad, int) and not isinstance(pad, bool) and -int(vocab) <= pad < int(vocab))
        return cfg if ok else {**cfg, "pad_token_id": None}
    out = fix(config)
    text = config.get("text_config")
    if isinstance(text, dict) and fix(text) is not text:
        out = {**out, "text_config": fix(text)}
    return out


def hf_config(config: dict):
    """A transformers ``PretrainedConfig`` from a config.json dict (a pad id the embedding
    cannot hold dropped: :func:`buildable_pad`)."""
    from transformers import AutoConfig
    cfg = dict(buildable_pad(config))
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
    calls = _recorded_init(model)
    plan = []
    # remove_duplicate=True drops tied parameters (lm_head when tie_word_embeddings)
    for name, param in model.named_parameters():
        call = calls.get(id(param))
        plan.append((name, _as_init(name, tuple(param.shape), call)))
    return tuple(plan)


def _recorded_init(model) -> dict[int, tuple[str, dict]]:
    """What the model's own ``initialize_weights`` does to each tensor: transformers' init
    wrappers (``transformers.initialization``) call the torch primitives through its
    ``TORCH_INIT_FUNCTIONS`` table, which is swapped for recorders while the model (on the meta
    device: nothing is drawn) initialises itself. The last call per tensor wins, as it would
    (GPT-2 re-draws its residual projections with std / √(2·layers) after the Conv1D default)."""
    from transformers import initialization
    table = initialization.TORCH_INIT_FUNCTIONS
    calls: dict[int, tuple[str, dict]] = {}

    def recorder(kind):
        def record(tensor, *args, **kwargs):
            calls[id(tensor)] = (kind, {**dict(zip(_INIT_ARGS.get(kind, ()), args)), **kwargs})
            return tensor
        return record

    saved = dict(table)
    for thing in (*model.modules(), *model.parameters()):
        if getattr(thing, "_is_hf_initialized", False):
            thing._is_hf_initialized = False
    try:
        table.update({kind: recorder(kind) for kind in saved})
        model.initialize_weights()
    finally:
        table.update(saved)
    return calls


_INIT_ARGS = {"normal_": ("mean", "std"), "constant_": ("val",)}


def _as_init(name: str, shape: tuple[int, ...], call) -> TensorInit:
    """The :class:`TensorInit` of one recorded init call (normal with mean 0, ones, zeros)."""
    kind, args = call if call is not None else (None, {})
    if kind == "normal_" and float(args.get("mean", 0.0)) == 0.0:
        return TensorInit(shape, NORMAL, float(args.get("std", 1.0)))
    if kind == "ones_" or (kind == "constant_" and float(args["val"]) == 1.0):
        return TensorInit(shape, ONES)
    if kind == "zeros_" or (kind == "constant_" and float(args["val"]) == 0.0):
        return TensorInit(shape, ZEROS)
    raise StrataError(f"no known initialisation for parameter {name} (the model's own init "
                      f"{'does not set it' if kind is None else f'calls {kind} {args}'})")


def _initializer_range(config: dict) -> float:
    if "initializer_range" in config:
        return config["initializer_range"]
    text = config.get("text_config") or {}
    return text.get("initializer_range", 0.02)


PLAN_FORMAT = "strata.init-plan/2"  # /2: read from the model's own initialize_weights
CONFIG_FORMAT = "strata.full-config/1"

# the cache init_plan and full_config use when called without one: synthetic models' builders
# are zero-argument functions, so probes.synthetic.get hands them the cache this way
_DOCUMENTS_IN = contextvars.ContextVar("strata_documents_in", default=None)


@contextlib.contextmanager
def documents_kept_in(cache):
    """Within the block, :func:`init_plan` and :func:`full_config` called without a cache
    keep their documents in ``cache`` (a :class:`~probes.cache.Cache`, or None: none)."""
    token = _DOCUMENTS_IN.set(cache)
    try:
        yield
    finally:
        _DOCUMENTS_IN.reset(token)


def _transformers_version() -> str:
    from importlib.metadata import version
    return version("transformers")


def full_config(config: dict, cache=None) -> tuple[dict, str]:
    """``config`` as transformers completes it (``hf_config(config).to_dict()``: every default
    of its config class filled in) and the architecture's causal-LM class name. Both depend only
    on ``config`` and the transformers version: with a cache (or one set by
    :func:`documents_kept_in`) they are kept there, so a run that has them imports no
    transformers."""
    cache = cache if cache is not None else _DOCUMENTS_IN.get()

    def build():
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        return [hf_config(config).to_dict(),
                MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config["model_type"]]]
    if cache is None:
        full, name = build()
    else:
        ingredients = {"format": CONFIG_FORMAT,
                       "config": json.dumps(config, sort_keys=True, default=str),
                       "transformers": _transformers_version()}
        full, name = cache.get_or_build_json("hf-configs", ingredients, build)
    return json.loads(json.dumps(full, default=str)), name


def init_plan(config: dict, cache=None) -> dict[str, TensorInit]:
    """Every parameter the HF causal-LM class for ``config`` holds (tied copies excluded),
    in the model's parameter order, with its init. With a :class:`~probes.cache.Cache` (or one
    set by :func:`documents_kept_in`) the plan is stored there, keyed by the config and the
    transformers version (the classes define the names and shapes), so a cached run neither
    imports transformers nor builds the model."""
    cache = cache if cache is not None else _DOCUMENTS_IN.get()
    config_json = json.dumps(config, sort_keys=True, default=str)
    if cache is None:
        return dict(_plan_cached(config_json))
    ingredients = {"format": PLAN_FORMAT, "config": config_json,
                   "transformers": _transformers_version()}
    rows = cache.get_or_build_json("init-plans", ingredients, lambda: [
        [name, list(init.shape), init.kind, init.std] for name, init in _plan_cached(config_json)])
    return {name: TensorInit(tuple(shape), kind, float(std)) for name, shape, kind, std in rows}


def tensor_seed(salt: str, name: str) -> int:
    """A stable 63-bit seed for tensor ``name`` (independent of Python's hash randomisation)."""
    digest = hashlib.sha256(f"{salt}\x00{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


ROW_BLOCK = 512  # rows drawn per generator: a row slice costs only the blocks it touches


def draw(name: str, init: TensorInit, salt: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """Tensor ``name`` drawn from its init, float32 on CPU, determined by (salt, name).
    ``out``: a float32 CPU tensor of the shape to draw into (memory already touched costs no
    page faults; the values are bit for bit those of a fresh draw)."""
    return draw_rows(name, init, salt, 0, init.shape[0], out=out)


def draw_rows(name: str, init: TensorInit, salt: str, start: int, stop: int,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """Rows ``start:stop`` of :func:`draw` without drawing the rest: each block of ROW_BLOCK
    rows has its own generator, seeded by (salt, name, block). A whole block is drawn in place
    (``normal_`` on the output's rows is what ``randn`` runs); a block cut by ``start`` or
    ``stop`` is drawn whole and sliced."""
    rows = init.shape[0]
    start, stop = max(0, start), min(stop, rows)
    shape = (max(0, stop - start), *init.shape[1:])
    if out is None:
        out = torch.empty(shape, dtype=torch.float32)
    elif tuple(out.shape) != shape or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"draw_rows: out must be a contiguous float32 tensor of shape {shape}")
    if init.kind == ONES:
        return out.fill_(1.0)
    if init.kind == ZEROS:
        return out.zero_()
    for block in range(start // ROW_BLOCK, (stop - 1) // ROW_BLOCK + 1 if stop > start else 0):
        b0, b1 = block * ROW_BLOCK, min(rows, (block + 1) * ROW_BLOCK)
        gen = torch.Generator().manual_seed(tensor_seed(salt, f"{name}#{block}"))
        lo, hi = max(start, b0), min(stop, b1)
        if (lo, hi) == (b0, b1):
            out[b0 - start:b1 - start].normal_(generator=gen)
        else:
            part = torch.randn((b1 - b0, *init.shape[1:]), generator=gen, dtype=torch.float32)
            out[lo - start:hi - start].copy_(part[lo - b0:hi - b0])
    return out.mul_(init.std)
