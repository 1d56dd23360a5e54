"""Fixtures for the region tests: a seeded tiny VLM builder and fixed token ids."""

from __future__ import annotations

import pytest
import torch

from .tiny import VOCAB, TinyVLM


@pytest.fixture
def build_vlm():
    """build_vlm(family="llama", tied=False) -> a seeded TinyVLM in eval mode (no dropout)."""

    def build(family: str = "llama", tied: bool = False) -> TinyVLM:
        torch.manual_seed(0)
        return TinyVLM(family, tied).eval()

    return build


@pytest.fixture
def input_ids():
    return torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
