"""The demo's tasks: naming everyday objects, compositional scene questions, Fashion-MNIST; with held-out sets.

Everything is made from Debian packages (the Noto emoji font, Fashion-MNIST) and generated scenes. Folders
(each a set of tar shards + index.json, see `writer.write_shards`):
- `train-align/`: emoji views of the 48 objects (`emoji_views.training_view`) with varied captions: stage 1;
- `train/`: more views, scene dialogues (`scenes`, train split: 4 colour-shape pairs never shown; several
  questions per picture) and Fashion-MNIST questions: stage 2;
- `eval-emoji/`: new views of the same objects, canonical question ("What is shown?" -> name): caption loss
  and in-style closed-set naming;
- `eval-cross-style/`: line drawings and silhouettes of the objects, a style training never shows: closed-set
  naming over `objects.txt` (`vregion eval --choices ... --candidates objects.txt`);
- `eval-scenes/`: held-out scenes, each with a held-out colour-shape pair: exact-match VQA accuracy;
- `eval-fashion/`: Fashion-MNIST test items.
The same arguments always give the same bytes.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from tqdm import tqdm

from . import emoji_views, scenes
from .demo_data import fashion_samples, require_source, find_emoji_font, find_fashion_mnist
from .writer import png_bytes, question_sample, write_shards

CANDIDATES_FILE = "objects.txt"
BUILD_VERSION = 3  # bump when the same arguments would write other samples (2: scene dialogues; 3: 4,000 of them)


def view_samples(glyphs, views_per_object: int, image_size: int, rng: random.Random, tag: str) -> list[dict]:
    """Training views of every object, `views_per_object` each, with seeded captions."""
    samples = []
    for k in tqdm(range(views_per_object), desc=f"emoji views ({tag})", unit="round"):
        for i in range(len(glyphs)):
            image, names = emoji_views.training_view(glyphs, i, image_size, rng)
            question, answer = emoji_views.caption(names, rng)
            samples.append(question_sample(f"view-{tag}-{k:03d}-{i:02d}", question, answer, png_bytes(image)))
    return samples


def naming_samples(glyphs, per_object: int, image_size: int, rng: random.Random, style: str | None) -> list[dict]:
    """Held-out naming questions: the canonical question, the bare name as answer; `style` None = in style."""
    question = emoji_views.PHRASINGS[0][0]
    samples = []
    for k in range(per_object):
        for i, glyph in enumerate(glyphs):
            if style is None:
                image, _ = emoji_views.training_view(glyphs, i, image_size, rng, second_object=False)
            else:
                image = emoji_views.held_out_view(glyph.image, style, image_size, rng)
            samples.append(question_sample(f"name-{style or 'emoji'}-{k:02d}-{i:02d}", question, glyph.name,
                                           png_bytes(image)))
    return samples


def build_demo_tasks(
    out_dir: str | Path,
    seed: int = 0,
    image_size: int = 128,
    align_views: int = 40,
    train_views: int = 20,
    train_scenes: int = 4000,
    eval_scenes: int = 500,
    fashion_train: int = 600,
    fashion_eval: int = 200,
    eval_views: int = 3,
    questions_per_scene: int = 2,
    train_turns: int = 6,
    samples_per_shard: int = 500,
    train_kinds: tuple = scenes.KINDS,
) -> dict:
    """Write the demo tasks' folders (module docstring) under `out_dir`; returns a summary of counts.

    Args:
        align_views / train_views: views of each of the 48 objects in train-align/ and in train/.
        train_scenes / eval_scenes: scenes in train/ (one dialogue of `train_turns` questions each) and in
            eval-scenes/ (`questions_per_scene` one-question samples each, scored one at a time).
        eval_views: pictures of each object per held-out style (and in eval-emoji/).
        train_kinds: question kinds of the training scenes (`scenes.KINDS + scenes.GROUNDING_KINDS` adds the
            grounding questions; eval scenes always ask `scenes.KINDS`).
    """
    font = require_source(find_emoji_font(), "fonts-noto-color-emoji (NotoColorEmoji.ttf)")
    fashion = require_source(find_fashion_mnist(), "dataset-fashion-mnist")
    out_dir = Path(out_dir)
    glyphs = emoji_views.load_glyphs(str(font))
    rng = random.Random(f"vregion-demo-tasks-{seed}")
    align = view_samples(glyphs, align_views, image_size, rng, "align")
    views = view_samples(glyphs, train_views, image_size, rng, "train")
    scene_train = scenes.scene_samples("train", train_scenes, image_size, seed, train_turns, dialogue=True,
                                        kinds=train_kinds)
    scene_eval = scenes.scene_samples("eval", eval_scenes, image_size, seed, questions_per_scene)
    fashion_tr, hashes = fashion_samples(fashion, "train", fashion_train, image_size, rng)
    fashion_ev, _ = fashion_samples(fashion, "test", fashion_eval, image_size, rng, exclude=hashes)
    eval_rng = random.Random(f"vregion-demo-tasks-eval-{seed}")  # eval pictures independent of train counts
    cross = [s for style in emoji_views.HELD_OUT_STYLES
             for s in naming_samples(glyphs, eval_views, image_size, eval_rng, style)]
    in_style = naming_samples(glyphs, eval_views, image_size, eval_rng, None)
    train = views + scene_train + fashion_tr
    rng.shuffle(train)
    rng.shuffle(align)
    splits = {"train-align": align, "train": train, "eval-emoji": in_style, "eval-cross-style": cross,
              "eval-scenes": scene_eval, "eval-fashion": fashion_ev}
    summary = {"out_dir": str(out_dir), "seed": seed, "image_size": image_size, "objects": len(glyphs), "splits": {}}
    for name, samples in splits.items():
        split_dir = out_dir / name
        if split_dir.exists():
            shutil.rmtree(split_dir)  # stale shards of a larger earlier build would otherwise be read too
        index = write_shards(samples, split_dir, samples_per_shard, prefix=name)
        summary["splits"][name] = {"total": index["total"], "shards": len(index["shards"])}
    summary["splits"]["train"].update(views=len(views), scenes=len(scene_train), fashion=len(fashion_tr))
    (out_dir / CANDIDATES_FILE).write_text("\n".join(emoji_views.object_names()) + "\n")
    return summary
