"""Fixtures for compression tests; off CUDA the Triton kernel runs in Triton's CPU interpreter."""

import os

import pytest
import torch

# Must be set before vregion_kernels.pool_visual is imported (its kernels are defined at import time).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    """Fixed initialisation: every tiny model and random batch is the same on every run."""
    torch.manual_seed(0)
