"""Linear probe of a vision tower's visual tokens: can a projector read each object's colour and shape?

The tower encodes generated scenes (`vregion.data.scenes`: 2-4 shapes on a 3 x 3 grid) once, frozen; one
linear layer on all of a picture's tokens then predicts every cell's colour (6 or empty) and shape (4 or empty).
Probes train on training scenes and are scored on eval scenes, whose held-out colour-shape pairs they never
saw; accuracy counts occupied cells only (empty cells are easy and would hide a blind tower).

A linear probe is a lower bound on what the tokens hold, but it answers the question that matters before a
long training run: if colour cannot be read linearly off the tokens, a VQA model built on them struggles with
colour whatever the LLM learns. This is how the demo's `feature_blocks` were chosen (docs/results.md).
"""

from __future__ import annotations

import random

import torch
from torch import nn
from tqdm import tqdm

from vregion.data.image import ImageProcessor
from vregion.data.scenes import COLOURS, GRID, HELD_OUT_PAIRS, SHAPES, random_scene, render

CELLS = GRID * GRID
COLOUR_CLASSES = (*COLOURS, "empty")
SHAPE_CLASSES = (*SHAPES, "empty")


def scene_labels(scene) -> tuple[list[int], list[int], list[bool]]:
    """Per cell (row-major): colour class, shape class, and whether its object is a held-out pair."""
    colour = [len(COLOURS)] * CELLS
    shape = [len(SHAPES)] * CELLS
    held_out = [False] * CELLS
    for obj in scene:
        cell = obj.row * GRID + obj.column
        colour[cell] = COLOUR_CLASSES.index(obj.colour)
        shape[cell] = SHAPE_CLASSES.index(obj.shape)
        held_out[cell] = obj.pair in HELD_OUT_PAIRS
    return colour, shape, held_out


@torch.no_grad()
def encode_scenes(backbone: nn.Module, split: str, count: int, seed: int, batch_size: int = 32,
                  progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`count` jittered scenes of `split` -> (features (count, tokens * channels), colour, shape, held-out)."""
    rng = random.Random(f"{seed}/{split}")
    processor = ImageProcessor(backbone.image_size, backbone.image_mean, backbone.image_std)
    features, labels = [], []
    bar = tqdm(total=count, desc=f"encoding {split} scenes", disable=not progress, dynamic_ncols=True)
    for start in range(0, count, batch_size):
        scenes = [random_scene(rng, split) for _ in range(min(batch_size, count - start))]
        pixels = torch.stack([processor(render(s, backbone.image_size, rng)) for s in scenes])
        features.append(backbone(pixels).flatten(1).float())
        labels.extend(scene_labels(s) for s in scenes)
        bar.update(len(scenes))
    bar.close()
    colour, shape, held_out = (torch.tensor([row[i] for row in labels]) for i in range(3))
    return torch.cat(features), colour, shape, held_out


def _fit(x: torch.Tensor, colour: torch.Tensor, shape: torch.Tensor, epochs: int, lr: float, seed: int) -> nn.Linear:
    """One linear layer, all cells' colour and shape logits at once, cross-entropy, Adam on mini-batches."""
    torch.manual_seed(seed)
    probe = nn.Linear(x.shape[1], CELLS * (len(COLOUR_CLASSES) + len(SHAPE_CLASSES)))
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(100):
            logits = probe(x[batch]).view(len(batch), CELLS, -1)
            loss = (nn.functional.cross_entropy(logits[..., : len(COLOUR_CLASSES)].flatten(0, 1), colour[batch].flatten())
                    + nn.functional.cross_entropy(logits[..., len(COLOUR_CLASSES):].flatten(0, 1), shape[batch].flatten()))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return probe


def probe_tower(backbone: nn.Module, num_train: int = 3000, num_eval: int = 500, epochs: int = 30, lr: float = 1e-3,
                seed: int = 0, progress: bool = True) -> dict:
    """Train the probe on `num_train` training scenes, score it on `num_eval` eval scenes.

    Returns:
        {"colour", "colour_held_out_pairs", "shape"}: accuracies over occupied cells (all objects, and only the
        objects of held-out pairs), with "tokens", "channels", "objects", "held_out_objects".
    """
    backbone = backbone.eval()
    x_train, colour, shape, _ = encode_scenes(backbone, "train", num_train, seed, progress=progress)
    x_eval, colour_eval, shape_eval, held_out = encode_scenes(backbone, "eval", num_eval, seed, progress=progress)
    # Standardise with the training statistics: towers' channels differ in scale by orders of magnitude.
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    probe = _fit((x_train - mean) / std, colour, shape, epochs, lr, seed)
    with torch.no_grad():
        logits = probe((x_eval - mean) / std).view(len(x_eval), CELLS, -1)
    colour_hit = logits[..., : len(COLOUR_CLASSES)].argmax(-1) == colour_eval
    shape_hit = logits[..., len(COLOUR_CLASSES):].argmax(-1) == shape_eval
    occupied = colour_eval != len(COLOURS)
    return {
        "colour": colour_hit[occupied].float().mean().item(),
        "colour_held_out_pairs": colour_hit[held_out].float().mean().item(),
        "shape": shape_hit[occupied].float().mean().item(),
        "tokens": backbone.num_tokens, "channels": backbone.hidden_size,
        "objects": int(occupied.sum()), "held_out_objects": int(held_out.sum()),
    }
