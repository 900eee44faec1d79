"""Structure-free models of a given model's shapes, for measuring false-positive rates.

Two families, both lazy (a tensor is made when a probe reads it) and deterministic:

* ``iid_draw(base, i)`` — the architecture's random init (as the ``random:`` twin), drawn with
  salt ``null/iid/<i>`` instead of the twin's: independent draws of every tensor, so every
  layer, head and neuron is exchangeable with every other and no claim's structure is there.
  Init values, not trained ones: norm gains are all 1, projections Gaussian.
* ``shuffled(base, i)`` — the base model's *real* tensors with their structure destroyed while
  each tensor keeps its exact multiset of values:

    1. per family (every ``model.layers.<L>.<rest>`` name with the same ``<rest>``), an
       independent random permutation π of the layers: layer L gets the tensor of layer π(L);
    2. within every tensor (layer tensors, embeddings, final norm), the entries shuffled.

  Step 2 removes everything a tensor's layout carries (heads, neurons, the residual basis, the
  correspondence between adjacent layers, QK sign structure beyond the entries' own mean);
  step 1 removes the depth profile (which real layer sits where, and which families move
  together in depth — entry shuffling alone keeps every tensor's norm, so the scale schedule
  would survive it). What is kept: each tensor's value distribution, e.g. norm gains near 1,
  heavier-than-Gaussian tails, per-layer scale differences (in random order). Layers are
  therefore exchangeable, the condition the layer-label nulls need.

Both return a :class:`~probes.models.loaded.LoadedModel`: weight probes read through it and
the activation probe builds the transformers model from it (tokenizer of the base).
"""

from __future__ import annotations

import re

import torch

from probes.models.adapters import Adapter
from probes.models.loaded import LoadedModel, _sha, random_twin
from probes.models.random_init import tensor_seed

IID_SALT = "null/iid/{}"
SHUFFLE_FORMAT = b"shuffled/1"
_LAYER = re.compile(r"^(.*\.layers)\.(\d+)\.(.+)$")
FAMILIES = ("iid", "shuffled")


def iid_draw(base, index: int, cache=None) -> LoadedModel:
    """Independent random-init draw ``index`` of ``base``'s architecture (not its twin)."""
    salt = IID_SALT.format(index)
    return random_twin(base.config, f"null-iid:{index}:{base.spec}",
                       getattr(base, "tokenizer_dir", None), cache, salt=salt)


class ShuffledSource:
    """``base``'s tensors, layers permuted per family and entries shuffled per tensor (seeded).

    Keeps the last few shuffled tensors, so row-sliced reads of one tensor shuffle it once."""

    def __init__(self, base_source, seed: int, num_layers: int, keep: int = 4):
        self.base = base_source
        self.seed = seed
        self.num_layers = num_layers
        self._perm: dict[str, list[int]] = {}
        self._recent: dict[str, torch.Tensor] = {}
        self._keep = keep

    def names(self) -> set[str]:
        return self.base.names()

    def source_name(self, name: str) -> str:
        """The base tensor that ``name`` is a shuffle of (layer permuted within its family)."""
        m = _LAYER.match(name)
        if not m:
            return name
        prefix, layer, rest = m.group(1), int(m.group(2)), m.group(3)
        if rest not in self._perm:
            gen = torch.Generator().manual_seed(tensor_seed(f"shuffle/{self.seed}", "layers/" + rest))
            self._perm[rest] = torch.randperm(self.num_layers, generator=gen).tolist()
        return f"{prefix}.{self._perm[rest][layer]}.{rest}"

    def shape(self, name: str) -> tuple[int, ...]:
        return self.base.shape(self.source_name(name))

    def get(self, name: str) -> torch.Tensor:
        if name not in self._recent:
            t = self.base.get(self.source_name(name)).to(torch.float32).reshape(-1)
            gen = torch.Generator().manual_seed(tensor_seed(f"shuffle/{self.seed}", name))
            out = t[torch.randperm(t.numel(), generator=gen)].reshape(self.shape(name))
            if len(self._recent) >= self._keep:
                self._recent.pop(next(iter(self._recent)))
            self._recent[name] = out
        return self._recent[name]

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self.get(name)[start:stop]


def shuffled(base: LoadedModel, index: int) -> LoadedModel:
    """Shuffled null model ``index`` of ``base`` (see the module docstring)."""
    source = ShuffledSource(base.source, index, base.layout.num_layers)
    adapter = Adapter(base.config, source.names())
    fp = _sha(SHUFFLE_FORMAT, base.fingerprint.encode(), str(index).encode())
    return LoadedModel(spec=f"null-shuffled:{index}:{base.spec}", fingerprint=fp,
                       layout=adapter.layout, config=base.config, families=adapter.families,
                       is_twin=False, absent=adapter.absent, meta={"source": "shuffled", "base": base.spec,
                                            "index": index, "fingerprint_method": {
                                                "kind": "derived", "algorithm":
                                                "sha256 of the base's fingerprint and the "
                                                "shuffle index (the weights are a function "
                                                "of both)"}},
                       source=source, adapter=adapter,
                       tokenizer_dir=getattr(base, "tokenizer_dir", None))


def null_model(family: str, base: LoadedModel, index: int, cache=None) -> LoadedModel:
    """Member ``index`` of null family ``family`` (``iid`` or ``shuffled``) of ``base``."""
    if family == "iid":
        return iid_draw(base, index, cache)
    if family == "shuffled":
        return shuffled(base, index)
    raise ValueError(f"unknown null family {family!r}; one of {FAMILIES}")
