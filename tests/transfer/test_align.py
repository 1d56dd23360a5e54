"""Token alignment pairs tokens whose character spans coincide, across tokenizers of different granularity."""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from vregion.data import make_synthetic_shards
from vregion.data.tokenizer import build_byte_tokenizer
from vregion.transfer import align_texts, align_tokenizers, conversation_texts

WORDS = ["[UNK]", "I", "saw", "a", "cat", "dog", ".", "!", "é"]


def word_tokenizer() -> PreTrainedTokenizerFast:
    """Whole words and punctuation as single tokens; anything else is [UNK]."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def test_pairs_tokens_with_equal_character_spans():
    byte, word = build_byte_tokenizer(), word_tokenizer()
    texts = ["a cat.", "I saw a dog!", "é x"]
    # different lengths: "a cat." is 6 byte tokens and 3 word tokens
    assert len(byte(texts[0], add_special_tokens=False)["input_ids"]) == 6
    assert len(word(texts[0], add_special_tokens=False)["input_ids"]) == 3
    b = byte.convert_tokens_to_ids
    w = WORDS.index
    alignment = align_texts(byte, word, texts)
    # "cat"/"saw"/"dog" span 3 bytes (no single byte token matches), "é" is two bytes sharing one character
    # span (ambiguous, dropped), "x" is unknown to the word tokenizer (dropped).
    assert dict(zip(alignment.pairs, alignment.counts)) == {
        (b("a"), w("a")): 2, (b("."), w(".")): 1, (b("I"), w("I")): 1, (b("!"), w("!")): 1,
    }
    assert alignment.pairs[0] == (b("a"), w("a"))  # most frequent first
    assert alignment.report == {"texts": 3, "pairs": 5, "unique_pairs": 4}
    reverse = align_texts(word, byte, texts)  # the direction only swaps the ids
    assert sorted(reverse.pairs) == sorted((t, s) for s, t in alignment.pairs)


def test_corpus_from_shards_respects_max_texts(tmp_path):
    make_synthetic_shards(tmp_path / "shards", 8, 32, 0, 4)
    texts = list(conversation_texts(tmp_path / "shards", max_texts=5))
    assert len(texts) == 5 and all(texts) and not any("<image>" in t for t in texts)
    byte = build_byte_tokenizer()
    alignment = align_tokenizers(byte, byte, tmp_path / "shards", max_texts=1000)
    assert alignment.texts == 16  # 8 samples, one question and one answer each
    assert alignment.pairs and all(s == t for s, t in alignment.pairs)  # same tokenizer: identity pairs
