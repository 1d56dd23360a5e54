"""`vision.feature_blocks`: EfficientNet block outputs, pooled to the stride-32 grid, feed the projector."""

from __future__ import annotations

import pytest
import torch

from tests.models.tiny import tiny_model_config
from vregion.bench.shapes import vision_shape
from vregion.config import ConfigError, VisionConfig, from_dict, to_dict
from vregion.models import build_vlm, load_checkpoint, save_checkpoint
from vregion.models.backbones import build_vision_backbone

pytest.importorskip("efficientnet_lite_pytorch", reason="pip install efficientnet-lite-pytorch==0.1.0")


def lite0(image_size: int, blocks=None):
    torch.manual_seed(0)
    return build_vision_backbone(VisionConfig(type="efficientnet-lite0", tiny={}, image_size=image_size,
                                              feature_blocks=blocks)).eval()


def block_outputs(backbone, x, indices):
    """The blocks' outputs as the package's own `extract_features` computes them, caught by forward hooks."""
    seen = {}
    hooks = [backbone.model._blocks[i].register_forward_hook(lambda m, a, out, i=i: seen.setdefault(i, out))
             for i in indices]
    with torch.no_grad():
        backbone.model.extract_features(x)
    for h in hooks:
        h.remove()
    return seen


def test_blocks_15_and_5_give_400_channels_pooled_to_the_head_grid():
    backbone = lite0(128, [15, 5])
    x = torch.randn(6, 3, 128, 128, generator=torch.Generator().manual_seed(1))  # CPU chunks of 4 and 2
    with torch.no_grad():
        tokens = backbone(x)
    assert (backbone.num_tokens, backbone.hidden_size) == (16, 400) and tokens.shape == (6, 16, 400)
    seen = block_outputs(backbone, x, [5, 15])
    assert seen[15].shape == (6, 320, 4, 4) and seen[5].shape == (6, 80, 8, 8)
    coarse = seen[5].unflatten(2, (4, 2)).unflatten(4, (4, 2)).mean((3, 5))  # 2 x 2 means: (6, 80, 4, 4)
    r, c = 2, 1  # token r * 4 + c, channels in the listed order: block 15 first
    torch.testing.assert_close(tokens[:, r * 4 + c, :320], seen[15][:, :, r, c])
    torch.testing.assert_close(tokens[:, r * 4 + c, 320:], coarse[:, :, r, c])


def test_a_side_that_is_not_a_multiple_of_32_pools_every_block_to_the_same_grid():
    backbone = lite0(100, [-1, 3])  # -1 is block 15; 100 px: a 4 x 4 grid, block 3 is 7 x 7
    assert backbone.blocks == (15, 3) and backbone.hidden_size == 320 + 40
    with torch.no_grad():
        tokens = backbone(torch.randn(2, 3, 100, 100, generator=torch.Generator().manual_seed(2)))
    assert tokens.shape == (2, 16, 360) and torch.isfinite(tokens).all()


def test_no_blocks_keeps_the_head():
    backbone = lite0(64)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), backbone.model.extract_features(x).flatten(2).transpose(1, 2))
    assert backbone.hidden_size == 1280


@pytest.mark.parametrize("blocks,message", [
    ([16], r"feature_blocks \[16\] out of range for a 16-block EfficientNet \(valid: -16..15\)"),
    ([5, -11], "names a block twice"),
    ([], "non-empty list"),
    (["5"], "non-empty list of block indices"),
])
def test_bad_blocks_are_refused_with_the_valid_range(blocks, message):
    with pytest.raises(ValueError, match=message):
        lite0(64, blocks)


def test_a_vit_tower_refuses_feature_blocks():
    with pytest.raises(ValueError, match="feature_blocks applies to CNN towers.*feature_layer"):
        build_vision_backbone(VisionConfig(type="clip", tiny={}, feature_blocks=[1]))


def test_yaml_form_is_a_list():
    assert from_dict(VisionConfig, {"feature_blocks": [15, 5]}).feature_blocks == [15, 5]
    with pytest.raises(ConfigError, match="feature_blocks: expected list, got 15"):
        from_dict(VisionConfig, {"feature_blocks": 15}, "model.vision")


def test_projector_plan_and_checkpoint_follow_the_block_channels(tmp_path):
    cfg = tiny_model_config("llama", vision="efficientnet-lite0")
    cfg.vision.image_size, cfg.vision.feature_blocks = 64, [15, 5]
    model, tokenizer = build_vlm(cfg)
    assert model.projector(torch.zeros(1, 4, 400)).shape[-1] == model.llm.config.hidden_size
    assert vision_shape(cfg).hidden == 400 and vision_shape(cfg).tokens == 4
    path = save_checkpoint(model, {"model": to_dict(cfg)}, tokenizer, tmp_path / "ckpt")
    loaded, _, config = load_checkpoint(path)
    assert config["model"]["vision"]["feature_blocks"] == [15, 5]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval().vision(x), model.eval().vision(x))
