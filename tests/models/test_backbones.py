"""Vision backbones: token counts, CLS handling, feature layer, normalisation constants, registry errors."""

import pytest
import torch

from vregion.config import VisionConfig
from vregion.models.backbones import BACKBONES, CLIP_MEAN, build_vision_backbone


def hf_hidden_states(backbone, pixels):
    with torch.no_grad():
        return backbone.model(pixel_values=pixels, output_hidden_states=True).hidden_states


def test_clip_drops_cls_and_reads_second_to_last_layer():
    backbone = build_vision_backbone(VisionConfig(type="clip", tiny={}))
    pixels = torch.randn(3, 3, 32, 32)  # (M, 3, H, W)
    with torch.no_grad():
        features = backbone(pixels)
    assert (backbone.num_tokens, backbone.hidden_size, backbone.image_size) == (16, 32, 32)
    assert features.shape == (3, 16, 32)
    hidden = hf_hidden_states(backbone, pixels)
    assert hidden[-2].shape[1] == 17  # CLS + 16 patches before dropping
    torch.testing.assert_close(features, hidden[-2][:, 1:], rtol=0, atol=0)
    assert backbone.image_mean == CLIP_MEAN and backbone.image_std[0] == pytest.approx(0.26862954)


def test_siglip_has_no_cls_token():
    backbone = build_vision_backbone(VisionConfig(type="siglip", tiny={}))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = backbone(pixels)
    hidden = hf_hidden_states(backbone, pixels)
    assert backbone.num_tokens == 16 and hidden[-2].shape[1] == 16
    torch.testing.assert_close(features, hidden[-2], rtol=0, atol=0)
    assert backbone.image_mean == (0.5, 0.5, 0.5) and backbone.image_std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("layer", [-1, 0])  # the tiny tower has hidden_states 0..2; -2 == 1
def test_feature_layer_respected(layer):
    backbone = build_vision_backbone(VisionConfig(type="clip", tiny={}, feature_layer=layer))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = backbone(pixels)
    hidden = hf_hidden_states(backbone, pixels)
    torch.testing.assert_close(features, hidden[layer][:, 1:], rtol=0, atol=0)
    assert not torch.allclose(features, hidden[-2][:, 1:])  # really a different layer than the default


def test_tiny_overrides_and_image_size_change_token_count():
    backbone = build_vision_backbone(VisionConfig(type="siglip", tiny={"patch_size": 4, "hidden_size": 16}))
    assert (backbone.num_tokens, backbone.hidden_size) == (64, 16)
    backbone = build_vision_backbone(VisionConfig(type="clip", tiny={}, image_size=48))
    assert backbone.image_size == 48 and backbone.num_tokens == 36
    assert backbone(torch.randn(1, 3, 48, 48)).shape == (1, 36, 32)


@pytest.mark.parametrize("tower", ["siglip", "clip"])
def test_image_side_not_a_multiple_of_the_patch_builds_like_hf(tower):
    """SigLIP-so400m is 384 px with 14 px patches (the Bunny recipe's tower): the patch convolution drops the last
    pixels, 27 x 27 = 729 tokens. The tiny analogue: 30 px, 8 px patches -> 3 x 3."""
    backbone = build_vision_backbone(VisionConfig(type=tower, tiny={"image_size": 30, "patch_size": 8}))
    pixels = torch.randn(2, 3, 30, 30)
    with torch.no_grad():
        features = backbone(pixels)
    hidden = hf_hidden_states(backbone, pixels)
    prefix = 1 if tower == "clip" else 0
    assert backbone.num_tokens == 9 and features.shape == (2, 9, 32)
    torch.testing.assert_close(features, hidden[-2][:, prefix:], rtol=0, atol=0)


def test_unknown_backbone_lists_valid_ids():
    with pytest.raises(ValueError, match="unknown vision backbone 'eva'; valid ids: ") as error:
        build_vision_backbone(VisionConfig(type="eva", tiny={}))
    listed = str(error.value).split("valid ids: ")[1].split(", ")
    assert listed == sorted(BACKBONES) and {"clip", "siglip"} <= set(listed)


def test_feature_layer_out_of_range():
    with pytest.raises(ValueError, match="feature_layer -4 out of range"):
        build_vision_backbone(VisionConfig(type="clip", tiny={}, feature_layer=-4))


def test_needs_path_or_tiny():
    with pytest.raises(ValueError, match="either `path`"):
        build_vision_backbone(VisionConfig(type="clip"))
