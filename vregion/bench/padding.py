"""Padding predicted from a length profile, for `vregion bench --plan --profile`: how many token positions a
run computes per real token when micro-batches are padded, length-grouped or packed.

Sample lengths come from the profile's own generator (`vregion.data.profile_synth.profile_conversations`,
words), converted to tokens with TOKENS_PER_WORD and a per-turn template overhead, plus the model's visual
tokens for image samples, truncated at data.max_length. Batches are formed as the loader forms them: random
order in chunks of micro_batch_size (padded to the longest), windows sorted by (text-only, length) (grouped),
or each chunk packed first-fit-decreasing into rows of max_length (packed).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from vregion.bench.variant import GROUP_WINDOW
from vregion.data.packing import first_fit_decreasing
from vregion.data.profile_synth import profile_conversations, text_words
from vregion.data.profiles import MixProfile, get_profile

TOKENS_PER_WORD = 1.3  # a LLaMA/Vicuna tokenizer on English text (profiles.py)
TOKENS_PER_TURN = 6  # role markers and separators of a chat template per turn [est]
SYSTEM_TOKENS = 30  # a system prompt such as vicuna-v1's [est]


@dataclass(frozen=True)
class PaddingEstimate:
    """Token positions computed per real token (>= 1) for each way of forming micro-batches."""

    real_tokens_per_sample: float
    cost: dict  # data mode (None = padded, "grouped", "packed") -> computed positions / real tokens

    def share(self, mode) -> float:
        """Share of computed positions that are padding."""
        return 1.0 - 1.0 / self.cost[mode]


def profile_lengths(profile: str, visual_tokens: int, max_length: int, num: int = 4096, seed: int = 0) -> list[tuple[int, bool]]:
    """(tokens, has_image) of `num` samples of a mix profile."""
    chosen = get_profile(profile)
    if not isinstance(chosen, MixProfile):
        raise ValueError(f"profile {profile!r} has no length distribution to plan with; use e.g. llava-665k")
    out = []
    for component, conversations in profile_conversations(chosen, num, seed):
        tokens = SYSTEM_TOKENS + TOKENS_PER_TURN * len(conversations) + round(TOKENS_PER_WORD * text_words(conversations))
        tokens += visual_tokens if component.image else 0
        out.append((min(tokens, max_length), component.image))
    return out


def estimate_padding(lengths: list[tuple[int, bool]], micro_batch: int, max_length: int, seed: int = 0) -> PaddingEstimate:
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    chunks = [order[k : k + micro_batch] for k in range(0, len(order), micro_batch)]
    real = sum(n for n, _ in lengths)

    def padded(chunk_list) -> int:
        return sum(len(c) * max(lengths[i][0] for i in c) for c in chunk_list)

    packed = 0
    for chunk in chunks:
        rows = first_fit_decreasing([lengths[i][0] for i in chunk], max_length)
        packed += len(rows) * max(sum(lengths[chunk[i]][0] for i in row) for row in rows)
    window = GROUP_WINDOW * micro_batch
    grouped = []
    for k in range(0, len(order), window):
        sorted_window = sorted(order[k : k + window], key=lambda i: (not lengths[i][1], lengths[i][0]))
        grouped += [sorted_window[j : j + micro_batch] for j in range(0, len(sorted_window), micro_batch)]
    return PaddingEstimate(real / len(lengths), {None: padded(chunks) / real, "padded": padded(chunks) / real,
                                                  "grouped": padded(grouped) / real, "packed": packed / real})
