"""`vregion probe-vision`: a linear probe reads colour off informative tokens and not off blind ones."""

from __future__ import annotations

import json

import torch
from torch import nn

from vregion.cli import main
from vregion.data.scenes import BACKGROUND, COLOURS, SHAPES, SceneObject
from vregion.eval.feature_probe import probe_tower, scene_labels


class PaletteGrid(nn.Module):
    """A 'tower' whose tokens are each grid cell's share of pixels nearest each scene colour (or the
    background): colour is in them, linearly; `blind` gives zeros."""

    image_size, image_mean, image_std, num_tokens, hidden_size = 48, (0.5,) * 3, (0.5,) * 3, 9, len(COLOURS) + 1

    def __init__(self, blind: bool = False):
        super().__init__()
        self.blind = blind
        self.register_buffer("palette", torch.tensor([*COLOURS.values(), BACKGROUND], dtype=torch.float32) / 255)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        rgb = pixels * 0.5 + 0.5  # undo the normalisation: (M, 3, S, S) in [0, 1]
        nearest = torch.cdist(rgb.permute(0, 2, 3, 1).flatten(1, 2), self.palette).argmin(-1)  # (M, S * S)
        one_hot = nn.functional.one_hot(nearest, len(self.palette)).float()
        shares = one_hot.view(len(pixels), self.image_size, self.image_size, -1).permute(0, 3, 1, 2)
        tokens = nn.functional.adaptive_avg_pool2d(shares, 3).flatten(2).transpose(1, 2)  # (M, 9, 7)
        return torch.zeros_like(tokens) if self.blind else tokens


def test_labels_are_per_cell_row_major_with_held_out_pairs_marked():
    scene = (SceneObject("triangle", "red", "large", column=2, row=0),  # a held-out pair, cell 2
             SceneObject("circle", "green", "small", column=0, row=1))  # cell 3
    colour, shape, held_out = scene_labels(scene)
    empty_colour, empty_shape = len(COLOURS), len(SHAPES)
    assert colour == [empty_colour, empty_colour, 0, 1] + [empty_colour] * 5  # red = 0, green = 1
    assert shape == [empty_shape, empty_shape, 2, 0] + [empty_shape] * 5  # triangle = 2, circle = 0
    assert held_out == [False, False, True] + [False] * 6


def test_colour_is_read_off_informative_tokens_and_not_off_blind_ones():
    seeing = probe_tower(PaletteGrid(), num_train=400, num_eval=100, epochs=100, lr=3e-2, progress=False)
    blind = probe_tower(PaletteGrid(blind=True), num_train=400, num_eval=100, epochs=100, lr=3e-2, progress=False)
    assert seeing["colour"] > 0.75 and seeing["colour_held_out_pairs"] > 0.75, seeing
    assert blind["colour"] < 0.3 and blind["shape"] < 0.3, blind  # a blind probe says "empty" or guesses
    assert seeing["held_out_objects"] == 100  # every eval scene holds exactly one held-out pair
    assert 200 <= seeing["objects"] <= 400  # 2-4 objects a scene


def test_cli_probes_the_tiny_clip_tower(capsys):
    assert main(["probe-vision", "tiny", "--train", "64", "--eval", "16", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])
    assert (result["tokens"], result["channels"]) == (16, 32)  # 32 px, patch 8, hidden 32
    assert result["held_out_objects"] == 16 and 32 <= result["objects"] <= 64
    assert all(0.0 <= result[k] <= 1.0 for k in ("colour", "colour_held_out_pairs", "shape"))


def test_cli_refuses_a_zero_count(capsys):
    assert main(["probe-vision", "tiny", "--eval", "0"]) == 2
    assert "--train, --eval and --epochs must be >= 1" in capsys.readouterr().err
