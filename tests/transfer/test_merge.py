"""The merged projector equals the word converter applied to the source projector's output."""

from __future__ import annotations

import pytest
import torch

from vregion.config import ProjectorConfig
from vregion.models.projectors import build_projector
from vregion.transfer import WordConverter, merge_projector


@pytest.mark.parametrize("kind", ["linear", "mlp2x_gelu"])
def test_merged_projector_is_converter_of_source(kind):
    source = build_projector(ProjectorConfig(type=kind), 32, 64).double()  # d_v 32 -> d_s 64
    converter = WordConverter(64, 96).double()  # d_s 64 -> d_t 96
    torch.nn.init.normal_(converter.bias)  # a non-zero bias exercises b_t = W b_s + b
    target = merge_projector(source, converter, 96)
    v = torch.randn(3, 5, 32, dtype=torch.float64)  # (M, N, d_v)
    expected = converter(source(v))  # (M, N, d_t)
    got = target(v)
    assert got.shape == (3, 5, 96)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert target.last_linear.weight.shape == ((96, 32) if kind == "linear" else (96, 64))
    if kind == "mlp2x_gelu":  # the inner layer carries over: the target keeps the source's inner width
        assert torch.equal(target[0].weight, source[0].weight) and torch.equal(target[0].bias, source[0].bias)
    assert source.last_linear.weight.shape[0] == 64  # the source is untouched


def test_merge_rejects_mismatched_converter():
    source = build_projector(ProjectorConfig(type="linear"), 32, 64)
    with pytest.raises(ValueError, match="converter maps 48 -> 96"):
        merge_projector(source, WordConverter(48, 96), 96)


def test_projector_hidden_size_is_the_inner_width():
    mlp = build_projector(ProjectorConfig(type="mlp2x_gelu", hidden_size=48), 32, 96)
    assert mlp[0].weight.shape == (48, 32) and mlp[2].weight.shape == (96, 48)
    default = build_projector(ProjectorConfig(type="mlp2x_gelu"), 32, 96)
    assert default[0].weight.shape == (96, 32)
    with pytest.raises(ValueError, match="mlp2x_gelu only"):
        build_projector(ProjectorConfig(type="linear", hidden_size=48), 32, 96)


def test_ablation_inherits_the_inner_layer_and_keeps_a_fresh_last_linear():
    from vregion.transfer.merge import inherit_inner_layers

    source = build_projector(ProjectorConfig(type="mlp2x_gelu"), 32, 64)
    target = build_projector(ProjectorConfig(type="mlp2x_gelu", hidden_size=64), 32, 96)
    fresh_last = target[2].weight.clone()
    inherit_inner_layers(source, target)
    assert torch.equal(target[0].weight, source[0].weight) and torch.equal(target[0].bias, source[0].bias)
    assert torch.equal(target[2].weight, fresh_last)
