"""Emoji views of everyday objects: the 48 objects draw, views are seeded, held-out styles look unlike training."""

from __future__ import annotations

import random

import numpy as np
import pytest

from vregion.data import emoji_views
from vregion.data.demo_data import find_emoji_font

if find_emoji_font() is None:
    pytest.skip("Debian package fonts-noto-color-emoji is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def glyphs():
    return emoji_views.load_glyphs(str(find_emoji_font()))


def test_every_object_draws_once_with_a_distinct_name(glyphs):
    names = [g.name for g in glyphs]
    assert len(names) == len(emoji_views.OBJECTS) >= 30
    assert len(set(names)) == len(names) == len(set(emoji_views.object_names()))
    for g in glyphs:  # a picture of its own: many opaque pixels, several colours
        alpha = np.asarray(g.image.getchannel("A"))
        assert (alpha > 128).mean() > 0.15, g.name
        assert len(np.unique(np.asarray(g.image.convert("RGB")).reshape(-1, 3), axis=0)) > 20, g.name


def test_training_views_are_seeded_and_varied(glyphs):
    a = [np.asarray(emoji_views.training_view(glyphs, 3, 64, random.Random(7))[0]) for _ in range(2)]
    assert np.array_equal(a[0], a[1])
    rng = random.Random(7)
    views = [np.asarray(emoji_views.training_view(glyphs, 3, 64, rng)[0]) for _ in range(5)]
    assert all(not np.array_equal(views[0], v) for v in views[1:])
    image, names = emoji_views.training_view(glyphs, 3, 64, random.Random(1))
    assert image.size == (64, 64) and image.mode == "RGB" and names[0] == glyphs[3].name


def test_second_objects_and_captions_name_what_is_shown(glyphs):
    rng = random.Random(0)
    shown = [emoji_views.training_view(glyphs, 0, 32, rng)[1] for _ in range(300)]
    pairs = [n for n in shown if len(n) == 2]
    assert 0.08 < len(pairs) / len(shown) < 0.25 and all(n[0] == "dog" and n[1] != "dog" for n in pairs)
    question, answer = emoji_views.caption(["apple", "grapes"], random.Random(3))
    assert "an apple and grapes" in answer or answer == "an apple and grapes"
    rng = random.Random(5)
    canonical = [emoji_views.caption(["dog"], rng) for _ in range(2000)]
    share = sum(q == "What is shown?" for q, _ in canonical) / len(canonical)
    assert abs(share - emoji_views.CANONICAL_SHARE) < 0.05
    assert {a for q, a in canonical if q == "What is shown?"} == {"dog"}
    assert emoji_views.with_article("elephant") == "an elephant" and emoji_views.with_article("scissors") == "scissors"


@pytest.mark.parametrize("style", emoji_views.HELD_OUT_STYLES)
def test_held_out_styles_are_two_colour_drawings_on_white(glyphs, style):
    rng = random.Random(0)
    for g in glyphs[::6]:
        pixels = np.asarray(emoji_views.held_out_view(g.image, style, 96, rng)).reshape(-1, 3)
        colours = np.unique(pixels, axis=0)
        assert len(colours) == 2 and (255, 255, 255) in map(tuple, colours), (g.name, len(colours))
        ink = (pixels != 255).any(axis=1).mean()
        # outlines are thin; silhouettes fill the shape; neither touches the border frame
        assert (0.02 < ink < 0.35) if style == "line-drawing" else (0.08 < ink < 0.85), (g.name, ink)
    with pytest.raises(ValueError, match="valid: line-drawing, silhouette"):
        emoji_views.held_out_view(glyphs[0].image, "watercolour", 32, rng)


def test_training_never_shows_a_held_out_style(glyphs):
    """Training pictures are never two-colour images on white (what both held-out styles are)."""
    rng = random.Random(11)
    for k in range(200):
        pixels = np.asarray(emoji_views.training_view(glyphs, k % len(glyphs), 64, rng)[0]).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 2
