"""Shared fixtures for the data tests: the byte tokenizer, tiny images, and numbered shard sets."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from vregion.data import IGNORE_INDEX, ImageProcessor, build_loader, write_shards
from vregion.data.tokenizer import build_byte_tokenizer

NUM_IMAGE_TOKENS = 4
IMAGE_SIZE = 8


@pytest.fixture(scope="session")
def tok():
    return build_byte_tokenizer()


@pytest.fixture(scope="session")
def image_token_id(tok):
    return len(tok)  # the id an added "<image>" token would get


def png_bytes(colour=(200, 10, 10), size=6, mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (size, size), colour).save(out, format="PNG")
    return out.getvalue()


def jpeg_bytes(colour=(10, 200, 10), size=6) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, format="JPEG")
    return out.getvalue()


def numbered_sample(i: int, text_only: bool = False, image: bytes | None = None) -> dict:
    """Sample "s007" whose answer is its own id, so a batch row can be traced back to its sample."""
    if text_only:
        return {"id": f"s{i:03d}", "conversations": qa(f"question {i}", f"s{i:03d}"), "images": []}
    return {"id": f"s{i:03d}", "conversations": qa(f"<image>\nquestion {i}", f"s{i:03d}"),
            "images": [image or png_bytes((i * 7 % 256, 50, 100))]}


def qa(question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def write_numbered(out_dir, n: int, per_shard: int, text_only_every: int = 3, overrides: dict | None = None) -> list[str]:
    """n numbered samples (every `text_only_every`-th text-only) in shards; returns the ids in write order."""
    overrides = overrides or {}
    samples = [overrides.get(i) or numbered_sample(i, text_only=(i % text_only_every == 0)) for i in range(n)]
    write_shards(samples, out_dir, per_shard)
    return [s["id"] for s in samples]


def row_answers(batch: dict, tok) -> list[str]:
    """The supervised text of each batch row without the end token: the sample id for numbered samples."""
    out = []
    for labels in batch["labels"]:
        ids = labels[labels != IGNORE_INDEX].tolist()
        out.append(tok.decode(ids, skip_special_tokens=True).strip())
    return out


@pytest.fixture
def make_loader(tok, image_token_id):
    def make(shards, **kw):
        args = dict(template="chatml", num_image_tokens=NUM_IMAGE_TOKENS, max_length=256, micro_batch_size=2, seed=0)
        args.update(kw)
        return build_loader(shards, tok, image_processor=ImageProcessor(IMAGE_SIZE),
                            image_token_id=image_token_id, **args)
    return make
