"""Next-token choice for decoding through the runner: greedy, or sampled with temperature and top-p (nucleus).

The LLM's own `generate` does the same for cached decoding (Hugging Face's temperature and top-p processors); this
is the runner's copy, used when a compression hook forces decoding without a KV cache.
"""

from __future__ import annotations

from typing import Optional

import torch


def next_token(logits: torch.Tensor, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Logits (B, V) of the last position -> chosen token ids (B,).

    Greedy takes the argmax. Sampling divides the logits by `temperature`, keeps the smallest set of most likely
    tokens whose probabilities sum to at least `top_p` (the most likely token always stays), and draws from it.
    """
    if not do_sample:
        return logits.argmax(-1)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to sample, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (B, V)
    sorted_probs, order = probs.sort(dim=-1, descending=True)  # (B, V)
    # A token stays when the tokens more likely than it sum to less than top_p, so the first always stays.
    before = sorted_probs.cumsum(-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)
    pick = torch.multinomial(sorted_probs, 1, generator=generator)  # (B, 1), renormalised by multinomial
    return order.gather(-1, pick).squeeze(-1)
