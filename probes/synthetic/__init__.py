"""Registry of synthetic models (``synthetic:<name>``): tiny configs and planted-structure controls.

A synthetic model is a registered zero-argument function returning a :class:`SyntheticSpec`
(HF ``config.json`` dict, state dict with HF tensor names, description). Every module of this
package is imported when the package is, so adding a model is adding a file::

    # probes/synthetic/planted_adjacent.py
    from probes.synthetic import SyntheticSpec, register
    from probes.synthetic.base import random_state_dict, tiny_config

    @register("planted-adjacent")
    def planted_adjacent() -> SyntheticSpec:
        config = tiny_config("llama", num_layers=12)
        state = random_state_dict(config, seed=1)
        ...  # overwrite tensors so they carry the known effect
        return SyntheticSpec(config, state, "W_{L+1} = R W_L + noise in layers 4-8")

``get(name)`` builds the spec once per process and returns the same object afterwards.
A planted model's builder may take keyword parameters (``strength``, ``seed``); the name
``planted-adjacent?strength=0.5&seed=3`` builds it with them (numbers parsed as int or float),
so ``--model synthetic:planted-adjacent?strength=0.5`` works too.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable

import torch

from probes.errors import StrataError


@dataclass
class SyntheticSpec:
    """A synthetic model: HF config dict, full state dict (HF names, tied copies omitted)."""

    config: dict
    state_dict: dict[str, torch.Tensor]
    description: str = ""
    meta: dict = field(default_factory=dict)


REGISTRY: dict[str, Callable[[], SyntheticSpec]] = {}
_BUILT: dict[str, SyntheticSpec] = {}


def register(name: str):
    """Decorator: register a zero-argument function returning a SyntheticSpec as ``name``."""

    def deco(fn: Callable[[], SyntheticSpec]):
        if name in REGISTRY and REGISTRY[name] is not fn:
            raise ValueError(f"synthetic model {name!r} registered twice")
        REGISTRY[name] = fn
        return fn

    return deco


def names() -> list[str]:
    return sorted(REGISTRY)


def parse_name(name: str) -> tuple[str, dict]:
    """``"base?k=v&k2=v2"`` → ``("base", {k: v, k2: v2})`` with int/float values."""
    base, _, query = name.partition("?")
    params = {}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        try:
            if not sep or not key:
                raise ValueError
            params[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            raise StrataError(f"synthetic model {name!r}: cannot read parameter {item!r}; "
                              f"write NAME?key=number&key=number") from None
    return base, params


def get(name: str, cache=None) -> SyntheticSpec:
    """The spec registered as ``name`` (built once per process), ``name?key=value&...`` with
    keyword parameters for its builder. ``cache`` (a :class:`~probes.cache.Cache`) keeps what
    the builder asks of transformers — the completed config, the init plan — so a run that
    has them never imports it; the tensors are drawn afresh either way."""
    from probes.models.random_init import documents_kept_in
    base, params = parse_name(name)
    if base not in REGISTRY:
        raise StrataError(f"unknown synthetic model {base!r}; known: {', '.join(names())}")
    if name not in _BUILT:
        try:
            with documents_kept_in(cache):
                spec = REGISTRY[base](**params)
        except TypeError as exc:
            raise StrataError(f"synthetic model {name!r}: {exc}") from None
        if not isinstance(spec, SyntheticSpec):
            raise TypeError(f"synthetic model {name!r} must return a SyntheticSpec")
        spec.state_dict = {k: v.detach().to(torch.float32).contiguous()
                           for k, v in spec.state_dict.items()}
        _BUILT[name] = spec
    return _BUILT[name]


def _import_all() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_all()
