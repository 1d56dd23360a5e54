"""Answer normalisation for exact-match scoring, in the spirit of the VQA benchmark's rules."""

from __future__ import annotations

import re

_ARTICLES = {"a", "an", "the"}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")  # VQA strips periods except inside numbers: "1.5" is not "15"
_PUNCT = re.compile(r"[^\w\s./-]")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, spell-out digits, squeeze spaces ("The T-shirt." -> "t-shirt")."""
    text = text.strip().lower().replace("\n", " ")
    text = _PUNCT.sub("", _PERIOD.sub("", text))
    words = [_NUMBERS.get(w, w) for w in text.split() if w not in _ARTICLES]
    return " ".join(words)
