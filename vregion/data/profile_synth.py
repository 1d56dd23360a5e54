"""Generate shards that follow a named profile (profiles.py): conversations of the profile's lengths and mix.

Text is filler words from a fixed vocabulary: only lengths, turn counts and the image / text-only mix follow
the profile. Images are the coloured shapes of synthetic.py. Conversations and images draw from separate
seeded streams, so `profile_conversations` (no images, fast) yields exactly the text the shards hold.
"""

from __future__ import annotations

import random
import statistics
from pathlib import Path
from typing import Iterator

from .profiles import Component, MixProfile, ShapesProfile, Targets, get_profile
from .synthetic import COLOURS, SHAPES, draw_shape, make_synthetic_shards
from .templates import IMAGE_TAG
from .writer import write_shards

VOCAB = (
    "the a image shows person table red blue small large left right top bottom near two three street car dog "
    "cat man woman sign book title what where which how many colour wearing holding sitting standing on in of "
    "with and is are this that there some building tree sky water room window light food plate people group"
).split()


def _words(n: int, rng: random.Random) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def _pick(weighted: tuple[tuple[int, float], ...], rng: random.Random) -> int:
    return rng.choices([n for n, _ in weighted], weights=[w for _, w in weighted])[0]


def component_conversation(component: Component, rng: random.Random) -> list[dict]:
    """LLaVA-format turns for one sample of `component`; image samples open with "<image>\\n" (as LLaVA does)."""
    conversations = []
    for turn in range(_pick(component.turns, rng)):
        question = " ".join(part for part in (_words(component.question.sample(rng), rng), component.prompt) if part)
        if turn == 0 and component.image:
            question = f"{IMAGE_TAG}\n{question}"
        conversations.append({"from": "human", "value": question})
        conversations.append({"from": "gpt", "value": _words(component.answer.sample(rng), rng)})
    return conversations


def profile_conversations(profile: MixProfile, num_samples: int, seed: int = 0) -> Iterator[tuple[Component, list]]:
    """(component, conversations) for `num_samples` samples, components drawn in proportion to their counts."""
    rng = random.Random(f"vregion-profile-{profile.name}-{seed}")
    weights = [c.count for c in profile.components]
    for _ in range(num_samples):
        component = rng.choices(profile.components, weights=weights)[0]
        yield component, component_conversation(component, rng)


def text_words(conversations: list[dict]) -> int:
    """Words of a sample's text (the profile's length unit): whitespace words of every turn, `<image>` excluded."""
    return sum(len(turn["value"].replace(IMAGE_TAG, " ").split()) for turn in conversations)


def length_stats(samples: Iterator[tuple[Component, list]]) -> Targets:
    """Measured words per sample (mean, median, p90, p99), text-only share and mean Q/A pairs of samples."""
    lengths, text_only, turns = [], 0, 0
    for component, conversations in samples:
        lengths.append(text_words(conversations))
        text_only += not component.image
        turns += len(conversations) // 2
    cuts = statistics.quantiles(lengths, n=100, method="inclusive")  # cuts[k-1] = k-th percentile
    return Targets(mean=statistics.fmean(lengths), median=statistics.median(lengths), p90=cuts[89], p99=cuts[98],
                   text_only_share=text_only / len(lengths), mean_turns=turns / len(lengths))


def make_profile_shards(
    out_dir: str | Path, profile: str, num_samples: int, image_size: int = 32, seed: int = 0,
    samples_per_shard: int = 16,
) -> dict:
    """Write `num_samples` samples of the named profile as shards + index.json; same seed, same bytes.

    `shapes` is exactly `make_synthetic_shards` (byte for byte).

    Returns:
        The shard index ({"shards": [...], "total": N}).
    """
    chosen = get_profile(profile)
    if isinstance(chosen, ShapesProfile):
        return make_synthetic_shards(out_dir, num_samples, image_size, seed, samples_per_shard)
    image_rng = random.Random(f"vregion-profile-images-{chosen.name}-{seed}")

    def samples():
        for i, (component, conversations) in enumerate(profile_conversations(chosen, num_samples, seed)):
            images = []
            if component.image:
                colour = COLOURS[image_rng.choice(sorted(COLOURS))]
                images = [draw_shape(image_rng.choice(SHAPES), colour, image_size, image_rng)]
            yield {"id": f"{component.name}-{i:08d}", "conversations": conversations, "images": images}

    return write_shards(samples(), out_dir, samples_per_shard, total=num_samples)
