"""Shard writer and LLaVA JSON packing: round trip through real tar files, index.json, missing images."""

from __future__ import annotations

import json
import tarfile

from vregion.data import count_samples, pack_llava_json, write_shards

from .conftest import jpeg_bytes, png_bytes, qa


def read_tar(path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_write_shards_round_trip(tmp_path):
    jpg, png = jpeg_bytes(), png_bytes()
    samples = [
        {"id": "a", "conversations": qa("<image>\nq", "x"), "images": [jpg]},
        {"id": "b", "conversations": qa("<image><image>\nq", "y"), "images": [png, jpg]},
        {"id": "c.1/2", "conversations": qa("text only", "z"), "images": []},
        {"id": "a", "conversations": qa("dup", "w"), "images": []},
        {"id": "e", "conversations": qa("<image>", "v"), "images": [png]},
    ]
    index = write_shards(samples, tmp_path, samples_per_shard=2)
    assert index == {"shards": [{"name": "shard-000000.tar", "samples": 2}, {"name": "shard-000001.tar", "samples": 2},
                                {"name": "shard-000002.tar", "samples": 1}], "total": 5}
    assert json.loads((tmp_path / "index.json").read_text()) == index
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    first = read_tar(tmp_path / "shard-000000.tar")
    assert sorted(first) == ["a.img0.jpg", "a.json", "b.img0.png", "b.img1.jpg", "b.json"]
    assert first["a.img0.jpg"] == jpg and first["b.img0.png"] == png and first["b.img1.jpg"] == jpg
    assert json.loads(first["b.json"]) == {"id": "b", "conversations": samples[1]["conversations"], "num_images": 2}
    second = read_tar(tmp_path / "shard-000001.tar")
    # a tar-safe key (webdataset splits names at the first dot) and a unique one for the repeated id
    assert sorted(second) == ["a_1.json", "c_1_2.json"]
    assert json.loads(second["c_1_2.json"])["id"] == "c.1/2"
    assert count_samples(tmp_path) == 5
    assert count_samples(str(tmp_path / "shard-00000{0,2}.tar")) == 3


def test_same_samples_give_identical_shards(tmp_path):
    samples = [{"id": str(i), "conversations": qa("<image>", "x"), "images": [png_bytes()]} for i in range(3)]
    write_shards(samples, tmp_path / "one", 2)
    write_shards(samples, tmp_path / "two", 2)
    for name in ("shard-000000.tar", "shard-000001.tar"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_no_samples_leave_no_shard(tmp_path):
    assert write_shards([], tmp_path, 4) == {"shards": [], "total": 0}
    assert list(tmp_path.glob("*.tar")) == []
    assert json.loads((tmp_path / "index.json").read_text())["total"] == 0


def test_count_samples_without_index_is_none(tmp_path):
    write_shards([{"id": "x", "conversations": qa("q", "a"), "images": []}], tmp_path, 4)
    (tmp_path / "index.json").unlink()
    assert count_samples(tmp_path) is None


def test_pack_llava_json(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    jpg, png = jpeg_bytes(), png_bytes()
    (images / "a.jpg").write_bytes(jpg)
    (images / "sub" / "b.png").write_bytes(png)
    entries = [
        {"id": "one", "image": "a.jpg", "conversations": qa("<image>\nq", "x")},
        {"id": "two", "image": ["a.jpg", "sub/b.png"], "conversations": qa("<image><image>", "y")},
        {"id": "three", "conversations": qa("text", "z")},
        {"id": "four", "image": "nope.jpg", "conversations": qa("<image>", "w")},
        {"id": "five", "image": ["a.jpg", "gone/x.png"], "conversations": qa("<image><image>", "v")},
        {"id": "six"},
    ]
    (tmp_path / "llava.json").write_text(json.dumps(entries))
    summary = pack_llava_json(tmp_path / "llava.json", images, tmp_path / "shards", samples_per_shard=2)
    assert summary["entries"] == 6 and summary["written"] == 3
    assert summary["missing_images"] == 2 and summary["skipped_missing"] == 2 and summary["skipped_malformed"] == 1
    assert summary["missing_examples"] == ["nope.jpg", "gone/x.png"]
    assert [s["samples"] for s in summary["shards"]] == [2, 1]
    members = {**read_tar(tmp_path / "shards/shard-000000.tar"), **read_tar(tmp_path / "shards/shard-000001.tar")}
    assert sorted(members) == ["one.img0.jpg", "one.json", "three.json", "two.img0.jpg", "two.img1.png", "two.json"]
    assert members["two.img1.png"] == png and members["one.img0.jpg"] == jpg
    assert json.loads(members["three.json"])["num_images"] == 0


def test_pack_rejects_samples_whose_image_tags_do_not_match_their_images(tmp_path):
    """Training would skip such a sample every epoch (image_count_mismatch): reject it once, at pack time,
    counted and named."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(jpeg_bytes())
    entries = [
        {"id": "ok", "image": "a.jpg", "conversations": qa("<image>\nq", "x")},
        {"id": "no-tag", "image": "a.jpg", "conversations": qa("q", "x")},
        {"id": "two-tags", "image": "a.jpg", "conversations": qa("<image>\n<image> q", "x")},
        {"id": "tag-no-image", "conversations": qa("<image>\nq", "x")},
        {"id": "text", "conversations": qa("q", "x")},
    ]
    (tmp_path / "llava.json").write_text(json.dumps(entries))
    summary = pack_llava_json(tmp_path / "llava.json", images, tmp_path / "shards")
    assert summary["written"] == 2 and summary["skipped_image_mismatch"] == 3
    assert summary["mismatch_examples"] == ["no-tag", "two-tags", "tag-no-image"]
    assert sorted(read_tar(tmp_path / "shards/shard-000000.tar")) == ["ok.img0.jpg", "ok.json", "text.json"]
