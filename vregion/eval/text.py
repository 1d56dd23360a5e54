"""Plain-text passages (one per line) -> language-model batches, for text-only perplexity (language retention)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterable, Iterator

import torch

from vregion.data.collate import collate


def is_text_file(spec: str) -> bool:
    """True for a plain-text passage file; shards (.tar files, folders, patterns) are read as conversations."""
    path = Path(spec)
    return path.is_file() and path.suffix != ".tar"


def read_passages(path: str | Path, max_samples: int) -> list[str]:
    """The first `max_samples` non-empty lines of a UTF-8 text file (surrounding whitespace stripped)."""
    with open(path, encoding="utf-8") as f:
        lines = (line.strip() for line in f)
        return list(itertools.islice((line for line in lines if line), max_samples))


def passage_ids(text: str, tokenizer, max_length: int) -> list[int]:
    """Token ids of one passage with the tokenizer's own special tokens for raw text (Llama/Gemma: BOS first),
    as the LLM saw text in pre-training; cut at `max_length`."""
    return tokenizer(text, add_special_tokens=True)["input_ids"][:max_length]


def text_batches(
    passages: Iterable[str], tokenizer, max_length: int, batch_size: int, image_size: int
) -> Iterator[dict]:
    """Collated batches in the model's format; every token after the first is predicted (no template, no image).

    Collate adds one dummy image per batch (span row [-1, 0, 0]): the model's forward expects pixel values.
    """
    pending: list[dict] = []
    for text in passages:
        ids = torch.tensor(passage_ids(text, tokenizer, max_length), dtype=torch.long)  # (L,)
        pending.append({"input_ids": ids, "labels": ids.clone(), "pixel_values": torch.zeros(0, 3, image_size,
                        image_size), "image_spans": []})
        if len(pending) == batch_size:
            yield collate(pending, tokenizer.pad_token_id, image_size)
            pending = []
    if pending:
        yield collate(pending, tokenizer.pad_token_id, image_size)
