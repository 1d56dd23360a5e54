"""The word converter g(x) = W x + b from a source LLM's input embeddings to a target LLM's (VPGTrans stage 1b)."""

from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vregion.config import TransferConfig

log = logging.getLogger(__name__)

HELDOUT_FRACTION = 0.1  # share of unique pairs kept out of training to report generalisation


class WordConverter(nn.Linear):
    """g(x) = W x + b, (..., d_s) -> (..., d_t); W is (d_t, d_s) like any nn.Linear."""

    def __init__(self, src_dim: int, tgt_dim: int):
        super().__init__(src_dim, tgt_dim)


def cosine_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos over rows: pred, target (N, d_t) -> scalar."""
    return (1.0 - F.cosine_similarity(pred, target, dim=-1)).mean()


def split_pairs(pairs: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) rows of pairs (P, 2); held-out is HELDOUT_FRACTION of them (none below 10 pairs)."""
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))
    n_held = int(len(pairs) * HELDOUT_FRACTION) if len(pairs) >= 10 else 0
    return pairs[order[n_held:]], pairs[order[:n_held]]


def fit_converter(
    src_emb: torch.Tensor,
    tgt_emb: torch.Tensor,
    pairs: Sequence[tuple[int, int]],
    cfg: TransferConfig,
    seed: int = 0,
) -> tuple[WordConverter, dict]:
    """Train g so that g(e_src[i]) points along e_tgt[j] for every aligned pair (i, j).

    Loss 1 - cos(g(e_src), e_tgt), plain SGD (cfg.converter_lr, cfg.converter_epochs, cfg.converter_batch),
    over unique pairs shuffled each epoch; a seeded HELDOUT_FRACTION of the pairs is held out.
    g is not rescaled to the target embeddings' norm: on the demo (SmolLM2 -> Gemma3, ~8x longer embeddings)
    that made the transferred start worse (held-out loss 16.8 vs 15.4 at init, 9.8 vs 6.0 after 25 steps).

    Args:
        src_emb: (V_s, d_s) source input embeddings as the LLM sees them (scaling included).
        tgt_emb: (V_t, d_t) target input embeddings.
        pairs: unique (src_id, tgt_id) pairs.
        cfg: the transfer section.
        seed: seeds W's initialisation, the split and the batch order.
    Returns:
        (converter in fp32 on CPU, report dict: train_pairs, heldout_pairs, steps, train_cosine, heldout_cosine).
    """
    if len(pairs) == 0:
        raise ValueError("no aligned token pairs: the corpus shares no token spans between the two tokenizers")
    src_emb, tgt_emb = src_emb.detach().float().cpu(), tgt_emb.detach().float().cpu()
    all_pairs = torch.tensor(list(pairs), dtype=torch.long)  # (P, 2)
    train, held = split_pairs(all_pairs, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        converter = WordConverter(src_emb.shape[1], tgt_emb.shape[1])
    optimizer = torch.optim.SGD(converter.parameters(), lr=cfg.converter_lr)
    gen = torch.Generator().manual_seed(seed + 1)
    steps = 0
    for epoch in range(cfg.converter_epochs):
        order = torch.randperm(len(train), generator=gen)
        for start in range(0, len(train), cfg.converter_batch):
            batch = train[order[start : start + cfg.converter_batch]]  # (B, 2)
            loss = cosine_loss(converter(src_emb[batch[:, 0]]), tgt_emb[batch[:, 1]])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
        log.debug("converter epoch %d: loss %.4f", epoch, float(loss.detach()))
    report = {
        "train_pairs": len(train),
        "heldout_pairs": len(held),
        "steps": steps,
        "train_cosine": mean_cosine(converter, src_emb, tgt_emb, train),
        "heldout_cosine": mean_cosine(converter, src_emb, tgt_emb, held) if len(held) else None,
    }
    log.info("word converter: %s", report)
    return converter, report


@torch.no_grad()
def mean_cosine(converter: nn.Module, src_emb: torch.Tensor, tgt_emb: torch.Tensor, pairs: torch.Tensor) -> float:
    """Mean cos(g(e_src), e_tgt) over pairs (P, 2)."""
    return float(F.cosine_similarity(converter(src_emb[pairs[:, 0]]), tgt_emb[pairs[:, 1]], dim=-1).mean())
