"""Fixtures for transfer tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    """Fixed initialisation: every tiny model is the same on every run."""
    torch.manual_seed(0)
