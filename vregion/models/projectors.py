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
    """Linear(vision, llm) -> GELU -> Linear(llm, llm) (LLaVA-1.5's `mlp2x_gelu`)."""

    def __init__(self, vision_dim: int, llm_dim: int):
        super().__init__(nn.Linear(vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))

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
    return PROJECTORS[cfg.type](vision_dim, llm_dim)
