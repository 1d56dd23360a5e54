"""Demo shards from the Debian emoji font and Fashion-MNIST: captions, held-out splits, counts, determinism."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import unicodedata

import numpy as np
import pytest
from PIL import Image

from vregion.data.demo_data import (
    EMOJI_PHRASINGS,
    FASHION_CLASSES,
    FASHION_QUESTION,
    build_demo_data,
    find_emoji_font,
    find_fashion_mnist,
    load_fashion_mnist,
    render_emoji,
)

pytest.importorskip("fontTools", reason="fontTools (pip install fonttools) enumerates the emoji font")
if find_emoji_font() is None or find_fashion_mnist() is None:
    pytest.skip(
        "Debian packages fonts-noto-color-emoji and dataset-fashion-mnist are not installed",
        allow_module_level=True,
    )

SIZES = dict(num_emoji=10, num_fashion_train=12, num_fashion_eval=6, image_size=32, samples_per_shard=7)


def read_split(folder) -> list[tuple[dict, bytes]]:
    """(meta json, img0.png bytes) of every sample in a split folder, in shard order."""
    out = []
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in sorted(n for n in members if n.endswith(".json")):
            out.append((json.loads(members[name]), members[name[: -len("json")] + "img0.png"]))
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    summary = build_demo_data(out, seed=0, **SIZES)
    splits = {name: read_split(out / name) for name in ("train", "eval-fashion", "eval-emoji")}
    return out, summary, splits


def question_answer(meta: dict) -> tuple[str, str]:
    human, gpt = meta["conversations"]
    assert human["from"] == "human" and gpt["from"] == "gpt" and human["value"].startswith("<image>\n")
    return human["value"][len("<image>\n") :], gpt["value"]


def test_counts_match_summary_and_index(demo):
    out, summary, splits = demo
    # 10 emoji: one held out (10%), nine in train beside the 12 Fashion-MNIST train items
    expected = {"train": (21, 9, 12), "eval-fashion": (6, 0, 6), "eval-emoji": (1, 1, 0)}
    for name, (total, n_emoji, n_fashion) in expected.items():
        index = json.loads((out / name / "index.json").read_text())
        assert index["total"] == total == len(splits[name])
        assert sum(s["samples"] for s in index["shards"]) == total
        assert sorted(s["name"] for s in index["shards"]) == sorted(p.name for p in (out / name).glob("*.tar"))
        assert summary["splits"][name] == {"total": total, "emoji": n_emoji, "fashion": n_fashion,
                                           "shards": len(index["shards"])}
    assert [s["samples"] for s in json.loads((out / "train" / "index.json").read_text())["shards"]] == [7, 7, 7]


def test_images_decode_at_the_requested_size(demo):
    _, _, splits = demo
    for samples in splits.values():
        for meta, png in samples:
            image = Image.open(io.BytesIO(png))
            image.load()
            assert image.size == (32, 32) and meta["num_images"] == 1
            assert np.asarray(image.convert("L")).std() > 5  # a picture, not a blank square


def test_emoji_captions_are_their_unicode_names(demo):
    _, _, splits = demo
    phrasings = dict(EMOJI_PHRASINGS)
    emoji = [(meta, split) for split, samples in splits.items() for meta, _ in samples
             if meta["id"].startswith("emoji-")]
    assert len(emoji) == 10
    for meta, split in emoji:
        name = unicodedata.name(chr(int(meta["id"].removeprefix("emoji-"), 16))).lower()
        question, answer = question_answer(meta)
        assert answer == phrasings[question].format(name=name)
        if split == "eval-emoji":  # the canonical phrasing, so answers can be matched exactly
            assert (question, answer) == ("Describe this emoji.", name)


def test_fashion_answers_are_the_item_class(demo):
    _, _, splits = demo
    labels = {split: load_fashion_mnist(find_fashion_mnist(), split)[1] for split in ("train", "test")}
    fashion = [meta for samples in splits.values() for meta, _ in samples if meta["id"].startswith("fmnist-")]
    assert len(fashion) == 18
    for meta in fashion:
        _, split, index = meta["id"].split("-")
        question, answer = question_answer(meta)
        assert question == FASHION_QUESTION
        assert answer == FASHION_CLASSES[labels[split][int(index)]].lower()
    assert {m["id"].split("-")[1] for m, _ in splits["eval-fashion"]} == {"test"}


def test_train_and_eval_share_no_image(demo):
    _, _, splits = demo
    train_ids = {meta["id"] for meta, _ in splits["train"]}
    train_pngs = {hashlib.sha1(png).digest() for _, png in splits["train"]}
    for name in ("eval-fashion", "eval-emoji"):
        assert not train_ids & {meta["id"] for meta, _ in splits[name]}
        assert not train_pngs & {hashlib.sha1(png).digest() for _, png in splits[name]}
    assert len(train_ids) == len(splits["train"])  # no sample twice in train either


def test_same_seed_same_bytes_other_seed_other_emoji(demo, tmp_path):
    out, _, splits = demo
    build_demo_data(tmp_path / "same", seed=0, **SIZES)
    build_demo_data(tmp_path / "other", seed=1, **SIZES)
    for tar in sorted((out / "train").glob("*.tar")):
        assert (tmp_path / "same" / "train" / tar.name).read_bytes() == tar.read_bytes()
    other = {meta["id"] for meta, _ in read_split(tmp_path / "other" / "train")}
    assert other != {meta["id"] for meta, _ in splits["train"]}


def test_fashion_mnist_parses_with_balanced_labels():
    images, labels = load_fashion_mnist(find_fashion_mnist(), "test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10


def test_grinning_face_renders_yellow():
    from PIL import ImageFont

    font = ImageFont.truetype(str(find_emoji_font()), size=109)
    pixels = np.asarray(render_emoji(font, 0x1F600, 32)).astype(int)  # (32, 32, 3)
    r, g, b = pixels[16, 8]  # the left cheek
    assert r > 200 and g > 150 and b < 100
    assert render_emoji(font, 0x20, 32) is None  # the space maps to an empty glyph
