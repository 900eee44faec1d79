"""The concrete :class:`Model`: a tensor source + an architecture adapter + a tokenizer.

Constructors for the three kinds of backing: a local safetensors directory (:func:`from_dir`,
also used for hub snapshots and converted GGUF files), a synthetic spec (:func:`from_synthetic`)
and the random-init twin of any model (:func:`random_twin`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from probes.errors import StrataError
from probes.models.adapters import Adapter, text_config
from probes.models.base import Model, TensorPool
from probes.models.random_init import buildable_pad, hf_config
from probes.models.sources import DictSource, RandomSource, SafetensorsDir

TWIN_SALT = "random-init/2"  # /2: drawn in row blocks (cheap row slices)
EMBED_CHUNK_ROWS = 1024  # embedding rows read at once when gathering the ids in use
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
_TOKENIZER_EXTRA = ("special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
                    "chat_template.jinja")


def _is_tokenizer_file(name: str) -> bool:
    return name.startswith("tokenizer") or name in _TOKENIZER_EXTRA


@dataclass(eq=False)
class LoadedModel(Model):
    """A model whose tensors come from ``source`` (see :mod:`probes.models.sources`).

    Compared and hashed by identity (it holds open files and tensors)."""

    __hash__ = object.__hash__
    __eq__ = object.__eq__

    source: object = field(default=None, repr=False)
    adapter: Adapter | None = field(default=None, repr=False)
    hf_dir: Path | None = None          # loadable with from_pretrained
    tokenizer_dir: Path | None = None   # holds HF tokenizer files
    _hf_models: dict = field(default_factory=dict, repr=False)
    _tokenizer: object = field(default=None, repr=False)
    _tokenizer_fp: str | None = field(default=None, repr=False)
    _bos: tuple | None = field(default=None, repr=False)   # (bos id or None,) once known

    # -- weights ---------------------------------------------------------------------------
    def weight(self, layer: int, family: str) -> torch.Tensor | None:
        return self.adapter.read(layer, family, self.source.get)

    def shape(self, layer: int, family: str) -> tuple[int, ...] | None:
        ref = self.adapter.ref(layer, family)
        return None if ref is None else ref.family_shape(self.source.shape(ref.name))

    def weight_rows(self, layer: int, family: str, start: int, stop: int) -> torch.Tensor | None:
        ref = self.adapter.ref(layer, family)
        if ref is None:
            return None
        return ref.finish(ref.read_rows(self.source, start, stop))

    def read_rows_into(self, layer: int, family: str, start: int, stop: int,
                       out: torch.Tensor) -> torch.Tensor:
        ref = self.adapter.ref(layer, family)
        copy_rows = getattr(self.source, "copy_rows", None)
        if ref is None or copy_rows is None or not ref.simple_rows:
            return super().read_rows_into(layer, family, start, stop, out)
        rows = self.shape(layer, family)[0]
        a, b = ref.stored_rows(max(0, start), min(stop, rows))
        copy_rows(ref.name, a, b, out)      # converted to float32 on the way in
        if ref.plus_one:                    # what TensorRef.finish does after its copy
            out += 1.0
        return out

    def tensor_names(self) -> list[str]:
        """Every stored tensor name (HF names), sorted."""
        return sorted(self.source.names())

    def tensor(self, name: str) -> torch.Tensor:
        """One stored tensor by HF name, as stored (dtype unchanged), a fresh copy."""
        return self.source.get(name).clone()

    # -- forward pass ----------------------------------------------------------------------
    def layer_state(self, layer: int, dtype: torch.dtype | None = None,
                    reuse: TensorPool | None = None) -> dict[str, torch.Tensor]:
        prefix = self.adapter.layer_prefix(layer)
        names = sorted(n for n in self.source.names() if n.startswith(prefix))
        if not names:
            raise StrataError(f"{self.spec}: no tensors for decoder layer {layer}")
        # a source's tensors may be shared (a dict, a cache): copy unless the source hands out
        # copies of its own
        owned = getattr(self.source, "owned_copies", False)
        into = reuse is not None and getattr(self.source, "reads_into", False)
        out = {}
        for name in names:
            buf = reuse.take(self.source.shape(name), self.source.dtype(name)) if into else None
            t = self.source.get(name, out=buf) if buf is not None else self.source.get(name)
            if dtype is not None:
                t = t.to(dtype, copy=not owned)
            out[name[len(prefix):]] = t if owned else t.clone()
        return self.adapter.module_state(out)

    def base_tensor(self, name: str) -> torch.Tensor:
        full = self.adapter.prefix + name
        if full not in self.source.names():
            raise StrataError(f"{self.spec}: no tensor {full!r} in the checkpoint")
        return self.source.get(full).clone()

    def embedding_size(self) -> int | None:
        """Rows of the stored input embedding (from the header; None if it is not stored)."""
        name = self.adapter.embed_name
        return int(self.source.shape(name)[0]) if name in self.source.names() else None

    def embedding_rows(self, ids) -> torch.Tensor:
        """Read in row chunks of at most EMBED_CHUNK_ROWS that hold a used id (at most the
        whole matrix once, never more than one chunk beyond the result)."""
        name = self.adapter.embed_name
        if name not in self.source.names():
            raise StrataError(f"{self.spec}: no input embedding {name!r} in the checkpoint")
        ids = [int(i) for i in ids]
        parts, i = [], 0
        while i < len(ids):
            start = ids[i]
            j = i
            while j < len(ids) and ids[j] < start + EMBED_CHUNK_ROWS:
                j += 1
            rows = self.source.get_rows(name, start, ids[j - 1] + 1)
            parts.append(rows[torch.tensor(ids[i:j]) - start].clone())
            i = j
        if not parts:
            return torch.empty(0, self.layout.hidden)
        return torch.cat(parts)

    def hf_model(self, device: str = "cpu", dtype: torch.dtype = torch.float32):
        key = (str(device), dtype)
        if key not in self._hf_models:
            self._hf_models[key] = self._build_hf(dtype).to(device).eval()
        return self._hf_models[key]

    def _build_hf(self, dtype: torch.dtype):
        from transformers import AutoModelForCausalLM
        if self.hf_dir is not None:
            # a pad id outside the vocabulary: built from the corrected config (buildable_pad)
            extra = ({} if buildable_pad(self.config) is self.config
                     else {"config": hf_config(self.config)})
            return AutoModelForCausalLM.from_pretrained(str(self.hf_dir), dtype=dtype, **extra)
        model = AutoModelForCausalLM.from_config(hf_config(self.config))
        state = {name: self.source.get(name) for name in self.source.names()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = set(getattr(model, "_tied_weights_keys", None) or ())
        really_missing = [k for k in missing if k not in tied]
        if unexpected or really_missing:
            raise StrataError(f"{self.spec}: tensors do not match the {self.layout.architecture} "
                              f"model (unexpected {sorted(unexpected)[:3]}, missing "
                              f"{sorted(really_missing)[:3]})")
        if hasattr(model, "tie_weights"):
            model.tie_weights()
        return model.to(dtype)

    # -- tokens ----------------------------------------------------------------------------
    @property
    def tokenizer_fingerprint(self) -> str:
        """Content hash of the tokenizer's files (what token ids a text gets depends on them;
        activation probes key their cache on it). ``bytes/1`` for the byte-level fallback."""
        if self.tokenizer_dir is None:
            return "bytes/1"
        if self._tokenizer_fp is None:
            files = sorted(p for p in Path(self.tokenizer_dir).iterdir()
                           if p.is_file() and _is_tokenizer_file(p.name))
            self._tokenizer_fp = _sha(b"tokenizer/1", *(p.name.encode() + b"\0" + p.read_bytes()
                                                       for p in files))
        return self._tokenizer_fp

    def encode(self, text: str) -> list[int]:
        """HF tokenizer ids without special tokens; models without a tokenizer (synthetic)
        use bytes: ids = utf-8 bytes mod vocab_size."""
        if self.tokenizer_dir is None:
            vocab = int(text_config(self.config)["vocab_size"])
            return [b % vocab for b in text.encode("utf-8")]
        if self._tokenizer is None:
            from transformers import AutoTokenizer
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.tokenizer_dir))
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def bos_id(self) -> int | None:
        """The token the model's tokenizer puts before every text when it adds special tokens
        (Llama's ``<|begin_of_text|>``, Gemma's and Mistral's ``<bos>``/``<s>``): what the model
        saw first in training, so the calibration windows start with it. Read off the tokenizer
        itself (ids with special tokens against ids without, on a probe text), so both the
        ``add_bos_token`` flag and a template post-processor count. None when it adds none
        (GPT-2, Pythia, Qwen, SmolLM2), for the byte-level fallback, and when what it adds is
        not one leading token (a trailing EOS may come with it) unless its first id is the
        tokenizer's declared BOS."""
        if self._bos is None:
            bos = None
            if self.tokenizer_dir is not None:
                self.encode("")
                probe = "Strata probe text."
                plain = list(self._tokenizer(probe, add_special_tokens=False)["input_ids"])
                full = list(self._tokenizer(probe)["input_ids"])
                # one added token, then the text's ids unchanged (a trailing EOS may follow);
                # or, where the text's ids differ with special tokens on (a tokenizer's own
                # spacing rules), a first id that is the tokenizer's declared BOS
                declared = getattr(self._tokenizer, "bos_token_id", None)
                one_lead = 1 <= len(full) - len(plain) <= 2 and full[1:1 + len(plain)] == plain
                named = declared is not None and full[:1] == [declared] != plain[:1]
                if one_lead or named:
                    bos = int(full[0])
            self._bos = (bos,)
        return self._bos[0]

    def decode(self, ids: list[int]) -> str:
        if self.tokenizer_dir is None:
            return bytes(i % 256 for i in ids).decode("utf-8", errors="replace")
        self.encode("")
        return self._tokenizer.decode(ids)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_hf_models"] = {}
        state["_tokenizer"] = None
        return state


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()[:32]


def _has_tokenizer(d: Path) -> bool:
    return any((d / f).is_file() for f in _TOKENIZER_FILES)


def read_config(d: Path) -> tuple[bytes, dict]:
    """A model directory's config.json (raw bytes and parsed), checked to be a supported
    architecture before any weight is touched; StrataError otherwise."""
    if not d.is_dir():
        raise StrataError(f"model directory {d} does not exist")
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise StrataError(f"{d} has no config.json; a model directory needs config.json "
                          f"and safetensors weights")
    raw = cfg_path.read_bytes()
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise StrataError(f"{cfg_path} is not valid JSON: {exc}") from None
    text_config(config)  # unsupported architecture: fail before touching the weights
    return raw, config


def content_fingerprint(config_raw: bytes, source: SafetensorsDir, cache=None) -> tuple[str, dict]:
    """The fingerprint of a safetensors directory from its content: config.json's bytes and the
    sha256 of every weight file (from the HF cache's blob names, remembered per file version in
    ``cache``'s file-hash index, or hashed now). Returns it with how it was obtained."""
    from probes.cache import Cache
    from probes.filehash import FileHashIndex, digest_files
    root = (cache if cache is not None else Cache()).root / "file-hashes"
    digests = digest_files(source.files, FileHashIndex(root), desc="fingerprinting weights")
    fp = _sha(b"dir/2", config_raw, *(f"{d.path.name}\0{d.sha256}".encode() for d in digests))
    hows = [d.how for d in digests]
    method = {"kind": "content", "algorithm": "sha256 of config.json and every weight file",
              "files": len(digests), "bytes": sum(d.size for d in digests),
              **{how: hows.count(how) for how in ("hashed", "remembered", "hf-blob")}}
    return fp, method


def from_dir(directory: Path, spec: str, meta: dict | None = None,
             fingerprint: tuple[str, dict] | None = None, cache=None) -> LoadedModel:
    """A model from a local HF-format directory (config.json + safetensors). ``fingerprint``
    (value, how it was obtained) is given where the source already names its content (a GGUF
    file's sha256); otherwise it is computed from the files' bytes (:func:`content_fingerprint`,
    remembered in ``cache``)."""
    d = Path(directory)
    raw, config = read_config(d)
    source = SafetensorsDir(d)
    adapter = Adapter(config, source.names())
    fp, method = fingerprint or content_fingerprint(raw, source, cache)
    return LoadedModel(spec=spec, fingerprint=fp, layout=adapter.layout, config=config,
                       families=adapter.families, is_twin=False, absent=adapter.absent,
                       meta={"source": "dir", "path": str(d), **(meta or {}),
                             "fingerprint_method": method},
                       source=source, adapter=adapter, hf_dir=d,
                       tokenizer_dir=d if _has_tokenizer(d) else None)


def from_synthetic(name: str, spec: str, cache=None) -> LoadedModel:
    """``synthetic:<name>`` from the registry (``cache``: where its builder's transformers
    documents are kept, :func:`probes.synthetic.get`)."""
    from probes import synthetic
    sspec = synthetic.get(name, cache)
    source = DictSource(sspec.state_dict)
    adapter = Adapter(sspec.config, source.names())
    fp = _sha(b"synthetic/1", name.encode(), source.content_hash().encode())
    return LoadedModel(spec=spec, fingerprint=fp, layout=adapter.layout, config=sspec.config,
                       families=adapter.families, is_twin=False, absent=adapter.absent,
                       meta={"source": "synthetic", "name": name,
                             "description": sspec.description, **sspec.meta,
                             "fingerprint_method": {"kind": "content", "algorithm":
                                                    "sha256 of the float32 state dict"}},
                       source=source, adapter=adapter)


def random_twin(base_config: dict, spec: str, tokenizer_dir: Path | None,
                cache=None, salt: str = TWIN_SALT, meta: dict | None = None) -> LoadedModel:
    """The random-init twin: the base's (text) config, every tensor drawn lazily from the
    architecture's init, seeded by (``salt``, tensor name). Reads no tensor of the base.
    ``cache`` (a :class:`~probes.cache.Cache`) keeps its init plan between runs. Another
    ``salt`` gives another independent draw (calibration's null models); the default is the
    twin every report uses. ``meta``: what the base's source says of it (a hub revision),
    kept beside the twin's own."""
    config = text_config(base_config)
    source = RandomSource(config, salt, cache)
    adapter = Adapter(config, source.names())
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    fp = _sha(b"random/1", blob, salt.encode())
    return LoadedModel(spec=spec, fingerprint=fp, layout=adapter.layout, config=config,
                       families=adapter.families, is_twin=True, absent=adapter.absent,
                       meta={**(meta or {}), "source": "random", "salt": salt,
                             "fingerprint_method": {"kind": "generator", "algorithm":
                                                    "sha256 of the config and the draw salt "
                                                    "(the weights are a function of both)"}},
                       source=source, adapter=adapter, tokenizer_dir=tokenizer_dir)
