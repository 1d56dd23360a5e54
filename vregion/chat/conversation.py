"""A chat history about (at most) one image, as the LLaVA turns a training sample is made of."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from vregion.data import IMAGE_TAG


@dataclass
class Conversation:
    """Questions and answers so far, about `image` ((3, S, S) pixels, or None for text only).

    The image goes where the training data puts it: `<image>` and a newline before the first question. A new
    image starts a new conversation (as LLaVA's CLI does): the tiny and demo models only ever saw one image
    per conversation, at its start.
    """

    image: Optional[torch.Tensor] = None
    turns: list[tuple[str, str]] = field(default_factory=list)  # (question, answer), oldest first

    def with_question(self, question: str) -> list[dict]:
        """The LLaVA turns of the history plus the unanswered `question` (what the model answers next)."""
        pairs = [*self.turns, (question, None)]
        turns = []
        for i, (q, a) in enumerate(pairs):
            if i == 0 and self.image is not None:
                q = f"{IMAGE_TAG}\n{q}"
            turns.append({"from": "human", "value": q})
            if a is not None:
                turns.append({"from": "gpt", "value": a})
        return turns

    def add(self, question: str, answer: str) -> None:
        self.turns.append((question, answer))

    @property
    def num_images(self) -> int:
        return 0 if self.image is None else 1
