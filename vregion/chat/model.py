"""A loaded checkpoint to chat with: conversation -> template-rendered prompt -> streamed answer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

from vregion.data import IMAGE_TAG, ImageDecodeError, ImageProcessor, SampleError, get_template, tokenize_prompt
from vregion.data import validate_template
from vregion.eval.loss import to_model
from vregion.eval.run import load_for_eval

from .conversation import Conversation
from .stream import TextDeltas, stream_tokens


class ChatError(ValueError):
    """Input the model cannot answer (undecodable image, over-long prompt, bad sampling values): the message
    says what is wrong and is shown to the user as it is."""


@dataclass
class Sampling:
    """How answers are decoded: greedy at temperature 0 (the default), else sampled with temperature and top-p."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0

    def check(self) -> "Sampling":
        if self.max_new_tokens < 1:
            raise ChatError(f"max new tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ChatError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ChatError(f"top-p must be in (0, 1], got {self.top_p}")
        return self

    def generate_kwargs(self) -> dict:
        if self.temperature == 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}


class Reply:
    """One answer being decoded: iterate for its text as it grows; then `text` and `tokens` hold the answer."""

    def __init__(self, tokens: Iterator[int], stop_ids: set[int], tokenizer):
        self._tokens = tokens
        self._stop_ids = stop_ids
        self._deltas = TextDeltas(tokenizer)

    def __iter__(self) -> Iterator[str]:
        for token in self._tokens:
            if token in self._stop_ids:  # the template's end of turn (or EOS) ends the answer
                break
            delta = self._deltas.push(token)
            if delta:
                yield delta
        self._tokens.close()  # waits for generation to finish
        rest = self._deltas.finish()
        if rest:
            yield rest

    def wait(self) -> "Reply":
        for _ in self:
            pass
        return self

    @property
    def tokens(self) -> list[int]:
        """The answer's token ids, without the stop token."""
        return list(self._deltas.tokens)

    @property
    def text(self) -> str:
        return self._deltas.text


class ChatModel:
    """A checkpoint loaded for answering, with `vregion eval`'s loading and inference compression."""

    def __init__(self, path: str | Path, model, tokenizer, config: dict, stage):
        self.path = Path(path)
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.compression = stage  # the PoolingSetting installed on the runner (layer None = uncompressed)
        self.template = get_template((config.get("model") or {}).get("template", "vicuna-v1"))
        validate_template(tokenizer, self.template)
        # Training never saw a longer sequence: prompt and answer must fit in it.
        self.max_length = int((config.get("data") or {}).get("max_length", 2048))
        vision = model.vision
        self.images = ImageProcessor(vision.image_size, vision.image_mean, vision.image_std, vision.image_aspect)
        (end_id,) = tokenizer.encode(self.template.end, add_special_tokens=False)  # one token: validated above
        self.stop_ids = sorted({end_id, tokenizer.eos_token_id} - {None})  # as `vregion eval` stops answers

    @classmethod
    def load(cls, path: str | Path, compress: str = "auto", dtype: torch.dtype = torch.float32) -> "ChatModel":
        """Load a vregion checkpoint (trained, pruned or converted); compress: auto | none | K/S, as in eval."""
        model, tokenizer, config, stage = load_for_eval(path, compress, dtype)
        return cls(path, model, tokenizer, config, stage)

    def read_image(self, data: bytes) -> torch.Tensor:
        """Encoded image bytes -> (3, S, S) pixels, or ChatError naming why they cannot be decoded."""
        try:
            return self.images(data)
        except ImageDecodeError:  # PIL's own message names an in-memory buffer: say what the user can act on
            raise ChatError(f"cannot decode image: the {len(data)} bytes are not an image PIL can read "
                            "(PNG, JPEG, GIF, WebP, ...), or the file is damaged") from None

    def inputs(self, conversation: Conversation, question: str) -> dict:
        """The generate() inputs of the history plus `question`: (1, T) ids and mask, pixels, image spans.

        Raises:
            ChatError: empty question, `<image>` typed in it, or a prompt of data.max_length tokens or more.
        """
        if not question.strip():
            raise ChatError("the question is empty")
        if IMAGE_TAG in question:
            raise ChatError(f"the question may not contain {IMAGE_TAG}: the image is placed by the template")
        tok = self.tokenizer
        try:
            sample = tokenize_prompt(conversation.with_question(question), tok, self.template,
                                     self.model.num_visual_tokens, tok.pad_token_id, conversation.num_images)
        except SampleError as e:
            raise ChatError(f"cannot render the conversation with template {self.template.name!r}: {e}") from None
        length = len(sample.input_ids)
        if length >= self.max_length:
            raise ChatError(
                f"the prompt is too long: {length} tokens (history and image included), the checkpoint's "
                f"data.max_length is {self.max_length}; ask something shorter or start a new conversation")
        n = self.model.num_visual_tokens
        if conversation.image is not None:
            pixels = conversation.image[None]  # (1, 3, S, S)
            spans = [[0, start, n] for start in sample.image_starts]
        else:  # the vision tower still runs, on a dummy image, as in evaluation's text-only batches
            size = self.images.image_size
            pixels, spans = torch.zeros(1, 3, size, size), [[-1, 0, 0]]
        ids = torch.tensor([sample.input_ids])  # (1, T)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone(),  # labels: unused
                 "pixel_values": pixels, "image_spans": torch.tensor(spans, dtype=torch.long)}
        return to_model(batch, self.model)

    def reply(self, conversation: Conversation, question: str, sampling: Optional[Sampling] = None) -> Reply:
        """Start answering `question` after the history; bad input raises ChatError here, before any decoding.

        The caller adds (question, reply.text) to the conversation once the reply has been read.
        """
        sampling = (sampling or Sampling()).check()
        inputs = self.inputs(conversation, question)
        tok = self.tokenizer
        # Training never saw a sequence longer than data.max_length: the answer stops there.
        max_new_tokens = min(sampling.max_new_tokens, self.max_length - inputs["input_ids"].shape[1])

        def generate(streamer) -> None:
            self.model.generate(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
                                inputs["image_spans"], max_new_tokens=max_new_tokens,
                                eos_token_id=self.stop_ids, pad_token_id=tok.pad_token_id, streamer=streamer,
                                **sampling.generate_kwargs())

        return Reply(stream_tokens(generate), set(self.stop_ids), tok)
