"""Tensor sources: where a model's tensors come from, by HF tensor name.

* :class:`SafetensorsDir` — a local HF directory (``model.safetensors`` or shards with
  ``model.safetensors.index.json``), read lazily with ``safe_open`` (memory-mapped), one open
  handle per shard file. Headers are validated on open: a truncated or corrupt file is a
  :class:`StrataError` naming it, before any tensor is read.
* :class:`DictSource` — an in-memory state dict (synthetic models).
* :class:`RandomSource` — tensors drawn on demand from the architecture's init (``random:``).

``get(name)`` may return a view of shared storage (safetensors' memory map, the state dict):
callers copy before modifying (:meth:`TensorRef.apply` and ``LoadedModel.tensor`` do).

A local directory's fingerprint covers its tensor bytes: the sha256 of each file, hashed once
per file version (:mod:`probes.filehash`).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
import torch

from probes.errors import StrataError
from probes.models.random_init import TensorInit, draw, draw_rows, init_plan

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_MAX_HEADER = 100 * 1024 * 1024


def read_safetensors_header(path: Path) -> tuple[bytes, dict]:
    """The raw header bytes and parsed header of a safetensors file, after checking that the
    header parses and that every tensor's data lies inside the file. StrataError otherwise."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError("file shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, _MAX_HEADER):
                raise ValueError(f"header length {n} exceeds the file size {size}")
            raw = fh.read(n)
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        end = 0
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, stop = info["data_offsets"]
            if not 0 <= begin <= stop:
                raise ValueError(f"bad data offsets for {name}")
            end = max(end, stop)
        if 8 + n + end > size:
            raise ValueError(f"tensor data ends at byte {8 + n + end} but the file has {size} "
                             f"bytes (truncated)")
    except OSError as exc:
        raise StrataError(f"cannot read safetensors file {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StrataError(f"corrupt or truncated safetensors file {path}: {msg}; "
                          f"re-download or re-convert it") from None
    return raw, header


# safetensors dtype names → torch (little-endian on disk, as on every machine torch runs on)
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
              "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
              "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


class SafetensorsDir:
    """Tensors of a local HF-format directory, read lazily."""

    # get() returns a tensor no one else holds (read into fresh memory): callers need not copy
    # it again; get(name, out=t) reads into t (same shape and dtype as stored)
    owned_copies = True
    reads_into = True

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.files: list[Path] = self._files()
        self.weight_map: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.spans: dict[str, tuple[int, int, str]] = {}   # file byte range, dtype name
        for f in self.files:
            raw, header = read_safetensors_header(f)
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                self.weight_map[name] = f
                self.shapes[name] = tuple(info["shape"])
                begin, stop = info["data_offsets"]
                self.spans[name] = (8 + len(raw) + begin, 8 + len(raw) + stop, info["dtype"])

    def _files(self) -> list[Path]:
        d = self.dir
        index = d / "model.safetensors.index.json"
        if index.is_file():
            try:
                wmap = json.loads(index.read_text())["weight_map"]
                names = sorted(set(wmap.values()))
            except (ValueError, KeyError, TypeError) as exc:
                raise StrataError(f"corrupt shard index {index}: {exc}") from None
            missing = [n for n in names if not (d / n).is_file()]
            if missing:
                raise StrataError(f"shard {missing[0]} listed in {index} is missing "
                                  f"({len(missing)} of {len(names)} shards missing)")
            return [d / n for n in names]
        if (d / "model.safetensors").is_file():
            return [d / "model.safetensors"]
        shards = sorted(p for p in d.glob("*.safetensors") if p.is_file())
        if shards:
            return shards
        pickled = sorted(p.name for p in d.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        if pickled:
            raise StrataError(
                f"{d} holds only pickled checkpoints ({', '.join(pickled[:3])}); Strata never "
                f"unpickles checkpoints: convert to safetensors with transformers' "
                f"save_pretrained(..., safe_serialization=True) where you trust the file")
        raise StrataError(f"{d} has no model.safetensors, shards or "
                          f"model.safetensors.index.json")

    def names(self) -> set[str]:
        return set(self.weight_map)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    # Each read opens the shard, copies what it needs and closes it: a handle kept open keeps
    # every page it has touched mapped into this process (on a 4B checkpoint a streamed pass
    # would show the whole 7.5 GB file in its RSS). Opening costs one small header parse.
    def dtype(self, name: str) -> torch.dtype | None:
        """The stored dtype (None: a kind read only through safetensors, e.g. float8)."""
        return _ST_DTYPES.get(self.spans[name][2])

    def get(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        begin, stop, dtype = self.spans[name]
        if dtype not in _ST_DTYPES:      # float8 and other rare kinds: through safetensors
            with self._open(name) as f:
                return f.get_tensor(name).clone()
        if out is None:
            out = torch.empty(self.shapes[name], dtype=_ST_DTYPES[dtype])
        elif (tuple(out.shape) != self.shapes[name] or out.dtype != _ST_DTYPES[dtype]
              or not out.is_contiguous() or out.device.type != "cpu"):
            raise ValueError(f"{name}: out is {tuple(out.shape)} {out.dtype}, stored "
                             f"{self.shapes[name]} {dtype}")
        if out.numel() * out.element_size() != stop - begin:
            raise StrataError(f"{self.weight_map[name]}: tensor {name} has {stop - begin} bytes "
                              f"for shape {list(out.shape)} {dtype}; re-download or re-convert it")
        self._read_into(name, begin, stop, out)
        return out

    def _read_into(self, name: str, begin: int, stop: int, out: torch.Tensor) -> None:
        # read() straight into the tensor's memory: 3× faster than copying out of a map
        # (measured: a Qwen3-4B layer from the page cache, 0.12 s against 0.35 s; the map's
        # page faults cost more than the copy)
        path = self.weight_map[name]
        view = memoryview(out.view(-1).view(torch.uint8).numpy()) if out.numel() else None
        try:
            with open(path, "rb", buffering=0) as fh:
                fh.seek(begin)
                done = 0
                while done < stop - begin:
                    got = fh.readinto(view[done:])
                    if not got:
                        raise StrataError(f"{path} ended inside tensor {name} (truncated "
                                          f"since it was opened); re-download it")
                    done += got
        except OSError as exc:
            raise StrataError(f"cannot read safetensors file {path}: "
                              f"{exc.strerror or exc}") from None

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` only: safetensors reads just that byte range of the map."""
        with self._open(name) as f:
            return f.get_slice(name)[start:stop].clone()

    def get_block(self, name: str, index: tuple[slice, ...]) -> torch.Tensor:
        """``tensor[index]`` (slices on the leading dims) reading only that block's bytes."""
        with self._open(name) as f:
            return f.get_slice(name)[index].clone()

    def copy_rows(self, name: str, start: int, stop: int, out: torch.Tensor) -> None:
        """Rows ``start:stop`` converted straight from the map into ``out`` (no intermediate
        copy: a streamed pass over a bf16 checkpoint spent most of its time in clone + convert
        + copy)."""
        with self._open(name) as f:
            out.copy_(f.get_slice(name)[start:stop].reshape(out.shape))

    def _open(self, name: str):
        from safetensors import safe_open
        path = self.weight_map[name]
        try:
            return safe_open(str(path), framework="pt", device="cpu")
        except Exception as exc:  # corrupt file that passed the header check
            raise StrataError(f"cannot open safetensors file {path}: "
                              f"{str(exc).splitlines()[0] if str(exc) else exc}") from None


class DictSource:
    """Tensors held in memory (synthetic models)."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self.state = state

    def names(self) -> set[str]:
        return set(self.state)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.state[name].shape)

    def get(self, name: str) -> torch.Tensor:
        return self.state[name]

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self.get(name)[start:stop]

    def get_block(self, name: str, index: tuple[slice, ...]) -> torch.Tensor:
        return self.get(name)[index]

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.state):
            t = self.state[name].detach().to(torch.float32).contiguous()
            h.update(name.encode() + b"\0" + str(tuple(t.shape)).encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()


class RandomSource:
    """Every tensor of the HF model for ``config``, drawn on demand from the architecture's
    init, seeded by ``(salt, name)``."""

    owned_copies = True   # get() draws a fresh tensor
    reads_into = True     # get(out=) draws into memory already touched (the layer stream's)

    def __init__(self, config: dict, salt: str, cache=None):
        self.plan: dict[str, TensorInit] = init_plan(config, cache)
        self.salt = salt

    def names(self) -> set[str]:
        return set(self.plan)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.plan[name].shape

    def dtype(self, name: str) -> torch.dtype:
        return torch.float32

    def get(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        return draw(name, self.plan[name], self.salt, out=out)

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        return draw_rows(name, self.plan[name], self.salt, start, stop)

    def get_block(self, name: str, index: tuple[slice, ...]) -> torch.Tensor:
        """The leading slice's rows drawn alone (row blocks), the rest sliced from them."""
        first = index[0].indices(self.plan[name].shape[0])
        if first[2] != 1:
            raise ValueError("get_block takes unit-step slices")
        rows = draw_rows(name, self.plan[name], self.salt, first[0], max(first[0], first[1]))
        return rows[(slice(None),) + tuple(index[1:])]
