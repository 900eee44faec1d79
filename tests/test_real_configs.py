"""Real checkpoints' config values through the activation path (issue 17, item 5).

Real checkpoints carry what the tiny test models of ``tests/test_architectures.py`` do not: a
vocabulary of 32k–262k rows, pad/bos/eos ids near its end (Qwen2.5's pad 151643 of 151936) or
at its start (Gemma's pad 0, bos 2, eos 1), no pad at all (GPT-2, Llama 3), a list of eos ids
(Llama 3's [128001, 128008, 128009]), tied or untied embeddings. The layer-streamed path keeps
only the embedding rows of the ids in use and renumbers them, so any id or size it took from
the config could point outside that table (the padding index did: commit a7dd0cf).

For every architecture of the table, a tiny checkpoint (6 layers, hidden 32, saved by
transformers) with the vocabulary size, special ids and embedding tie of a released checkpoint
of that architecture (:data:`REAL`: values of the released config.json files, named beside each;
written from the project's notes, not fetched — no network here), fed ids from both ends of the
vocabulary that straddle the pad id without using it: the streamed statistics equal the
whole-model forward's, the three activation claims decide (a verdict, not N/A or an error) and
decide alike on both, and the random twin streams those ids. Plus: a pad id among the ids in
use, a pad id outside the vocabulary (config ``pad_token_id = vocab_size``), and an embedding
that stores fewer rows than ``vocab_size``.
"""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import compatibility as compat
from benchmarks.claims import discover
from probes import activations, calibration
from probes.errors import StrataError
from probes.evidence import decide
from probes.layer_stream import LayerStream
from probes.models import open_model
from probes.models.adapters import ARCHITECTURES
from probes.models.random_init import hf_config
from tests.test_layer_stream import assert_same_statistics

# architecture → (released checkpoint, its config.json's vocab_size, bos/eos/pad ids, tie)
REAL = {
    "llama": ("meta-llama/Llama-3.2-1B-Instruct",
              dict(vocab_size=128256, bos_token_id=128000, eos_token_id=[128001, 128008, 128009],
                   pad_token_id=None, tie_word_embeddings=True)),
    "mistral": ("mistralai/Mistral-7B-v0.1",
                dict(vocab_size=32000, bos_token_id=1, eos_token_id=2, pad_token_id=None,
                     tie_word_embeddings=False)),
    # pad: what Qwen2.5's GGUF files (and generation config) name, <|endoftext|>
    "qwen2": ("Qwen/Qwen2.5-0.5B-Instruct",
              dict(vocab_size=151936, bos_token_id=151643, eos_token_id=151645,
                   pad_token_id=151643, tie_word_embeddings=True)),
    "qwen3": ("Qwen/Qwen3-0.6B",
              dict(vocab_size=151936, bos_token_id=151643, eos_token_id=151645,
                   pad_token_id=None, tie_word_embeddings=True)),
    "gemma3": ("google/gemma-3-1b-it",
               dict(vocab_size=262144, bos_token_id=2, eos_token_id=[1, 106], pad_token_id=0,
                    tie_word_embeddings=True)),
    "gemma": ("google/gemma-2b",
              dict(vocab_size=256000, bos_token_id=2, eos_token_id=1, pad_token_id=0,
                   tie_word_embeddings=True)),
    "gemma2": ("google/gemma-2-2b",
               dict(vocab_size=256000, bos_token_id=2, eos_token_id=1, pad_token_id=0,
                    tie_word_embeddings=True, attn_logit_softcapping=50.0,
                    final_logit_softcapping=30.0)),
    "gpt2": ("openai-community/gpt2",
             dict(vocab_size=50257, bos_token_id=50256, eos_token_id=50256, pad_token_id=None,
                  tie_word_embeddings=True)),
    # the embedding (50304 rows) is larger than the tokenizer (50277 ids); no pad in the config
    "gpt_neox": ("EleutherAI/pythia-160m",
                 dict(vocab_size=50304, bos_token_id=0, eos_token_id=0, pad_token_id=None,
                      tie_word_embeddings=False)),
    "olmo": ("allenai/OLMo-1B-hf",
             dict(vocab_size=50304, bos_token_id=None, eos_token_id=50279, pad_token_id=1,
                  tie_word_embeddings=True)),
    "olmo2": ("allenai/OLMo-2-0425-1B",
              dict(vocab_size=100352, bos_token_id=None, eos_token_id=100257,
                   pad_token_id=100277, tie_word_embeddings=False)),
    "phi": ("microsoft/phi-2",
            dict(vocab_size=51200, bos_token_id=50256, eos_token_id=50256, pad_token_id=None,
                 tie_word_embeddings=False)),
    "phi3": ("microsoft/Phi-3-mini-4k-instruct",
             dict(vocab_size=32064, bos_token_id=1, eos_token_id=32000, pad_token_id=32000,
                  tie_word_embeddings=False)),
    "starcoder2": ("bigcode/starcoder2-3b",
                   dict(vocab_size=49152, bos_token_id=0, eos_token_id=0, pad_token_id=None,
                        tie_word_embeddings=True)),
    "granite": ("ibm-granite/granite-3.0-2b-instruct",
                dict(vocab_size=49155, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                     tie_word_embeddings=True)),
    "mixtral": ("mistralai/Mixtral-8x7B-v0.1",
                dict(vocab_size=32000, bos_token_id=1, eos_token_id=2, pad_token_id=None,
                     tie_word_embeddings=False)),
    "qwen3_moe": ("Qwen/Qwen3-30B-A3B",
                  dict(vocab_size=151936, bos_token_id=151643, eos_token_id=151645,
                       pad_token_id=None, tie_word_embeddings=False)),
    "olmoe": ("allenai/OLMoE-1B-7B-0924",
              dict(vocab_size=50304, bos_token_id=None, eos_token_id=50279, pad_token_id=1,
                   tie_word_embeddings=False)),
    "helium": ("kyutai/helium-1-preview-2b",
               dict(vocab_size=48000, bos_token_id=1, eos_token_id=2, pad_token_id=3,
                    tie_word_embeddings=False)),
    "smollm3": ("HuggingFaceTB/SmolLM3-3B",
                dict(vocab_size=128256, bos_token_id=None, eos_token_id=128012,
                     pad_token_id=128004, tie_word_embeddings=True)),
    "ministral": ("mistralai/Ministral-8B-Instruct-2410",
                  dict(vocab_size=131072, bos_token_id=1, eos_token_id=2, pad_token_id=None,
                       tie_word_embeddings=False)),
    "ernie4_5": ("baidu/ERNIE-4.5-0.3B-PT",
                 dict(vocab_size=103424, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      tie_word_embeddings=True)),
    "seed_oss": ("ByteDance-Seed/Seed-OSS-36B-Instruct",
                 dict(vocab_size=155136, bos_token_id=0, eos_token_id=2, pad_token_id=1,
                      tie_word_embeddings=False)),
    "arcee": ("arcee-ai/AFM-4.5B",
              dict(vocab_size=128004, bos_token_id=128000, eos_token_id=128001,
                   pad_token_id=None, tie_word_embeddings=False)),
    "glm": ("THUDM/glm-4-9b-chat-hf",
            dict(vocab_size=151552, bos_token_id=None, eos_token_id=[151329, 151336, 151338],
                 pad_token_id=151329, tie_word_embeddings=False)),
    "exaone4": ("LGAI-EXAONE/EXAONE-4.0-1.2B",
                dict(vocab_size=102400, bos_token_id=1, eos_token_id=361, pad_token_id=0,
                     tie_word_embeddings=True)),
    "cohere": ("CohereForAI/c4ai-command-r-v01",
               dict(vocab_size=256000, bos_token_id=5, eos_token_id=255001, pad_token_id=0,
                    tie_word_embeddings=True)),
    "stablelm": ("stabilityai/stablelm-2-1_6b",
                 dict(vocab_size=100352, bos_token_id=100257, eos_token_id=100257,
                      pad_token_id=None, tie_word_embeddings=False)),
    "nemotron": ("nvidia/Minitron-4B-Base",
                 dict(vocab_size=256000, bos_token_id=2, eos_token_id=3, pad_token_id=None,
                      tie_word_embeddings=False)),
}
ARCHS = [compat.tiny_arch(a) for a in ARCHITECTURES]
CALIB_TOKENS = 240
ACTIVATION_CLAIMS = [ct for ct in discover() if ct.probes == ("residual_stream",)]


def test_every_architecture_has_real_config_values():
    assert sorted(REAL) == sorted(ARCHS)


def special_ids(cfg: dict) -> set[int]:
    out = set()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = cfg.get(key)
        out.update(v if isinstance(v, list) else [] if v is None else [v])
    return out


def straddling_encode(vocab: int, avoid: set[int]):
    """Text → ids from both ends of the vocabulary: odd bytes b as b, even bytes as
    vocab − 1 − b, the special ids avoided (shifted by one more)."""
    def encode(text: str) -> list[int]:
        out = []
        for b in text.encode("utf-8"):
            i = b if b % 2 else vocab - 1 - b
            while i in avoid:
                i = i - 1 if i > vocab // 2 else i + 1
            out.append(i)
        return out
    return encode


def corpus(encode, budget: int = CALIB_TOKENS):
    return calibration.tokenize(calibration.load_corpus(), encode, budget)


def claim_verdicts(result: dict) -> dict[str, str]:
    """The three activation claims as written (their test functions) on a residual-stream
    result, phases C and E of 3 layers (benchmarks.compatibility's map)."""
    out = {}
    for ct in ACTIVATION_CLAIMS:
        got = []
        kwargs = {"residual_stream": result, "phases": compat.PHASES,
                  "strata": type("S", (), {"seed": 0})(),
                  "verdict": lambda claim, ev: got.append(decide(claim, ev, 0.05).verdict)}
        ct.fn(**{p: kwargs[p] for p in ct.params})
        out[ct.claim.id] = got[0]
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_real_config_values_stream_like_the_whole_model(arch, tmp_path):
    repo, values = REAL[arch]
    path = compat.tiny_checkpoint(arch, tmp_path / arch, **values)
    model = open_model(str(path))
    cfg = hf_config(json.loads((path / "config.json").read_text()))
    for key, want in values.items():      # the checkpoint carries the real values
        assert getattr(cfg, key) == want, (repo, key, getattr(cfg, key))
    vocab = values["vocab_size"]
    assert model.embedding_size() == vocab
    encode = straddling_encode(vocab, special_ids(values))
    tc = corpus(encode)
    used = {i for d in tc.documents for i in d}
    pad = values["pad_token_id"]
    assert pad not in used and not special_ids(values) & used
    assert min(used) < 256 and max(used) >= vocab - 256    # both ends of the vocabulary
    if pad is not None and pad > 255:
        assert min(used) < pad < max(used) and pad >= len(used)   # straddled, past the rows kept
    streamed = activations.compute(model, tc, top_k=4)
    assert streamed["memory"]["embedding_rows"] == len(used)
    reference = activations.compute_hooked(model, tc, top_k=4)
    assert_same_statistics(streamed, reference)
    verdicts = claim_verdicts(streamed)
    assert set(verdicts.values()) <= {"SUPPORTED", "REFUTED", "INCONCLUSIVE"}, verdicts
    assert verdicts == claim_verdicts(reference)
    # the random twin (its own init, the real vocabulary) streams the same ids
    twin = open_model(f"random:{path}")
    ids = sorted(used)
    for _, _, outputs in LayerStream(twin).run([ids[:8] + ids[-8:]]):
        assert torch.isfinite(outputs[0]).all()


def test_pad_id_among_the_ids_in_use(tmp_path):
    """SmolLM2-135M-Instruct's config: pad = eos = 2 (<|im_end|>), bos 1. A corpus that uses
    the pad id streams like the whole model: padding_idx changes no forward pass."""
    values = dict(vocab_size=49152, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                  tie_word_embeddings=True)
    model = open_model(str(compat.tiny_checkpoint("llama", tmp_path / "s", **values)))
    base = straddling_encode(49152, set())
    tc = corpus(lambda t: [2 if i % 5 == 0 else i for i in base(t)])
    assert 2 in {i for d in tc.documents for i in d[1:]}     # scored positions hold the pad id
    assert_same_statistics(activations.compute(model, tc, top_k=4),
                           activations.compute_hooked(model, tc, top_k=4))


def test_pad_id_outside_the_vocabulary(tmp_path):
    """A config whose pad_token_id is vocab_size (the pad token added to a tokenizer, not to
    the embedding): nn.Embedding refuses such a padding index, so transformers cannot build the
    model from it; Strata builds it without the pad id (it only masks a gradient), streams it
    like the whole model and like the same checkpoint with no pad id, and its twin opens."""
    src = compat.tiny_checkpoint("qwen2", tmp_path / "ok", vocab_size=4096, pad_token_id=None)
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in src.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bad / "config.json").read_text())
    cfg["pad_token_id"] = 4096
    (bad / "config.json").write_text(json.dumps(cfg))
    model, ok = open_model(str(bad)), open_model(str(src))
    tc = corpus(straddling_encode(4096, {4096}))
    streamed = activations.compute(model, tc, top_k=4)
    assert_same_statistics(streamed, activations.compute_hooked(model, tc, top_k=4))
    assert_same_statistics(streamed, activations.compute(ok, tc, top_k=4), rtol=0,
                           gram_rows=0)   # the same computation: bit for bit
    twin = open_model(f"random:{bad}")
    for _, _, outputs in LayerStream(twin).run([[5, 4000, 4095]]):
        assert torch.isfinite(outputs[0]).all()


def test_ids_past_the_stored_embedding_are_one_line_error(tmp_path):
    """config.json's vocab_size larger than the embedding it stores: ids below the stored rows
    stream; an id past them is a one-line StrataError naming both sizes (not an IndexError
    from the row read)."""
    src = compat.tiny_checkpoint("llama", tmp_path / "c", vocab_size=300)
    cfg = json.loads((src / "config.json").read_text())
    cfg["vocab_size"] = 512
    (src / "config.json").write_text(json.dumps(cfg))
    model = open_model(str(src))
    assert model.embedding_size() == 300
    stream = LayerStream(model)
    with pytest.raises(StrataError, match=r"token id 400 outside the model's vocabulary: its "
                                          r"input embedding stores 300 rows \(config vocab_size "
                                          r"512\)"):
        stream.embed([[3, 4, 400]])
    out = list(LayerStream(model).run([[3, 4, 299]]))
    assert len(out) == model.layout.num_layers
