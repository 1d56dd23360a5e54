"""Projector registry: maps vision features into the LLM's embedding space (LLaVA's `mm_projector`).

Parameter layouts follow LLaVA's (`weight`/`bias` for linear, `0.*`/`2.*` for mlp2x_gelu), so a LLaVA
projector checkpoint loads after stripping its `model.mm_projector.` prefix.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from vregion.config import ProjectorConfig


class LinearProjector(nn.Linear):
    """One linear map vision_dim -> llm_dim (LLaVA-1.0)."""

    def __init__(self, vision_dim: int, llm_dim: int):
        super().__init__(vision_dim, llm_dim)

    @property
    def last_linear(self) -> nn.Linear:
        """The layer whose output is the LLM embedding (VPG transfer merges its converter into it)."""
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (M, N, vision_dim) -> (M, N, llm_dim)."""
        return super().forward(features)


class MLPProjector(nn.Sequential):
    """Linear(vision, hidden) -> GELU -> Linear(hidden, llm) (LLaVA-1.5's `mlp2x_gelu`; hidden defaults to llm).

    A VPG-transferred projector keeps its source LLM's inner width, so `hidden_size` may differ from `llm_dim`.
    """

    def __init__(self, vision_dim: int, llm_dim: int, hidden_size: int | None = None):
        hidden = hidden_size or llm_dim
        super().__init__(nn.Linear(vision_dim, hidden), nn.GELU(), nn.Linear(hidden, llm_dim))

    @property
    def last_linear(self) -> nn.Linear:
        """The layer whose output is the LLM embedding (VPG transfer merges its converter into it)."""
        return self[-1]


PROJECTORS: dict[str, Callable[[int, int], nn.Module]] = {
    "linear": LinearProjector,
    "mlp2x_gelu": MLPProjector,
}


def build_projector(cfg: ProjectorConfig, vision_dim: int, llm_dim: int) -> nn.Module:
    """Build the projector named by cfg.type; an unknown id fails with the list of valid ones."""
    if cfg.type not in PROJECTORS:
        raise ValueError(f"unknown projector '{cfg.type}'; valid ids: {', '.join(sorted(PROJECTORS))}")
    if cfg.hidden_size is not None:
        if cfg.type != "mlp2x_gelu":
            raise ValueError(f"projector.hidden_size applies to mlp2x_gelu only, not '{cfg.type}'")
        return PROJECTORS[cfg.type](vision_dim, llm_dim, cfg.hidden_size)
    return PROJECTORS[cfg.type](vision_dim, llm_dim)
