"""One raw tar sample (bytes) -> a tokenized training sample with pixels, or the reason it must be skipped."""

from __future__ import annotations

import json
import logging
import re

import torch

from .errors import BAD_IMAGE, INCOMPLETE_SAMPLE, MALFORMED, MISSING_JSON, TAR_ERROR, SampleError
from .image import ImageDecodeError, ImageProcessor
from .templates import ChatTemplate, get_template, tokenize_conversation

log = logging.getLogger(__name__)

_IMAGE_MEMBER = re.compile(r"img(\d+)\.\w+")


class SampleDecoder:
    """Callable turning a raw webdataset sample into {"input_ids", "labels", "pixel_values", "image_spans"}
    or {"skip": reason}. Tokenization runs before image decoding: it is cheaper, it rejects most bad
    samples, and truncation may drop images that then need no decoding."""

    def __init__(
        self,
        tokenizer,
        template: str | ChatTemplate,
        image_processor: ImageProcessor,
        num_image_tokens: int,
        image_token_id: int,
        max_length: int,
    ):
        self.tokenizer = tokenizer
        self.template = get_template(template)
        self.image_processor = image_processor
        self.num_image_tokens = num_image_tokens
        self.image_token_id = image_token_id
        self.max_length = max_length

    def __call__(self, raw: dict) -> dict:
        try:
            return self._decode(raw)
        except SampleError as e:
            log.debug("skipping %s from %s: %s", raw.get("__key__"), raw.get("__url__"), e)
            return {"skip": e.reason}

    def _decode(self, raw: dict) -> dict:
        if "__error__" in raw:
            log.warning("tar read error in %s: %s", raw.get("__url__"), raw["__error__"])
            raise SampleError(TAR_ERROR, raw["__error__"])
        if "json" not in raw:
            raise SampleError(MISSING_JSON, f"members {sorted(k for k in raw if not k.startswith('__'))}")
        try:
            meta = json.loads(raw["json"])
            conversations = meta["conversations"]
            num_images = int(meta.get("num_images", 0))
        except (ValueError, KeyError, TypeError) as e:
            raise SampleError(MALFORMED, f"json member: {e}") from None
        members = sorted((int(m.group(1)), key) for key in raw if (m := _IMAGE_MEMBER.fullmatch(key)))
        if [i for i, _ in members] != list(range(num_images)):  # a tar cut short loses trailing members
            raise SampleError(INCOMPLETE_SAMPLE, f"json says {num_images} images, tar has {len(members)}")
        tokens = tokenize_conversation(
            conversations, self.tokenizer, self.template, self.num_image_tokens, self.max_length,
            self.image_token_id, num_images=num_images,
        )
        kept = members[: len(tokens.image_starts)]  # truncation drops the images of cut-off spans
        try:
            pixels = [self.image_processor(raw[key]) for _, key in kept]
        except ImageDecodeError as e:
            raise SampleError(BAD_IMAGE, str(e)) from None
        size = self.image_processor.image_size
        return {
            "input_ids": torch.tensor(tokens.input_ids, dtype=torch.long),  # (L,)
            "labels": torch.tensor(tokens.labels, dtype=torch.long),  # (L,)
            "pixel_values": torch.stack(pixels) if pixels else torch.zeros((0, 3, size, size)),  # (k, 3, S, S)
            "image_spans": [(start, self.num_image_tokens) for start in tokens.image_starts],
        }
