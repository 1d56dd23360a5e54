"""Projectors: output shapes, LLaVA-compatible parameter names, last_linear, registry errors."""

import pytest
import torch
from torch import nn

from vregion.config import ProjectorConfig
from vregion.models.projectors import build_projector


@pytest.mark.parametrize(
    "kind,keys", [("linear", {"weight", "bias"}), ("mlp2x_gelu", {"0.weight", "0.bias", "2.weight", "2.bias"})]
)
def test_shapes_names_and_last_linear(kind, keys):
    projector = build_projector(ProjectorConfig(type=kind), 32, 64)
    features = torch.randn(3, 16, 32)  # (M, N, vision_dim)
    out = projector(features)
    assert out.shape == (3, 16, 64)
    assert set(projector.state_dict()) == keys
    last = projector.last_linear
    assert isinstance(last, nn.Linear) and last.out_features == 64
    # last_linear is the layer producing the output: zeroing it must zero the projection (up to bias).
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(0.5)
    assert torch.equal(projector(features), torch.full((3, 16, 64), 0.5))


def test_mlp_is_linear_gelu_linear():
    projector = build_projector(ProjectorConfig(type="mlp2x_gelu"), 32, 64)
    x = torch.randn(2, 5, 32)
    expected = projector[2](torch.nn.functional.gelu(projector[0](x)))
    torch.testing.assert_close(projector(x), expected)
    assert (projector[0].in_features, projector[2].in_features) == (32, 64)


def test_unknown_projector_lists_valid_ids():
    with pytest.raises(ValueError, match="unknown projector 'qformer'; valid ids: linear, mlp2x_gelu"):
        build_projector(ProjectorConfig(type="qformer"), 32, 64)
