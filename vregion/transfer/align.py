"""Token pairs aligned between two tokenizers: tokens of the same text whose character spans coincide exactly."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from vregion.data import IMAGE_TAG, resolve_shards
from vregion.data.stream import read_shard


@dataclass
class Alignment:
    """Unique (src_id, tgt_id) pairs with how often each was seen, and what was read to find them."""

    pairs: list[tuple[int, int]] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    texts: int = 0
    total_pairs: int = 0

    @property
    def report(self) -> dict:
        return {"texts": self.texts, "pairs": self.total_pairs, "unique_pairs": len(self.pairs)}


def _spans(tokenizer: Any, text: str) -> dict[tuple[int, int], int]:
    """{(start, end): token id} of the spans held by exactly one real token (no specials, no unknowns).

    Byte-level tokenizers give every byte of a multi-byte character the character's span; such shared spans
    say nothing about which token corresponds to which, so they are dropped.
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    unk = getattr(tokenizer, "unk_token_id", None)
    seen: Counter = Counter(tuple(o) for o in enc["offset_mapping"])
    out = {}
    for tid, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
        if end > start and seen[(start, end)] == 1 and tid != unk:
            out[(start, end)] = tid
    return out


def align_texts(src_tokenizer: Any, tgt_tokenizer: Any, texts: Iterable[str]) -> Alignment:
    """Pair the tokens of each text whose character spans coincide in both tokenizations.

    Unlike the VPGTrans reference (which keeps only texts whose two tokenizations have equal length and
    pairs position by position), every text contributes the tokens it can: "a cat" as [a, ␠, c, a, t] and
    [a, ␠cat] still pairs the two `a`s.

    Args:
        src_tokenizer, tgt_tokenizer: Hugging Face *fast* tokenizers (offsets are needed).
        texts: plain strings.
    Returns:
        Alignment with unique pairs sorted by descending count (ties by ids).
    """
    for tok in (src_tokenizer, tgt_tokenizer):
        if not getattr(tok, "is_fast", False):
            raise ValueError(f"token alignment needs fast tokenizers (offsets); got {type(tok).__name__}")
    counts: Counter = Counter()
    n_texts = 0
    for text in texts:
        n_texts += 1
        src, tgt = _spans(src_tokenizer, text), _spans(tgt_tokenizer, text)
        for span in src.keys() & tgt.keys():
            counts[(src[span], tgt[span])] += 1
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return Alignment(
        pairs=[p for p, _ in ordered], counts=[c for _, c in ordered],
        texts=n_texts, total_pairs=sum(counts.values()),
    )


def conversation_texts(shards: Any, max_texts: int) -> Iterator[str]:
    """The turn texts of the shards' `json` conversations (image tags removed), in shard order, at most max_texts.

    Unreadable samples are skipped: the corpus only needs to be large, not complete.
    """
    n = 0
    for url in resolve_shards(shards):
        for raw in read_shard(url):
            if "json" not in raw:
                continue
            try:
                turns = json.loads(raw["json"])["conversations"]
            except (ValueError, KeyError, TypeError):
                continue
            for turn in turns if isinstance(turns, list) else []:
                value = turn.get("value") if isinstance(turn, dict) else None
                text = value.replace(IMAGE_TAG, "").strip() if isinstance(value, str) else ""
                if not text:
                    continue
                if n >= max_texts:
                    return
                n += 1
                yield text


def align_tokenizers(src_tokenizer: Any, tgt_tokenizer: Any, shards: Any, max_texts: int) -> Alignment:
    """align_texts over the conversation texts of `shards` (brace pattern, glob, folder or list)."""
    return align_texts(src_tokenizer, tgt_tokenizer, conversation_texts(shards, max_texts))
