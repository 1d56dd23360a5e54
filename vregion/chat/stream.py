"""Streaming: token ids out of `VisionLanguageModel.generate` as it decodes, and their text as it grows."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

_END = object()


class _QueueStreamer:
    """Hugging Face's streamer interface (`put`, `end`) feeding a queue; the (B, 0) prompt put is skipped."""

    def __init__(self, out: queue.Queue):
        self.out = out

    def put(self, value) -> None:
        for token in value.reshape(-1).tolist():  # batch 1: (1,) per step
            self.out.put(token)

    def end(self) -> None:
        pass


def stream_tokens(generate: Callable[[Any], Any]) -> Iterator[int]:
    """Token ids as `generate(streamer)` produces them.

    `generate` runs in a thread (HF's `generate` pushes tokens from inside its loop, so a thread is the way to
    hand them out one by one); its exception, if any, is raised here. Leaving the loop early still waits for
    the thread, so one model never decodes two answers at once.
    """
    out: queue.Queue = queue.Queue()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            generate(_QueueStreamer(out))
        except BaseException as e:  # handed to the consumer, which raises it
            failure.append(e)
        finally:
            out.put(_END)

    thread = threading.Thread(target=work, name="vregion-generate", daemon=True)
    thread.start()
    try:
        while (token := out.get()) is not _END:
            yield token
        if failure:
            raise failure[0]
    finally:
        thread.join()


class TextDeltas:
    """The decoded answer as tokens arrive: `push` returns the text that is new and final so far.

    The whole answer is decoded each time (a token alone can be half a UTF-8 character, or lose its leading
    space); text is held back while it ends in an incomplete character or in whitespace, so the deltas add up
    exactly to `text`, the stripped answer, and never have to be taken back.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.shown = ""

    @property
    def text(self) -> str:
        return self.tokenizer.decode(self.tokens, skip_special_tokens=True).strip()

    def push(self, token: int) -> str:
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True).strip()
        if text.endswith("\ufffd") or not text.startswith(self.shown):
            return ""
        delta, self.shown = text[len(self.shown):], text
        return delta

    def finish(self) -> str:
        """The rest of the answer (what `push` held back)."""
        text = self.text
        delta = text[len(self.shown):] if text.startswith(self.shown) else ""
        self.shown = text
        return delta
