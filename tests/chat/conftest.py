"""A briefly trained tiny checkpoint (configs/tiny.yaml's model, smaller) in a run's stage layout, and images."""

from __future__ import annotations

import json
import random

import pytest
import torch

from vregion.config import LLMConfig, ModelConfig, ProjectorConfig, VisionConfig, to_dict
from vregion.data import ImageProcessor, build_loader, make_synthetic_shards
from vregion.data.synthetic import COLOURS, draw_shape
from vregion.models import build_vlm, save_checkpoint

TEMPLATE = "vicuna-v1"
IMAGE_SIZE = 16
QUESTION = "What colour is this?"


def tiny_config() -> ModelConfig:
    """The tiny CLIP + tiny llama of configs/tiny.yaml at 16 px (4 visual tokens) and 2 layers: seconds to train."""
    return ModelConfig(
        vision=VisionConfig(type="clip", tiny={"image_size": IMAGE_SIZE, "patch_size": 8}),
        projector=ProjectorConfig(type="mlp2x_gelu"),
        llm=LLMConfig(tiny={"family": "llama", "num_hidden_layers": 2, "initializer_range": 0.15}),
        template=TEMPLATE,
    )


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """root with run/region/final (the checkpoint), run/region/summary.json (the trainer's keys) and images.

    40 Adam steps on coloured-shape shards, so answers are words of the data (not noise) and differ by image.
    """
    root = tmp_path_factory.mktemp("chat")
    make_synthetic_shards(root / "train", 96, image_size=IMAGE_SIZE, seed=0, samples_per_shard=96)
    torch.manual_seed(0)
    cfg = tiny_config()
    model, tokenizer = build_vlm(cfg)
    loader = build_loader(
        str(root / "train"), tokenizer=tokenizer, template=TEMPLATE,
        image_processor=ImageProcessor(IMAGE_SIZE, model.vision.image_mean, model.vision.image_std),
        num_image_tokens=model.num_visual_tokens, image_token_id=tokenizer.pad_token_id, max_length=256,
        micro_batch_size=8, seed=0, shuffle_buffer=0, infinite=True,
    )
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    # Ops this small gain nothing from a second thread, and on a shared, busy machine two threads waiting on each
    # other made these 40 steps 30x slower (75 s against 2.5 s measured).
    torch.set_num_threads(1)
    try:
        for _, batch in zip(range(40), loader):
            keys = ("input_ids", "attention_mask", "labels", "pixel_values", "image_spans")
            loss = model(**{k: batch[k] for k in keys}, return_logits=False)["loss"]
            optim.zero_grad()
            loss.backward()
            optim.step()
    finally:
        torch.set_num_threads(threads)
    config = {"model": to_dict(cfg), "data": {"max_length": 256}, "compress": {"schedule": None},
              "region": {"strategy": "all"}}
    stage = root / "run" / "region"
    save_checkpoint(model, config, tokenizer, stage / "final")
    summary = {"stage": "region", "steps": 40, "region_layers": [0, 1], "region_mode": "full",
               "eval_loss": 1.2345, "eval_vqa_accuracy": 0.375}
    (stage / "summary.json").write_text(json.dumps(summary))
    for colour, shape in (("red", "circle"), ("blue", "square")):
        (root / f"{colour}.png").write_bytes(draw_shape(shape, COLOURS[colour], 32, random.Random(0)))
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really an image" * 10)
    return root


@pytest.fixture(scope="session")
def checkpoint(trained):
    return trained / "run" / "region" / "final"
