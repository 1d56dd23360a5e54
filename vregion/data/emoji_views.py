"""Everyday objects drawn from the Noto emoji font in many views, for alignment that teaches naming.

Each of `OBJECTS` (48 everyday things: animals, fruit, vehicles, household objects) is rendered many times with
a seeded view: size, position, rotation, mirror, background (plain, two-tone, noise), colour shifts, greyscale,
posterised colours, blur, partial crops and sometimes a second object. Seeing one concept in many forms is what
lets a projector learn a mapping from image features to words instead of memorising ~1,400 single images.

Two held-out styles are never produced by `training_view`: `line_drawing` (dark outlines on white) and
`silhouette` (a flat dark shape on white). They make the cross-style set: does the model still name the object
when the picture looks unlike anything it trained on?
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

EMOJI_STRIKE = 109  # the only bitmap size in the CBDT font
# (code point, everyday name): single code points, one picture each, names a child would use.
OBJECTS = (
    (0x1F415, "dog"), (0x1F408, "cat"), (0x1F40E, "horse"), (0x1F404, "cow"), (0x1F416, "pig"),
    (0x1F407, "rabbit"), (0x1F401, "mouse"), (0x1F426, "bird"), (0x1F41F, "fish"), (0x1F418, "elephant"),
    (0x1F412, "monkey"), (0x1F40D, "snake"), (0x1F422, "turtle"), (0x1F414, "chicken"), (0x1F98B, "butterfly"),
    (0x1F40C, "snail"), (0x1F34E, "apple"), (0x1F34C, "banana"), (0x1F347, "grapes"), (0x1F353, "strawberry"),
    (0x1F34B, "lemon"), (0x1F350, "pear"), (0x1F352, "cherries"), (0x1F349, "watermelon"),
    (0x1F34D, "pineapple"), (0x1F955, "carrot"), (0x1F344, "mushroom"), (0x1F697, "car"), (0x1F68C, "bus"),
    (0x1F6B2, "bicycle"), (0x2708, "airplane"), (0x1F6A2, "ship"), (0x1F680, "rocket"), (0x1F3E0, "house"),
    (0x2602, "umbrella"), (0x23F0, "clock"), (0x1F511, "key"), (0x2702, "scissors"), (0x1F528, "hammer"),
    (0x1F3B8, "guitar"), (0x260E, "telephone"), (0x1F4A1, "light bulb"), (0x1F453, "glasses"),
    (0x1F45F, "shoe"), (0x1F333, "tree"), (0x1F337, "flower"), (0x1F355, "pizza"), (0x1F4D6, "book"),
)
# (question, answer template); {a} is the name with its article. The first is the canonical phrasing that
# the held-out sets ask, so closed-set scoring compares bare names.
PHRASINGS = (
    ("What is shown?", "{name}"),
    ("What is in the picture?", "a picture of {a}"),
    ("Name the object in this image.", "{name}"),
    ("Describe the image briefly.", "{a}"),
    ("What do you see?", "I see {a}"),
)
CANONICAL_SHARE = 0.4  # how often training asks the canonical question (the rest: the other four evenly)
HELD_OUT_STYLES = ("line-drawing", "silhouette")


def with_article(name: str) -> str:
    """"dog" -> "a dog", "apple" -> "an apple"; plural names stay bare ("grapes", "glasses")."""
    if name in ("grapes", "cherries", "glasses", "scissors"):
        return name
    return ("an " if name[0] in "aeiou" else "a ") + name


@dataclass(frozen=True)
class Glyph:
    """One object's emoji: its name and RGBA picture cropped to the drawn pixels."""

    name: str
    image: Image.Image  # RGBA


@lru_cache(maxsize=4)
def load_glyphs(font_path: str) -> tuple[Glyph, ...]:
    """Every object of `OBJECTS` rendered once from the font (an error names any the font cannot draw)."""
    font = ImageFont.truetype(font_path, size=EMOJI_STRIKE)
    glyphs, missing = [], []
    for cp, name in OBJECTS:
        canvas = Image.new("RGBA", (136, 136), (0, 0, 0, 0))  # a strike glyph is at most 136 x 128
        ImageDraw.Draw(canvas).text((0, 4), chr(cp), font=font, embedded_color=True)
        box = canvas.getchannel("A").getbbox()
        if box is None:
            missing.append(f"U+{cp:04X} {name}")
            continue
        glyphs.append(Glyph(name, canvas.crop(box)))
    if missing:
        raise ValueError(f"{font_path} draws nothing for: {', '.join(missing)}")
    return tuple(glyphs)


# ------------------------------------------------------------------------------------------ training views
def _background(size: int, rng: random.Random) -> Image.Image:
    kind = rng.random()
    base = tuple(rng.randrange(256) for _ in range(3))
    if kind < 0.45:  # plain, often light like most pictures of objects
        light = tuple(200 + rng.randrange(56) for _ in range(3))
        return Image.new("RGB", (size, size), light if rng.random() < 0.5 else base)
    if kind < 0.75:  # two-tone: a floor / wall split at a random height
        image = Image.new("RGB", (size, size), base)
        other = tuple(rng.randrange(256) for _ in range(3))
        ImageDraw.Draw(image).rectangle((0, rng.randrange(size // 3, size), size, size), fill=other)
        return image
    noise = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (size // 8, size // 8, 3), np.uint8)
    return Image.fromarray(noise).resize((size, size), Image.BILINEAR)  # soft coloured texture


def _place(canvas: Image.Image, glyph: Image.Image, scale: float, rng: random.Random, crop: bool) -> None:
    """Paste the glyph at `scale` of the canvas, rotated and maybe mirrored; with `crop`, partly out of frame."""
    size = canvas.size[0]
    side = max(8, int(size * scale))
    picture = glyph.resize((side, side * glyph.size[1] // glyph.size[0] or 1), Image.LANCZOS)
    if rng.random() < 0.5:
        picture = ImageOps.mirror(picture)
    picture = picture.rotate(rng.uniform(-30, 30), resample=Image.BICUBIC, expand=True)
    w, h = picture.size
    slack = 0.3 if crop else 0.0  # up to 30% of the object may fall outside the picture
    x = rng.randint(int(-w * slack), max(int(-w * slack), size - w + int(w * slack)))
    y = rng.randint(int(-h * slack), max(int(-h * slack), size - h + int(h * slack)))
    canvas.paste(picture, (x, y), picture)


def _colour_shift(image: Image.Image, rng: random.Random) -> Image.Image:
    """Hue rotation, saturation and brightness changes, greyscale or posterised colours."""
    roll = rng.random()
    if roll < 0.15:
        return ImageOps.grayscale(image).convert("RGB")
    if roll < 0.3:
        return ImageOps.posterize(image, rng.choice((2, 3)))
    hsv = np.asarray(image.convert("HSV")).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + rng.randint(-20, 20)) % 256
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.6, 1.2), 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] * rng.uniform(0.7, 1.15), 0, 255)
    return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")


def training_view(glyphs: tuple[Glyph, ...], index: int, size: int, rng: random.Random,
                  second_object: bool = True) -> tuple[Image.Image, list[str]]:
    """A seeded view of object `index` (with `second_object`, 15% of views show another one beside it);
    returns (RGB image, names shown)."""
    canvas = _background(size, rng)
    names = [glyphs[index].name]
    if second_object and rng.random() < 0.15:  # a second, smaller object beside the first
        other = rng.choice([i for i in range(len(glyphs)) if i != index])
        _place(canvas, glyphs[other].image, rng.uniform(0.3, 0.45), rng, crop=False)
        names.append(glyphs[other].name)
        scale = rng.uniform(0.4, 0.6)
    else:
        scale = rng.uniform(0.45, 0.95)
    _place(canvas, glyphs[index].image, scale, rng, crop=rng.random() < 0.15)
    image = _colour_shift(canvas, rng)
    if rng.random() < 0.15:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    return image, names


def caption(names: list[str], rng: random.Random) -> tuple[str, str]:
    """(question, answer) about the objects shown, in a seeded phrasing (the canonical one 40% of the time)."""
    if rng.random() < CANONICAL_SHARE:
        question, template = PHRASINGS[0]
    else:
        question, template = rng.choice(PHRASINGS[1:])
    if len(names) == 1:
        return question, template.format(name=names[0], a=with_article(names[0]))
    both = f"{with_article(names[0])} and {with_article(names[1])}"
    return question, template.format(name=both, a=both)


# --------------------------------------------------------------------------------------- held-out styles
def _centred(glyph: Image.Image, size: int, rng: random.Random) -> Image.Image:
    """The RGBA glyph at 55-85% of a transparent canvas, near the centre, slightly rotated."""
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    side = int(size * rng.uniform(0.55, 0.85))
    picture = glyph.resize((side, max(1, side * glyph.size[1] // glyph.size[0])), Image.LANCZOS)
    picture = picture.rotate(rng.uniform(-15, 15), resample=Image.BICUBIC, expand=True)
    x = (size - picture.size[0]) // 2 + rng.randint(-size // 16, size // 16)
    y = (size - picture.size[1]) // 2 + rng.randint(-size // 16, size // 16)
    canvas.paste(picture, (x, y), picture)
    return canvas


def line_drawing(glyph: Image.Image, size: int, rng: random.Random) -> Image.Image:
    """Dark outlines of the object (its silhouette edge and inner colour edges) on white: no fill, no colour."""
    picture = _centred(glyph, size, rng)
    white = Image.new("RGBA", picture.size, (255, 255, 255, 255))
    grey = ImageOps.grayscale(Image.alpha_composite(white, picture))
    edges = np.asarray(grey.filter(ImageFilter.FIND_EDGES), dtype=np.float32)
    outline = np.asarray(picture.getchannel("A").filter(ImageFilter.FIND_EDGES), dtype=np.float32)
    strength = np.maximum(edges * 2.0, outline)
    strength[:2, :] = strength[-2:, :] = strength[:, :2] = strength[:, -2:] = 0  # the filter marks the border
    ink = rng.choice(((0, 0, 0), (30, 30, 90), (70, 40, 20)))
    lines = Image.fromarray((strength > 40).astype(np.uint8) * 255)
    if size >= 160:  # one-pixel edges look faint once a large picture is resized for the tower
        lines = lines.filter(ImageFilter.MaxFilter(3))
    page = Image.new("RGB", picture.size, (255, 255, 255))
    page.paste(Image.new("RGB", picture.size, ink), (0, 0), lines)
    return page


def silhouette(glyph: Image.Image, size: int, rng: random.Random) -> Image.Image:
    """The object's shape filled with one dark colour on white."""
    picture = _centred(glyph, size, rng)
    mask = picture.getchannel("A").point(lambda a: 255 if a > 96 else 0)
    page = Image.new("RGB", picture.size, (255, 255, 255))
    fill = rng.choice(((0, 0, 0), (40, 40, 40), (20, 30, 80)))
    page.paste(Image.new("RGB", picture.size, fill), (0, 0), mask)
    return page


def held_out_view(glyph: Image.Image, style: str, size: int, rng: random.Random) -> Image.Image:
    """The object in a style training never shows (`HELD_OUT_STYLES`)."""
    if style == "line-drawing":
        return line_drawing(glyph, size, rng)
    if style == "silhouette":
        return silhouette(glyph, size, rng)
    raise ValueError(f"unknown held-out style {style!r}; valid: {', '.join(HELD_OUT_STYLES)}")


def object_names() -> list[str]:
    """The names of `OBJECTS`, in order: the closed set of the cross-style evaluation."""
    return [name for _, name in OBJECTS]


def font_path_str(path: Path) -> str:
    return str(Path(path).resolve())
