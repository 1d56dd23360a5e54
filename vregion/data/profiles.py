"""Named length profiles for generated shards: which component sets, how many turns, how long each turn is.

A profile is data. `shapes` is the coloured-shape smoke set (synthetic.py, the default of `vregion data synth`);
`llava-665k` mimics the composition of LLaVA-1.5's instruction mix `llava_v1_5_mix665k.json` so that batching,
padding, truncation and throughput can be measured on the length distribution real fine-tuning sees.

Length unit: words, `len(value.split())` summed over every turn of a sample, the `<image>` tag excluded. This is
the unit LLaVA's own length-grouped sampler uses (`LazySupervisedDataset.lengths` in llava/train/train.py);
a LLaMA/Vicuna tokenizer gives roughly 1.3 tokens per English word.

Sources of the figures (cited again at each component):
  [T7]   Liu et al. 2023, "Improved Baselines with Visual Instruction Tuning" (LLaVA-1.5), Table 7 and its
         response-format prompts (Table 6 / appendix).
  [#702] haotian-liu/LLaVA issue #702, the author's exact per-set counts of the released JSON (Table 7 was off
         for A-OKVQA, 50K -> 66K, and RefCOCO, 30K -> 48K); [#657] the same JSON counted by image folder:
         text-only 40,688, vg 86,417, total 665,298.
  [est]  our estimate, not published: questions per image from the source sets' own papers (VQAv2 443,757 train
         questions / 82,783 images = 5.4; GQA balanced train ~943K / 72,140 images = 13; OCR-VQA 1,002,146 /
         207,572 = 4.8; OK-VQA 9,009 / 8,998 = 1.0), word lengths from reading samples of each set.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

SHORT_ANSWER = "Answer the question using a single word or phrase."  # [T7] VQAv2, GQA, OKVQA, OCRVQA
OPTION_LETTER = "Answer with the option's letter from the given choices directly."  # [T7] A-OKVQA
CAPTION = "Provide a one-sentence caption for the provided image."  # [T7] TextCaps
REGION_BOX = "Please provide the bounding box coordinate of the region this sentence describes:"  # [T7] RefCOCO/VG


@dataclass(frozen=True)
class Lengths:
    """Words in one turn: a log-normal with this median and log-sigma, rounded, clipped to [lo, hi]."""

    median: float
    sigma: float
    lo: int = 1
    hi: int = 2000

    def sample(self, rng: random.Random) -> int:
        return min(self.hi, max(self.lo, round(self.median * math.exp(rng.gauss(0.0, self.sigma)))))


@dataclass(frozen=True)
class Component:
    """One source set of a mix: its sample count, turns per sample, and the words of each turn.

    Args:
        turns: ((number of question/answer pairs, weight), ...).
        question, answer: words of each human / gpt turn, the fixed `prompt` not included.
        prompt: response-format instruction appended to every human turn ("" for none).
    """

    name: str
    count: int
    turns: tuple[tuple[int, float], ...]
    question: Lengths
    answer: Lengths
    image: bool = True
    prompt: str = ""

    @property
    def mean_turns(self) -> float:
        return sum(n * w for n, w in self.turns) / sum(w for _, w in self.turns)


@dataclass(frozen=True)
class Targets:
    """What a profile is documented to produce: words per sample (mean, median, p90, p99), text-only share,
    mean question/answer pairs per sample."""

    mean: float
    median: float
    p90: float
    p99: float
    text_only_share: float
    mean_turns: float


@dataclass(frozen=True)
class MixProfile:
    """A mix of components drawn in proportion to their counts, with generated filler text."""

    name: str
    summary: str
    components: tuple[Component, ...]
    targets: Targets

    @property
    def total(self) -> int:
        return sum(c.count for c in self.components)


@dataclass(frozen=True)
class ShapesProfile:
    """The coloured-shape generator of synthetic.py, unchanged (one question, a one-word answer)."""

    name: str
    summary: str


def _turns(*pairs: tuple[int, float]) -> tuple[tuple[int, float], ...]:
    return tuple(pairs)


def _even(lo: int, hi: int) -> tuple[tuple[int, float], ...]:
    return tuple((n, 1.0) for n in range(lo, hi + 1))


ONE = _turns((1, 1.0))
BOX = Lengths(4, 0.0, 4, 4)  # "[0.12, 0.34, 0.56, 0.78]": LLaVA-1.5 writes boxes as four normalised numbers [T7]
ONE_WORD = Lengths(1, 0.35, 1, 4)  # [est] VQA answers: ~90% one word (VQAv2 paper), the rest 2-3

LLAVA_665K = MixProfile(
    name="llava-665k",
    summary="LLaVA-1.5 instruction mix llava_v1_5_mix665k.json: 10 sets, 6.1% text-only, VQA turns grouped per image",
    components=(
        # LLaVA-Instruct-158K [T7], 157,712 exactly [#702], split 58:23:77 like its three released files
        # (conversation_58k, detail_23k, complex_reasoning_77k). Turns and lengths [est].
        Component("llava-conversation", 57_895, _turns((1, 1), (2, 2), (3, 3), (4, 2), (5, 1), (6, 1)),
                  Lengths(10, 0.4, 3, 40), Lengths(50, 0.5, 5, 300)),
        Component("llava-detail", 22_958, ONE, Lengths(8, 0.3, 4, 20), Lengths(115, 0.3, 40, 300)),
        Component("llava-reasoning", 76_859, ONE, Lengths(14, 0.4, 4, 50), Lengths(95, 0.35, 20, 300)),
        # ShareGPT, text-only, 40,688 [#702][#657]: long multi-turn chat. Turns and lengths [est].
        Component("sharegpt", 40_688, _turns((1, 4), (2, 3), (3, 2), (4, 1.5), (5, 1), (6, 1), (8, 0.5), (10, 0.5)),
                  Lengths(25, 1.1, 1, 1500), Lengths(180, 0.8, 1, 1500), image=False),
        # VQAv2, 82,783 = the COCO train2014 images [#702]; 5.4 questions per image [est from VQAv2 counts].
        Component("vqav2", 82_783, _even(3, 8), Lengths(6, 0.3, 3, 20), ONE_WORD, prompt=SHORT_ANSWER),
        # GQA, 72,140 = the GQA train images [#702]; ~13 questions per image [est from GQA balanced counts].
        Component("gqa", 72_140, _even(8, 18), Lengths(9, 0.35, 3, 30), ONE_WORD, prompt=SHORT_ANSWER),
        # OK-VQA, 8,998 [#702]; 1.0 question per image [est from OK-VQA counts].
        Component("okvqa", 8_998, ONE, Lengths(8, 0.35, 3, 25), Lengths(1, 0.5, 1, 5), prompt=SHORT_ANSWER),
        # OCR-VQA, 80,000 [#702]; ~5 questions per book cover [est]; answers are titles / authors / genres.
        Component("ocrvqa", 80_000, _even(3, 7), Lengths(6, 0.2, 4, 12), Lengths(2, 0.8, 1, 20),
                  prompt=SHORT_ANSWER),
        # A-OKVQA, 66,160 [#702] (multiple choice): question + four options, a one-letter answer [T7].
        Component("a-okvqa", 66_160, ONE, Lengths(18, 0.25, 8, 45), Lengths(1, 0.0, 1, 1), prompt=OPTION_LETTER),
        # TextCaps, 21,953 [#702]: one caption per image [T7 prompt]; ~12 words per caption [est].
        Component("textcaps", 21_953, ONE, Lengths(0, 0.0, 0, 0), Lengths(12, 0.35, 4, 40), prompt=CAPTION),
        # RefCOCO, 48,447 [#702]: referring expression -> box "[x0, y0, x1, y1]" (4 words), several per image [est].
        Component("refcoco", 48_447, _even(1, 6), Lengths(4, 0.5, 1, 20), BOX, prompt=REGION_BOX),
        # Visual Genome, 86,417 [#657]: region description <-> box pairs, several per image [est].
        Component("vg", 86_417, _even(2, 12), Lengths(5, 0.45, 1, 20), BOX, prompt=REGION_BOX),
    ),
    # Design targets of the components above (unit: words, see the module docstring): the length figures
    # measured on 200,000 samples with `length_stats(profile_conversations(LLAVA_665K, 200_000, seed=0))`,
    # mean turns = sum(count * mean_turns) / total (exact), text-only share the published 40,688 / 665,298
    # [#702][#657]. They follow from the [est] figures, so they are a regression target, not a measurement of
    # the real JSON.
    targets=Targets(mean=171.0, median=108.0, p90=299.0, p99=1605.0, text_only_share=40_688 / 665_298,
                    mean_turns=4.633),
)

SHAPES = ShapesProfile("shapes", "coloured shapes, one colour/shape question each, 10% text-only arithmetic "
                                 "(the default; unchanged from before profiles)")

PROFILES: dict[str, MixProfile | ShapesProfile] = {p.name: p for p in (SHAPES, LLAVA_665K)}


def get_profile(name: str) -> MixProfile | ShapesProfile:
    """The registered profile `name`; the error lists the valid ids."""
    if name not in PROFILES:
        raise KeyError(f"unknown data profile {name!r}; choose one of: {', '.join(PROFILES)}")
    return PROFILES[name]


def profile_targets(name: str) -> Targets:
    """The documented length targets of a mix profile (words per sample, text-only share, mean turns)."""
    profile = get_profile(name)
    if not isinstance(profile, MixProfile):
        raise ValueError(f"profile {name!r} has no length targets (it is not a mix)")
    return profile.targets


def describe_profiles() -> list[str]:
    """One line per profile, for `vregion data synth --profile list`."""
    return [f"{name:<12} {profile.summary}" for name, profile in PROFILES.items()]
