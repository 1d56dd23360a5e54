"""Synthetic shards: deterministic bytes, answers readable from the pixels, some text-only samples."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

from PIL import Image

from vregion.data import count_samples, make_synthetic_shards
from vregion.data.synthetic import COLOURS, SHAPES


def samples_of(folder) -> list[tuple[dict, bytes | None]]:
    out = []
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in sorted(n for n in members if n.endswith(".json")):
            key = name[: -len(".json")]
            out.append((json.loads(members[name]), members.get(f"{key}.img0.png")))
    return out


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    index = make_synthetic_shards(tmp_path / "a", 40, image_size=16, seed=3, samples_per_shard=16)
    make_synthetic_shards(tmp_path / "b", 40, image_size=16, seed=3, samples_per_shard=16)
    make_synthetic_shards(tmp_path / "c", 40, image_size=16, seed=4, samples_per_shard=16)
    assert [s["samples"] for s in index["shards"]] == [16, 16, 8] and count_samples(tmp_path / "a") == 40
    for name in ("shard-000000.tar", "shard-000001.tar", "shard-000002.tar"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "shard-000000.tar").read_bytes() != (tmp_path / "c" / "shard-000000.tar").read_bytes()


def test_answers_are_readable_from_the_image(tmp_path):
    make_synthetic_shards(tmp_path, 300, image_size=24, seed=0, samples_per_shard=64)
    samples = samples_of(tmp_path)
    assert len(samples) == 300
    text_only = [meta for meta, image in samples if image is None]
    assert 10 <= len(text_only) <= 60  # ~10%
    for meta in text_only:
        question, answer = meta["conversations"][0]["value"], meta["conversations"][1]["value"]
        a, b = question[len("What is "): -1].split("+")
        assert int(answer) == int(a) + int(b) and meta["num_images"] == 0
    answers = Counter()
    for meta, image in samples:
        if image is None:
            continue
        question, answer = meta["conversations"][0]["value"], meta["conversations"][1]["value"]
        assert question.startswith("<image>\n") and meta["num_images"] == 1
        pixels = Image.open(io.BytesIO(image))
        assert pixels.size == (24, 24)
        colours = Counter(c for c in pixels.getdata() if c != (128, 128, 128))
        if "colour" in question:
            assert colours.most_common(1)[0][0] == COLOURS[answer]
        else:
            assert answer in SHAPES
        answers[answer] += 1
    assert set(COLOURS) | set(SHAPES) == set(answers)  # every answer occurs
