"""The demo's task folders: counts, held-out sets apart from training, candidates, determinism."""

from __future__ import annotations

import hashlib
import json
import tarfile

import pytest

from vregion.data import emoji_views
from vregion.data.demo_data import find_emoji_font, find_fashion_mnist
from vregion.data.demo_tasks import CANDIDATES_FILE, build_demo_tasks

if find_emoji_font() is None or find_fashion_mnist() is None:
    pytest.skip("Debian packages fonts-noto-color-emoji and dataset-fashion-mnist are not installed",
                allow_module_level=True)

SIZES = dict(image_size=32, align_views=2, train_views=1, train_scenes=10, eval_scenes=6, fashion_train=5,
             fashion_eval=3, eval_views=1, questions_per_scene=2, samples_per_shard=40)


def read_split(folder) -> list[tuple[dict, bytes]]:
    """(meta json, first image bytes) of every sample in a split folder, in shard order."""
    out = []
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            members = {}
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                members.setdefault(key, {})[ext] = tar.extractfile(m).read()
            for key in members:
                meta = json.loads(members[key]["json"])
                image = next((v for k, v in members[key].items() if k.startswith("img0")), b"")
                out.append((meta, image))
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks")
    return out, build_demo_tasks(out, seed=0, **SIZES)


def _answers(split):
    return [meta["conversations"][1]["value"] for meta, _ in split]


def test_counts_and_candidates(built):
    out, summary = built
    n = len(emoji_views.OBJECTS)
    splits = summary["splits"]
    assert splits["train-align"]["total"] == 2 * n
    assert splits["train"]["views"] == n and splits["train"]["fashion"] == 5
    assert splits["train"]["total"] == n + splits["train"]["scenes"] + 5
    assert splits["eval-cross-style"]["total"] == len(emoji_views.HELD_OUT_STYLES) * n
    assert splits["eval-emoji"]["total"] == n and splits["eval-fashion"]["total"] == 3
    assert splits["eval-scenes"]["total"] >= 6
    names = (out / CANDIDATES_FILE).read_text().split("\n")[:-1]
    assert names == emoji_views.object_names()
    for split in ("eval-cross-style", "eval-emoji"):  # closed-set: every gold answer is a candidate, all asked
        rows = read_split(out / split)
        assert sorted(set(_answers(rows))) == sorted(names)
        assert {meta["conversations"][0]["value"] for meta, _ in rows} == {"<image>\nWhat is shown?"}


def test_held_out_pictures_never_in_training(built):
    out, _ = built
    train = {hashlib.sha1(img).digest() for s in ("train", "train-align") for _, img in read_split(out / s)}
    for split in ("eval-cross-style", "eval-emoji", "eval-scenes", "eval-fashion"):
        held = [hashlib.sha1(img).digest() for _, img in read_split(out / split)]
        assert held and not train & set(held), split


def test_same_arguments_same_bytes(built, tmp_path):
    out, _ = built
    build_demo_tasks(tmp_path, seed=0, **SIZES)
    for path in sorted(out.rglob("*.tar")):
        assert path.read_bytes() == (tmp_path / path.relative_to(out)).read_bytes(), path.name
    other = tmp_path / "seed1"
    build_demo_tasks(other, seed=1, **SIZES)
    assert (other / "train" / "train-000000.tar").read_bytes() != (out / "train" / "train-000000.tar").read_bytes()
