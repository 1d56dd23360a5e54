"""Deterministic synthetic shards for smoke runs: coloured shapes whose answers can be read off the image.

A tiny random model learns these within tens of steps (the answer is one of six colour words, or one of
three shape words, fully determined by the pixels), so a falling loss shows the image path works end to end.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image, ImageDraw

from .writer import write_shards

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (250, 140, 20),
}
SHAPES = ("square", "circle", "triangle")
COLOUR_QUESTIONS = ("What colour is this?", "What colour is the shape?")
SHAPE_QUESTIONS = ("What shape is this?",)
TEXT_ONLY_SHARE = 0.1  # some text-only samples, so mixed batches are exercised in every smoke run


def draw_shape(shape: str, colour: tuple[int, int, int], size: int, rng: random.Random) -> bytes:
    """PNG bytes of one shape on a grey background, with a small seeded jitter of position and size."""
    image = Image.new("RGB", (size, size), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    extent = size * rng.uniform(0.55, 0.8)
    x0 = rng.uniform(0, size - extent)
    y0 = rng.uniform(0, size - extent)
    box = (x0, y0, x0 + extent, y0 + extent)
    if shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "circle":
        draw.ellipse(box, fill=colour)
    else:
        draw.polygon([(x0 + extent / 2, y0), (x0, y0 + extent), (x0 + extent, y0 + extent)], fill=colour)
    out = io.BytesIO()
    image.save(out, format="PNG")  # PNG without metadata is byte-deterministic
    return out.getvalue()


def synthetic_sample(index: int, image_size: int, rng: random.Random) -> dict:
    """One sample: ~10% text-only arithmetic, otherwise a shape image with a colour (or shape) question."""
    if rng.random() < TEXT_ONLY_SHARE:
        a, b = rng.randrange(10), rng.randrange(10)
        conversations = [{"from": "human", "value": f"What is {a}+{b}?"}, {"from": "gpt", "value": str(a + b)}]
        return {"id": f"syn{index:08d}", "conversations": conversations, "images": []}
    colour = rng.choice(sorted(COLOURS))
    shape = rng.choice(SHAPES)
    image = draw_shape(shape, COLOURS[colour], image_size, rng)
    if rng.random() < 0.75:  # mostly colour questions: the easiest signal for a tiny model
        question, answer = rng.choice(COLOUR_QUESTIONS), colour
    else:
        question, answer = rng.choice(SHAPE_QUESTIONS), shape
    conversations = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]
    return {"id": f"syn{index:08d}", "conversations": conversations, "images": [image]}


def make_synthetic_shards(
    out_dir: str | Path, num_samples: int, image_size: int = 32, seed: int = 0, samples_per_shard: int = 16
) -> dict:
    """Write `num_samples` synthetic samples as shards + index.json in `out_dir`; same seed, same bytes.

    Returns:
        The shard index ({"shards": [...], "total": N}).
    """
    rng = random.Random(f"vregion-synthetic-{seed}")
    samples = (synthetic_sample(i, image_size, rng) for i in range(num_samples))
    return write_shards(samples, out_dir, samples_per_shard, total=num_samples)
