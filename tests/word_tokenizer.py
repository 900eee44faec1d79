"""A tiny checkpoint with a word-level HF tokenizer, with or without a BOS, for tests of what
the activation probes feed a model (no download: built with ``tokenizers``)."""

WORDS = ("the quick brown fox jumps over lazy dog a cat sat on mat and ran far away "
         "layers update stream each token").split()


def word_tokenizer(out, template: str | None):
    """A word-level HF tokenizer in ``out``: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, then WORDS;
    ``template`` is its post-processor for one text (``"<s> $A"``: adds a BOS, as Llama's and
    Gemma's do; ``"$A </s>"``: an EOS only; None: nothing, as GPT-2's and Qwen's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if template is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[("<s>", 1), ("</s>", 2)])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(str(out))
    return out


def checkpoint_with_tokenizer(tmp_path, template, layers: int = 4):
    """A tiny-qwen3 checkpoint directory (``layers`` layers) holding :func:`word_tokenizer`'s
    files."""
    from benchmarks import make_checkpoint
    label = {"<s> $A": "bos", "$A </s>": "eos", None: "plain", "<s> $A </s>": "bos-eos",
             "<s> $A </s> </s>": "bos-eos-eos", "</s> $A": "eos-first"}[template]
    src = word_tokenizer(tmp_path / f"tok-{label}", template)
    out = tmp_path / f"ck-{label}"
    assert make_checkpoint.main(["--shape", "tiny-qwen3", "--layers", str(layers), "--tokenizer",
                                 str(src), "--out", str(out)]) == 0
    return out
