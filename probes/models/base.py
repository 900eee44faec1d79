"""The model interface every probe reads weights through.

A :class:`Model` is a model spec resolved to tensors by layer and canonical family. It never
instantiates an ``nn.Module`` for weight access: :meth:`Model.weight` reads one tensor lazily
(memory-mapped safetensors, or generated on demand for ``random:`` and ``synthetic:`` models).
Only activation probes call :meth:`Model.hf_model`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Mapping

import torch

# Canonical parameter families, in report order. An architecture may add its own
# (gemma2/3, olmo2: pre_ff_ln, post_ff_ln; mixtures of experts: MOE_FAMILIES). A family a model
# lacks is N/A, never an error.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NORMS = ("input_ln", "post_attn_ln", "q_norm", "k_norm", "pre_ff_ln", "post_ff_ln")
CANONICAL_FAMILIES = PROJECTIONS + NORMS

# Mixture-of-experts families. ``router`` is ``[experts, hidden]`` (row e scores expert e);
# ``expert_*`` are ``[experts, out, in]``: expert e's Linear weight in HF layout.
ROUTER = "router"
EXPERT_FAMILIES = ("expert_gate_proj", "expert_up_proj", "expert_down_proj")
MOE_FAMILIES = (ROUTER,) + EXPERT_FAMILIES
# Experts carry no order across layers: expert e of layer L is not expert e of layer L+1 (a
# relabelling of one layer's experts, with its router rows, computes the same function). A
# statistic that pairs layer L's tensor with layer L+1's entry by entry is therefore N/A on these
# families; order-free ones (a layer's norm: the scale schedule) apply.
UNORDERED_FAMILIES = {f: "experts are unordered across layers (expert e of layer L is not "
                         "expert e of layer L+1), so comparing them by index means nothing; "
                         "no expert matching is implemented" for f in EXPERT_FAMILIES}

# Which side of each projection is the layer-internal (gauge) side, in HF Linear layout
# [out_features, in_features]: rows for q/k/v/gate/up, columns for o/down; the router's rows
# (one per expert: a relabelling of experts permutes them).
INTERNAL_SIDE = {"q_proj": "rows", "k_proj": "rows", "v_proj": "rows", "gate_proj": "rows",
                 "up_proj": "rows", "o_proj": "cols", "down_proj": "cols", ROUTER: "rows"}
# The families the gauge probe aligns: the projections, and the router where there is one.
GAUGE_FAMILIES = PROJECTIONS + (ROUTER,)


def claim_families(listed, model_families) -> list[str]:
    """The families a claim marked ``@pytest.mark.families(*listed)`` runs over on a model: the
    listed canonical families (one the model lacks gives an N/A record saying so) and the listed
    architecture-specific ones the model has (a dense model gets no ``router`` records)."""
    have = set(model_families)
    return [f for f in listed if f in CANONICAL_FAMILIES or f in have]


@dataclass(frozen=True)
class Layout:
    """Shapes that probes need; read from the model's config."""

    architecture: str  # HF model_type (probes.models.adapters.SUPPORTED_ARCHITECTURES)
    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    num_experts: int = 0            # mixture of experts: experts per layer (0: dense)
    expert_intermediate: int = 0    # and each expert's MLP width

    @property
    def group_size(self) -> int:
        """Query heads per kv head."""
        return self.num_heads // self.num_kv_heads

    def kv_head_of(self, head: int) -> int:
        """The kv head query head ``head`` reads, as transformers' ``repeat_kv`` does:
        kv head ``h // (num_heads / num_kv_heads)``."""
        return head // self.group_size


class TensorPool:
    """Spare tensors by (shape, dtype), handed back by their last holder for the next reads of
    the same kind: the layer-streamed pass reads every layer into the previous layer's memory.
    Fresh memory costs a page fault per 4 kB on first touch — about half of a Qwen3-4B layer's
    0.12 s read from the page cache (measured, AMD EPYC Zen 4) — memory already touched none.
    Only whole, contiguous CPU tensors that own their storage are taken (a view would write
    through into whatever else shares the storage)."""

    def __init__(self):
        self._spare: dict[tuple, list[torch.Tensor]] = {}

    def give(self, tensors) -> None:
        for t in tensors:
            if (t.device.type == "cpu" and t.is_contiguous() and t.storage_offset() == 0
                    and t.untyped_storage().nbytes() == t.numel() * t.element_size()
                    and t.numel() * t.element_size() >= 1 << 20):   # small ones are cheap
                self._spare.setdefault((tuple(t.shape), t.dtype), []).append(t.detach())

    def take(self, shape, dtype) -> torch.Tensor | None:
        spare = self._spare.get((tuple(shape), dtype))
        return spare.pop() if spare else None

    def clear(self) -> None:
        """Drop what was not taken (the pool must not hold memory beyond one handover)."""
        self._spare.clear()

    def __len__(self) -> int:
        return sum(len(v) for v in self._spare.values())


@dataclass
class Model:
    """A resolved model spec. Subclasses implement :meth:`_read` and :meth:`hf_model`.

    Attributes
    ----------
    spec:        the spec string as the user gave it (``smollm2-135m``, ``random:...``).
    fingerprint: content hash: changes whenever the tensors would (cache key component).
    layout:      shapes.
    config:      the HF ``config.json`` as a dict.
    families:    canonical families present in every layer, in CANONICAL_FAMILIES order.
    is_twin:     True for ``random:`` models.
    absent:      why a family one would look for is missing (``{"gate_proj": "the MLP is not
                 gated ..."}``): the N/A reason records of that family give.
    """

    spec: str
    fingerprint: str
    layout: Layout
    config: dict
    families: tuple[str, ...]
    is_twin: bool = False
    meta: dict = field(default_factory=dict)
    absent: dict = field(default_factory=dict)

    def weight(self, layer: int, family: str) -> torch.Tensor | None:
        """One tensor as float32 on CPU, freshly read; ``None`` if the model lacks the family.

        Projections in HF Linear layout ``[out, in]`` (q_proj: ``[num_heads*head_dim, hidden]``,
        head h = rows ``h*head_dim:(h+1)*head_dim``), whatever the storage (fused, per-head
        interleaved, GPT-2's transposed Conv1D); norms 1-D, as the effective gain the layer
        multiplies by (gemma's ``1 + w`` already applied); expert families ``[experts, out,
        in]``. Biases are not families.
        """
        raise NotImplementedError

    def shape(self, layer: int, family: str) -> tuple[int, ...] | None:
        """The tensor's shape without reading its data (``None`` if the family is absent).
        Sources override this with a header read; the default reads the tensor."""
        w = self.weight(layer, family)
        return None if w is None else tuple(w.shape)

    def weight_rows(self, layer: int, family: str, start: int, stop: int) -> torch.Tensor | None:
        """Rows ``start:stop`` of :meth:`weight` (float32). Sources backed by safetensors read
        only those rows (``get_slice``); the default slices a full read."""
        w = self.weight(layer, family)
        return None if w is None else w[start:stop]

    def read_rows_into(self, layer: int, family: str, start: int, stop: int,
                       out: torch.Tensor) -> torch.Tensor:
        """Write rows ``start:stop`` of :meth:`weight` into the float32 tensor ``out`` (same
        number of elements) and return it. Sources that can convert straight from storage into
        ``out`` override this (one pass instead of read, convert, copy); the default copies
        :meth:`weight_rows`."""
        return out.copy_(self.weight_rows(layer, family, start, stop).reshape(out.shape))

    def layer_weights(self, layer: int, families) -> dict[str, torch.Tensor]:
        """The families present in ``layer``, one read each."""
        out = {}
        for fam in families:
            w = self.weight(layer, fam)
            if w is not None:
                out[fam] = w
        return out

    def iter_layers(self, families) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """Stream layers in order; at most one layer's tensors alive per step."""
        for layer in range(self.layout.num_layers):
            yield layer, self.layer_weights(layer, families)

    def layer_state(self, layer: int, dtype: torch.dtype | None = None,
                    reuse: "TensorPool | None" = None) -> dict[str, torch.Tensor]:
        """Every stored tensor of decoder layer ``layer``, named as in the architecture's
        decoder-layer module (``self_attn.q_proj.weight``, …), each read alone and converted to
        ``dtype`` (default: as stored): what the layer-streamed forward pass loads. Experts
        stored one tensor per expert are stacked as the module holds them. ``reuse``: tensors
        no one holds any more (the previous layer's) that a source able to read into memory
        fills instead of allocating (:class:`TensorPool`)."""
        raise NotImplementedError

    def base_tensor(self, name: str) -> torch.Tensor:
        """A tensor of the base model outside its decoder layers, by its name under the base
        model (``wpe.weight``: GPT-2's learned positions; ``norm.weight``), as stored."""
        raise NotImplementedError

    def embedding_size(self) -> int | None:
        """Rows of the stored input embedding matrix (None: unknown, the config's vocab_size
        stands)."""
        return None

    def embedding_rows(self, ids) -> torch.Tensor:
        """Rows ``ids`` (sorted, distinct token ids) of the input embedding matrix, as stored,
        without reading the rest of the vocabulary."""
        raise NotImplementedError

    def hf_model(self, device: str = "cpu", dtype: torch.dtype = torch.float32):
        """The real transformers model (eval mode) for activation probes."""
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Token ids for ``text`` (no special tokens added)."""
        raise NotImplementedError

    @property
    def bos_id(self) -> int | None:
        """The token the tokenizer puts before every text (None: it adds none; see
        :class:`probes.models.loaded.LoadedModel`)."""
        return None

    def twin_spec(self) -> str:
        return self.spec if self.is_twin else f"random:{self.spec}"

    def describe(self) -> Mapping:
        """What the report's run.models entry shows. ``repo``, ``revision`` and ``commit`` say
        which hub repository, revision (as given: branch, tag or commit; None for the default
        branch) and commit a hub model (or its twin) was read from — None elsewhere. Revisions
        of one repository share ``repo``: they are one model's checkpoints, not independent
        models."""
        return {"spec": self.spec, "architecture": self.layout.architecture,
                "num_layers": self.layout.num_layers, "fingerprint": self.fingerprint,
                "fingerprint_method": self.meta.get("fingerprint_method"),
                "repo": self.meta.get("repo_id"), "revision": self.meta.get("revision"),
                "commit": self.meta.get("commit")}

    @property
    def tokenizer_fingerprint(self) -> str:
        """Content hash of what turns text into token ids (activation probes key on it)."""
        return "bytes/1"
