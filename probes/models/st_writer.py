"""Write a safetensors file from tensors produced piece by piece (never a whole model in memory).

The safetensors layout is an 8-byte little-endian header length, a JSON header (name → dtype,
shape, byte offsets; padded with spaces to a multiple of 8) and the tensors' bytes in order.
Shapes and dtypes are known before any data is produced, so the header is written first and
each tensor's bytes follow as its row chunks arrive: memory is one chunk at a time. Written to
a temporary file beside ``path`` and ``os.replace``d into place; a chunk stream that yields the
wrong number of bytes is an error and leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Callable, Iterable

import torch

ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.float64: "F64", torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8"}


def write_safetensors(path: Path, entries: list[tuple[str, torch.dtype, tuple[int, ...],
                                                      Callable[[], Iterable[torch.Tensor]]]],
                      metadata: dict[str, str] | None = None) -> int:
    """Write ``entries`` — ``(name, dtype, shape, chunks)`` where ``chunks()`` yields the
    tensor's values in row order as tensors of ``dtype`` — to ``path``. Returns the number of
    data bytes."""
    path = Path(path)
    header, offset = {}, 0
    for name, dtype, shape, _ in entries:
        numel = 1
        for d in shape:
            numel *= int(d)
        size = numel * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": ST_DTYPES[dtype], "shape": [int(d) for d in shape],
                        "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = dict(metadata or {"format": "pt"})
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data start to 8 bytes
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<Q", len(raw)))
            fh.write(raw)
            for name, dtype, _, chunks in entries:
                begin, end = header[name]["data_offsets"]
                written = 0
                for chunk in chunks():
                    if chunk.dtype != dtype:
                        raise ValueError(f"{name}: chunk of dtype {chunk.dtype}, header says {dtype}")
                    data = chunk.contiguous().view(torch.uint8).numpy()
                    fh.write(memoryview(data))
                    written += data.nbytes
                if written != end - begin:
                    raise ValueError(f"{name}: wrote {written} bytes, the shape needs {end - begin}")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return offset
