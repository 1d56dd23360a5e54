"""Real image-text demo shards from Debian packages: Noto emoji captioned by their Unicode names, and
Fashion-MNIST as visual question answering ("What item is this?" -> "sneaker").

Output folders (each a set of tar shards + index.json, see `writer.write_shards`):
- `train/`: emoji and Fashion-MNIST train-split items, shuffled together with the seed;
- `eval-fashion/`: items of Fashion-MNIST's test split;
- `eval-emoji/`: held-out emoji, asked with the canonical question so answers can be matched exactly.
No image is in both train and an eval folder (emoji are split by code point, and pixel-identical
images are dropped). The same arguments always give the same shards.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import shutil
import subprocess
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from .writer import png_bytes, question_sample, write_shards

BUILD_VERSION = 1  # bump when the same arguments would write other samples
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
APT_HINT = "apt-get install -y fonts-noto-color-emoji dataset-fashion-mnist"

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_QUESTION = "What item is this?"
# (question, answer template); the first is the canonical one used for the emoji eval split.
EMOJI_PHRASINGS = (
    ("Describe this emoji.", "{name}"),
    ("What is shown?", "an emoji of {name}"),
    ("What is the name of this emoji?", "{name}"),
)
EMOJI_STRIKE = 109  # the only bitmap size in the CBDT font; other sizes fail to load
# Code points the font maps that are not pictures of their own: controls, joiners, variation selectors,
# tags, private use, spaces, the combining keycap.
SKIP_CATEGORIES = ("C", "Z", "M")


def _dpkg_file(package: str, suffix: str) -> Path | None:
    """A file of an installed Debian package ending with `suffix`, from `dpkg -L` (None if absent)."""
    if shutil.which("dpkg") is None:
        return None
    proc = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True)
    hits = [Path(line) for line in proc.stdout.splitlines() if line.endswith(suffix)]
    return hits[0] if proc.returncode == 0 and hits else None


def find_emoji_font() -> Path | None:
    """NotoColorEmoji.ttf of `fonts-noto-color-emoji`, or None when the package is not installed."""
    return EMOJI_FONT if EMOJI_FONT.is_file() else _dpkg_file("fonts-noto-color-emoji", "NotoColorEmoji.ttf")


def find_fashion_mnist() -> Path | None:
    """The folder of `dataset-fashion-mnist`'s idx .gz files, or None when the package is not installed."""
    if (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        return FASHION_MNIST_DIR
    found = _dpkg_file("dataset-fashion-mnist", "train-images-idx3-ubyte.gz")
    return found.parent if found else None


def require_source(path: Path | None, what: str) -> Path:
    if path is None:
        raise FileNotFoundError(f"{what} not found; install the Debian packages (as root): {APT_HINT}")
    return path


# ------------------------------------------------------------------------------------------------ emoji
def emoji_code_points(font_path: Path) -> list[int]:
    """Single code points the font maps that have a Unicode name in this Python and are pictures.

    Multi-code-point emoji (flags, skin tones, ZWJ families, keycaps) are GSUB ligatures, not cmap
    entries, and are left out: their names are CLDR annotations that `unicodedata` does not know.
    """
    from fontTools.ttLib import TTFont

    cmap = TTFont(str(font_path), lazy=True).getBestCmap()
    keep = []
    for cp in sorted(cmap):
        ch = chr(cp)
        if unicodedata.category(ch)[0] in SKIP_CATEGORIES or not unicodedata.name(ch, ""):
            continue  # unnamed: newer than this Python's Unicode database
        keep.append(cp)
    return keep


def render_emoji(font: ImageFont.FreeTypeFont, cp: int, image_size: int) -> Image.Image | None:
    """The emoji on a white square, resized to image_size; None if the font draws nothing for it."""
    canvas = Image.new("RGBA", (136, 136), (255, 255, 255, 0))  # a strike glyph is at most 136 x 128
    ImageDraw.Draw(canvas).text((0, 4), chr(cp), font=font, embedded_color=True)
    if canvas.getchannel("A").getbbox() is None:
        return None
    white = Image.new("RGBA", canvas.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, canvas).convert("RGB").resize((image_size, image_size), Image.LANCZOS)


def emoji_caption(cp: int) -> str:
    """Lowercased Unicode name: U+1F600 -> "grinning face"."""
    return unicodedata.name(chr(cp)).lower()


# ---------------------------------------------------------------------------------------- fashion-mnist
def read_idx_gz(path: Path) -> np.ndarray:
    """An idx file (the MNIST format, gzip-compressed) as a uint8 array of its declared shape."""
    data = gzip.open(path, "rb").read()
    zero, dtype_code, ndim = data[0] * 256 + data[1], data[2], data[3]
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file (header {data[:4].hex()})")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) uint8) of split "train" (60k) or "test" (10k)."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images = read_idx_gz(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx_gz(folder / f"{prefix}-labels-idx1-ubyte.gz")
    if len(images) != len(labels):
        raise ValueError(f"{folder}: {len(images)} {split} images but {len(labels)} labels")
    return images, labels


# --------------------------------------------------------------------------------------------- samples
def emoji_samples(
    font_path: Path, num_emoji: int | None, eval_fraction: float, image_size: int, rng: random.Random
) -> tuple[list[dict], list[dict]]:
    """(train, eval) emoji samples: train with a seeded phrasing each, eval with the canonical one."""
    candidates = emoji_code_points(font_path)
    rng.shuffle(candidates)
    font = ImageFont.truetype(str(font_path), size=EMOJI_STRIKE)
    wanted = len(candidates) if num_emoji is None else min(num_emoji, len(candidates))
    rendered, seen = [], set()
    with tqdm(total=wanted, desc="rendering emoji", unit="emoji") as bar:
        for cp in candidates:
            if len(rendered) == wanted:
                break
            image = render_emoji(font, cp, image_size)
            png = None if image is None else png_bytes(image)
            if png is None or hashlib.sha1(png).digest() in seen:
                continue  # blank, or the same picture as another code point (its caption would be ambiguous)
            seen.add(hashlib.sha1(png).digest())
            rendered.append((cp, png))
            bar.update()
    num_eval = 0
    if eval_fraction > 0 and len(rendered) > 1:  # at least one held out, at least one left to train on
        num_eval = min(len(rendered) - 1, max(1, round(len(rendered) * eval_fraction)))
    train, held_out = rendered[num_eval:], rendered[:num_eval]
    train_samples = [_emoji_sample(cp, png, rng.choice(EMOJI_PHRASINGS)) for cp, png in train]
    eval_samples = [_emoji_sample(cp, png, EMOJI_PHRASINGS[0]) for cp, png in held_out]
    return train_samples, eval_samples


def _emoji_sample(cp: int, png: bytes, phrasing: tuple[str, str]) -> dict:
    question, template = phrasing
    return question_sample(f"emoji-{cp:x}", question, template.format(name=emoji_caption(cp)), png)


def fashion_samples(
    folder: Path, split: str, count: int, image_size: int, rng: random.Random, exclude: set[bytes] | None = None
) -> tuple[list[dict], set[bytes]]:
    """`count` seeded-random items of a Fashion-MNIST split as VQA samples, skipping pixel hashes in
    `exclude`; returns (samples, hashes of their pixels)."""
    images, labels = load_fashion_mnist(folder, split)
    order = rng.sample(range(len(images)), len(images))
    samples, hashes = [], set()
    for i in tqdm(order, total=min(count, len(images)), desc=f"fashion-mnist {split}", unit="image"):
        if len(samples) == count:
            break
        digest = hashlib.sha1(images[i].tobytes()).digest()
        if (exclude and digest in exclude) or digest in hashes:
            continue
        hashes.add(digest)
        image = Image.fromarray(images[i]).resize((image_size, image_size), Image.BICUBIC)  # mode "L"
        answer = FASHION_CLASSES[labels[i]].lower()
        samples.append(question_sample(f"fmnist-{split}-{i:05d}", FASHION_QUESTION, answer, png_bytes(image)))
    return samples, hashes


def build_demo_data(
    out_dir: str | Path,
    num_emoji: int | None = None,
    num_fashion_train: int = 2000,
    num_fashion_eval: int = 200,
    seed: int = 0,
    image_size: int = 64,
    emoji_eval_fraction: float = 0.1,
    samples_per_shard: int = 500,
) -> dict:
    """Write the demo shards to out_dir/{train, eval-fashion, eval-emoji}.

    Args:
        num_emoji: emoji to use (a seeded random subset), None for all the font has (~1,400).
        num_fashion_train / num_fashion_eval: Fashion-MNIST items from its train / test split.
        image_size: side of the stored PNGs (the vision tower resizes again).
        emoji_eval_fraction: share of the emoji held out for eval-emoji (at least one when > 0).

    Returns:
        {"out_dir", "seed", "image_size", "splits": {name: {"total", "emoji", "fashion", "shards"}},
        "bytes": total size of the written files}.
    """
    font = require_source(find_emoji_font(), "fonts-noto-color-emoji (NotoColorEmoji.ttf)")
    fashion = require_source(find_fashion_mnist(), "dataset-fashion-mnist")
    out_dir = Path(out_dir)
    rng = random.Random(f"vregion-demo-{seed}")
    emoji_train, emoji_eval = emoji_samples(font, num_emoji, emoji_eval_fraction, image_size, rng)
    fashion_train, train_hashes = fashion_samples(fashion, "train", num_fashion_train, image_size, rng)
    fashion_eval, _ = fashion_samples(fashion, "test", num_fashion_eval, image_size, rng, exclude=train_hashes)
    train = emoji_train + fashion_train
    rng.shuffle(train)
    splits = {
        "train": (train, len(emoji_train), len(fashion_train)),
        "eval-fashion": (fashion_eval, 0, len(fashion_eval)),
        "eval-emoji": (emoji_eval, len(emoji_eval), 0),
    }
    summary = {"out_dir": str(out_dir), "seed": seed, "image_size": image_size, "splits": {}}
    for name, (samples, n_emoji, n_fashion) in splits.items():
        split_dir = out_dir / name
        if split_dir.exists():
            shutil.rmtree(split_dir)  # stale shards of a larger earlier build would otherwise be read too
        index = write_shards(samples, split_dir, samples_per_shard, prefix=name)
        summary["splits"][name] = {"total": index["total"], "emoji": n_emoji, "fashion": n_fashion,
                                   "shards": len(index["shards"])}
    summary["bytes"] = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    return summary


def main(argv: list[str] | None = None) -> int:
    """`python -m vregion.data.demo_data OUT [...]`: build the demo shards and print the summary."""
    parser = argparse.ArgumentParser(prog="python -m vregion.data.demo_data", description=__doc__.split("\n")[0])
    parser.add_argument("out", help="output folder (gets train/, eval-fashion/, eval-emoji/)")
    parser.add_argument("--num-emoji", type=int, default=None, help="emoji to use (default: all)")
    parser.add_argument("--num-fashion-train", type=int, default=2000)
    parser.add_argument("--num-fashion-eval", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args(argv)
    summary = build_demo_data(
        args.out, args.num_emoji, args.num_fashion_train, args.num_fashion_eval, args.seed, args.image_size
    )
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
