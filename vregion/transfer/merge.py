"""Merge the word converter into a projector's last linear, so the projector speaks the target LLM's embeddings."""

from __future__ import annotations

import copy

import torch
from torch import nn

from vregion.models.projectors import LinearProjector, MLPProjector


def _empty_like_target(source: nn.Module, tgt_dim: int) -> nn.Module:
    """A projector of the source's kind and inner widths whose output width is tgt_dim."""
    if isinstance(source, MLPProjector):
        vision_dim, hidden = source[0].in_features, source[0].out_features
        return MLPProjector(vision_dim, tgt_dim, hidden_size=hidden)
    if isinstance(source, LinearProjector):
        return LinearProjector(source.in_features, tgt_dim)
    raise TypeError(f"cannot merge a converter into {type(source).__name__} (known: linear, mlp2x_gelu)")


@torch.no_grad()
def inherit_inner_layers(source: nn.Module, target: nn.Module) -> nn.Module:
    """The ablation without the converter: copy everything before the last linear (mlp2x_gelu's first linear),
    keep the target's own freshly initialised last linear. A linear projector inherits nothing."""
    if isinstance(source, MLPProjector):
        for i in range(len(source) - 1):
            target[i].load_state_dict(copy.deepcopy(source[i].state_dict()))
    return target


@torch.no_grad()
def merge_projector(source: nn.Module, converter: nn.Linear, target_llm_dim: int) -> nn.Module:
    """The target projector P_t with P_t(v) = g(P_s(v)) exactly (up to float rounding).

    Only the last linear changes: W_t = W W_s, b_t = W b_s + b, computed in float64. Everything before it
    (mlp2x_gelu's first linear) is copied, so the inner width stays the source LLM's d_s.

    Args:
        source: source projector (LinearProjector or MLPProjector) with output width d_s.
        converter: g with weight (d_t, d_s) and bias (d_t,).
        target_llm_dim: d_t, the target LLM's hidden size (checked against the converter).
    Returns:
        a new projector in the source's dtype and device; the source is left untouched.
    """
    last = source.last_linear
    if converter.weight.shape != (target_llm_dim, last.out_features):
        raise ValueError(
            f"converter maps {converter.in_features} -> {converter.out_features}, but the projector outputs "
            f"{last.out_features} and the target LLM takes {target_llm_dim}"
        )
    target = _empty_like_target(source, target_llm_dim).to(dtype=last.weight.dtype, device=last.weight.device)
    inherit_inner_layers(source, target)  # inner layers carry over unchanged
    W = converter.weight.double().to(last.weight.device)  # (d_t, d_s)
    b = converter.bias.double().to(last.weight.device)  # (d_t,)
    w_s = last.weight.double()  # (d_s, h)
    b_s = last.bias.double() if last.bias is not None else w_s.new_zeros(w_s.shape[0])  # (d_s,)
    target.last_linear.weight.copy_(W @ w_s)  # (d_t, h)
    target.last_linear.bias.copy_(W @ b_s + b)  # (d_t,)
    return target
