"""Calibration text for activation probes (SPEC §5.5): the built-in corpus or ``--calib FILE``.

File format
-----------
A calibration file is UTF-8 text holding several documents. If any line of the file is exactly
``=====`` (a *separator line*; surrounding whitespace ignored), those lines separate documents,
so documents may contain blank lines (code does). Otherwise documents are separated by one or
more blank lines. Leading/trailing blank lines of a document are stripped; empty documents are
dropped. The built-in corpus ``probes/calib/default.txt`` uses separator lines: 26 documents of
original prose, code (Python, SQL, Rust, bash, JSON), maths, dialogue and French, German,
Spanish, Italian, Russian and Chinese text written for this project (4,345 tokens with the
SmolLM2 tokenizer).

Tokenisation and budget
-----------------------
Each document is tokenised on its own with ``model.encode`` (no special tokens) and run through
the model on its own; the activation probe drops each document's first token from the
statistics (the first position of a sequence is an attention sink with outlying norms).
``max_tokens`` caps the total number of tokens fed: documents are taken in file order and the
last one is truncated to fit. A document of one token contributes nothing and is skipped.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import StrataError

DEFAULT_CORPUS = Path(__file__).parent / "calib" / "default.txt"
SEPARATOR = "====="
_BLANK_RUN = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")


@dataclass(frozen=True)
class Corpus:
    """Calibration documents and where they came from.

    ``source``: ``"builtin:default.txt"`` or the file's path; ``sha256``: of the file's bytes.
    """

    source: str
    sha256: str
    documents: tuple[str, ...]


@dataclass(frozen=True)
class TokenizedCorpus:
    """Token ids per document after the budget (the text's ids, without special tokens) and
    ``bos``: the token the model's tokenizer starts every text with (``Model.bos_id``; None if
    none), which each window fed to the model then starts with. The first position of every
    window is dropped from statistics: the BOS where there is one, else the text's first token.
    ``tokens`` = ids fed to the model in total (one window per document), ``scored_tokens`` =
    tokens entering statistics."""

    corpus: Corpus
    documents: tuple[tuple[int, ...], ...]
    max_tokens: int | None
    bos: int | None = None

    @property
    def tokens(self) -> int:
        return sum(len(d) for d in self.documents) + (len(self.documents) if self.bos is not None
                                                       else 0)

    @property
    def scored_tokens(self) -> int:
        return sum(len(d) - (self.bos is None) for d in self.documents)

    def record(self) -> dict:
        """What the report shows as ``run.calibration``."""
        return {"source": self.corpus.source, "sha256": self.corpus.sha256,
                "tokens": self.tokens, "scored_tokens": self.scored_tokens,
                "documents": len(self.documents), "max_tokens": self.max_tokens,
                "bos": self.bos}


def split_documents(text: str) -> list[str]:
    """Documents of ``text``: split on separator lines if the text has any, else on blank
    lines; each stripped of surrounding blank lines; empty ones dropped."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if any(line.strip() == SEPARATOR for line in lines):
        docs, cur = [], []
        for line in lines:
            if line.strip() == SEPARATOR:
                docs.append("\n".join(cur))
                cur = []
            else:
                cur.append(line)
        docs.append("\n".join(cur))
    else:
        docs = _BLANK_RUN.split(text)
    out = []
    for doc in docs:
        doc = "\n".join(line.rstrip() for line in doc.split("\n")).strip("\n")
        if doc.strip():
            out.append(doc)
    return out


def corpus_from_text(text: str, source: str, sha256: str | None = None) -> Corpus:
    """A corpus from text already in memory; empty text is a one-line StrataError."""
    docs = split_documents(text)
    if not docs:
        raise StrataError(f"calibration text {source} is empty: give a file with at least one "
                          f"non-blank document (documents separated by blank lines)")
    digest = sha256 or hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Corpus(source=source, sha256=digest, documents=tuple(docs))


def load_corpus(path: str | Path | None = None) -> Corpus:
    """The built-in corpus (``path`` None) or the documents of a calibration file."""
    if path is None:
        raw = DEFAULT_CORPUS.read_bytes()
        source = f"builtin:{DEFAULT_CORPUS.name}"
    else:
        p = Path(path).expanduser()
        if not p.is_file():
            raise StrataError(f"--calib {path}: no such file; give a UTF-8 text file of "
                              f"documents separated by blank lines")
        raw = p.read_bytes()
        source = str(p)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StrataError(f"--calib {source}: not UTF-8 text (byte {e.start}); "
                          f"save the file as UTF-8") from None
    return corpus_from_text(text, source, hashlib.sha256(raw).hexdigest())


def tokenize(corpus: Corpus, encode, max_tokens: int | None = None,
             bos: int | None = None) -> TokenizedCorpus:
    """Token ids of each document via ``encode(text) -> list[int]``, within ``max_tokens`` (a
    budget of text tokens: a BOS is not counted), each window to start with ``bos`` if given.

    Documents are kept in order until the budget is spent (the last one truncated); documents
    with fewer than 2 tokens are skipped (without a BOS their first token is dropped from
    statistics; with one, kept the same for one corpus whatever the model). Fewer than 2 tokens
    in total, or a budget < 2, is a one-line StrataError.
    """
    if max_tokens is not None and max_tokens < 2:
        raise StrataError(f"--calib-tokens {max_tokens}: need at least 2 tokens (each "
                          f"document's first token is dropped from statistics)")
    left = max_tokens
    docs: list[tuple[int, ...]] = []
    for text in corpus.documents:
        if left is not None and left < 2:
            break
        ids = [int(i) for i in encode(text)]
        if left is not None:
            ids = ids[:left]
        if len(ids) < 2:
            continue
        docs.append(tuple(ids))
        if left is not None:
            left -= len(ids)
    if not docs:
        raise StrataError(f"calibration text {corpus.source} gives no document of 2 or more "
                          f"tokens; give longer documents")
    return TokenizedCorpus(corpus=corpus, documents=tuple(docs), max_tokens=max_tokens,
                           bos=None if bos is None else int(bos))


def tokenize_for(model, corpus: Corpus, max_tokens: int | None = None) -> TokenizedCorpus:
    """:func:`tokenize` as the activation probes feed ``model``: its tokenizer's ids, each
    window starting with its BOS (``model.bos_id``) where its tokenizer adds one."""
    return tokenize(corpus, model.encode, max_tokens, bos=model.bos_id)
