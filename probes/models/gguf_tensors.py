"""A GGUF file's tensors one at a time, with Hugging Face names and layout, as safetensors.

How the file is read
--------------------
``gguf.GGUFReader`` memory-maps the file; each tensor's bytes are dequantized with
``gguf.dequantize`` in row chunks of at most :data:`CHUNK_BYTES` of float32 (quantization blocks
run along rows, so a row range is a byte range), and the chunk's pages are dropped from this
process's mapping once converted (``madvise(MADV_DONTNEED)``: the page cache keeps them, the
resident set does not grow with the file). Query and key projections are converted whole (their
un-permutation mixes rows within a head; at most ~170 MB of float32 on Qwen3-32B).

Names and layout, as transformers does it (its public GGUF utilities, not a re-implementation)
---------------------------------------------------------------------------------------------
* the config is ``AutoConfig.from_pretrained(dir, gguf_file=…)`` (metadata only), completed with
  the hyperparameters its GGUF reader drops (:mod:`probes.models.gguf_config`: Qwen3's
  ``head_dim`` from ``attention.key_length``, rope scaling, ...); every tensor's shape is then
  checked against the model that config builds;
* GGUF → HF names from ``get_gguf_hf_weights_map`` on the causal-LM class built on the ``meta``
  device (no memory); tensors without an HF name are skipped, as transformers skips them;
* the architecture's ``TENSOR_PROCESSORS`` entry transforms each tensor (llama/mistral: undo
  llama.cpp's Q/K row permutation; gemma: norm weights − 1).

Values: exactly what ``from_pretrained(…, gguf_file=…)`` yields in float32. Stored dtype: F16
and BF16 matrices keep their 16-bit type (exact); everything else — every quantized type, whose
dequantized values need more than 16 bits, and every 1-D tensor — is float32. Each 16-bit chunk
is checked to round-trip exactly.

Peak memory: the largest of one chunk (64 MiB float32, ×2 while converting) and one Q/K matrix
(float32, ×2), plus the imported libraries; independent of the model's size.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from probes.errors import StrataError
from probes.models import gguf_config
from probes.models.st_writer import write_safetensors
from probes.progress import progress

CHUNK_BYTES = 64 << 20          # float32 bytes dequantized at once
_WHOLE = (".attn_q.", ".attn_k.")  # processed whole: the Q/K un-permutation mixes rows


class GGUFTensors:
    """The tensors of GGUF file ``path`` under their HF names (see the module docstring)."""

    def __init__(self, path: Path):
        from gguf import GGUFReader, GGMLQuantizationType
        from transformers import AutoModelForCausalLM
        from transformers.modeling_gguf_pytorch_utils import (TENSOR_PROCESSORS,
                                                              TensorProcessor,
                                                              get_gguf_hf_weights_map,
                                                              read_field)
        self.path = Path(path)
        self.reader = GGUFReader(str(self.path))
        self.config = gguf_config.read_config(self.path)
        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(self.config)
        self.model_class = type(meta).__name__
        arch = read_field(self.reader, "general.architecture")[0]
        self.processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=self.config.to_dict())
        # the tensor-name map of the file's own architecture: llama.cpp writes Mistral as
        # 'llama' (transformers then builds a mistral model, whose name gguf-py does not know)
        names = get_gguf_hf_weights_map(meta, self.processor, model_type=arch)
        expected = {name: tuple(p.shape) for name, p in meta.named_parameters()}
        del meta
        q = GGMLQuantizationType
        self._keep16 = {q.F16: torch.float16, q.BF16: torch.bfloat16}
        self.entries = []   # (hf name, ReaderTensor, dtype, shape)
        for t in self.reader.tensors:
            hf = names.get(t.name)
            if hf is None:
                continue
            shape = tuple(int(d) for d in reversed([int(x) for x in t.shape]))
            dtype = self._keep16.get(t.tensor_type, torch.float32) if len(shape) > 1 \
                else torch.float32
            self.entries.append((hf, t, dtype, shape))
        gguf_config.check_shapes(self.path, self.config.model_type, expected,
                                 {hf: shape for hf, _, _, shape in self.entries})

    @property
    def total_bytes(self) -> int:
        return sum(int(t.n_bytes) for _, t, _, _ in self.entries)

    def _drop_pages(self, start: int, length: int) -> None:
        """Release a byte range of the file's mapping from this process's resident set."""
        mm = getattr(self.reader.data, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise") or length <= 0:
            return
        page = mmap.PAGESIZE
        a = start - start % page
        b = min(len(mm), start + length)
        if b > a:
            mm.madvise(mmap.MADV_DONTNEED, a, b - a)

    def chunks(self, entry, bar=None) -> Iterator[torch.Tensor]:
        """The tensor's processed values in row order, as ``entry``'s dtype."""
        from gguf import dequantize
        hf, t, dtype, shape = entry
        data = t.data
        rows = data.shape[0] if data.ndim > 1 else 1
        row_len = int(np.prod(shape[1:])) if len(shape) > 1 else int(np.prod(shape))
        whole = any(w in t.name for w in _WHOLE) or data.ndim == 1
        step = rows if whole else max(1, CHUNK_BYTES // (4 * row_len))
        row_bytes = int(t.n_bytes) // rows
        for a in range(0, rows, step):
            b = min(rows, a + step)
            values = dequantize(data[a:b] if data.ndim > 1 else data, t.tensor_type)
            values = self.processor.process(weights=values, name=t.name).weights
            out = torch.from_numpy(np.require(values, np.float32, ["C", "W"]))
            out = out.reshape((b - a,) + tuple(shape[1:]) if len(shape) > 1 else shape)
            if dtype != torch.float32:
                narrow = out.to(dtype)
                if not torch.equal(narrow.to(torch.float32), out):
                    raise StrataError(f"{self.path}: tensor {t.name} is not exactly "
                                      f"representable as {dtype} after conversion")
                out = narrow
            yield out
            del values
            self._drop_pages(int(t.data_offset) + a * row_bytes, (b - a) * row_bytes)
            if bar is not None:
                bar.update((b - a) * row_bytes)

    def write(self, out_file: Path) -> int:
        """Every mapped tensor into one safetensors file (see :mod:`st_writer`)."""
        with progress(self.total_bytes, f"dequantizing {self.path.name}", unit="B",
                      unit_scale=True) as bar:
            return write_safetensors(out_file, [
                (hf, dtype, shape, lambda e=(hf, t, dtype, shape): self.chunks(e, bar))
                for hf, t, dtype, shape in self.entries])
