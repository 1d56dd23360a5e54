"""The word converter recovers a known affine map between two tiny LLMs' input embeddings."""

from __future__ import annotations

import torch

from vregion.config import LLMConfig, TransferConfig
from vregion.models.llm import build_llm
from vregion.transfer import fit_converter
from vregion.transfer.plan import input_embeddings


def test_converter_recovers_affine_map_on_heldout_pairs():
    llm, _ = build_llm(LLMConfig(tiny={"family": "llama", "initializer_range": 0.15}))
    src = input_embeddings(llm)  # (V, 64)
    A, c = torch.randn(96, 64) / 8, torch.randn(96) * 0.05
    tgt = src @ A.T + c  # (V, 96): the target "LLM" sees the same words through an affine map
    pairs = [(i, i) for i in range(src.shape[0])]
    cfg = TransferConfig(converter_epochs=20, converter_lr=5.0, converter_batch=32)
    converter, report = fit_converter(src, tgt, pairs, cfg)
    assert report["heldout_pairs"] == len(pairs) // 10 and report["train_pairs"] == len(pairs) - len(pairs) // 10
    assert report["heldout_cosine"] > 0.99
    assert converter.weight.shape == (96, 64)
    # an untrained converter is far from the map, so the cosine measures what training learned
    untrained, before = fit_converter(src, tgt, pairs, TransferConfig(converter_epochs=0))
    assert before["heldout_cosine"] < 0.5 and before["steps"] == 0


def test_converter_without_pairs_fails_clearly():
    try:
        fit_converter(torch.zeros(4, 8), torch.zeros(4, 8), [], TransferConfig())
    except ValueError as e:
        assert "no aligned token pairs" in str(e)
    else:
        raise AssertionError("expected ValueError")
