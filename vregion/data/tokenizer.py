"""A byte-level tokenizer built in code, for tiny random models in tests and smoke runs (no hub needed)."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

# Special tokens of every supported chat template, so one tiny tokenizer serves all of them.
SPECIAL_TOKENS = [
    "<|endoftext|>",  # pad / eos of the tiny tokenizer
    "<s>",
    "</s>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<bos>",
    "<start_of_turn>",
    "<end_of_turn>",
]

BYTE_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE without merges: every UTF-8 byte is one token (ids 0-255)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
