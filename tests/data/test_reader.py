"""Reader: rank split, seeded shuffle, exact resume, counted skips, dummy image, left padding."""

from __future__ import annotations

import itertools

import pytest
import torch

from vregion.data import consumed_samples, resolve_shards

from .conftest import IMAGE_SIZE, NUM_IMAGE_TOKENS, numbered_sample, png_bytes, qa, row_answers, write_numbered


def answers(loader, tok, batches=None) -> list[str]:
    return [a for batch in itertools.islice(loader, batches) for a in row_answers(batch, tok)]


def take(loader, n) -> list[dict]:
    return list(itertools.islice(loader, n))


def assert_same_batches(got: list[dict], want: list[dict]):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for key in g:
            if isinstance(g[key], torch.Tensor):
                assert torch.equal(g[key], w[key]), key
            else:
                assert g[key] == w[key], key


@pytest.mark.parametrize("per_shard", [4, 20])  # 5 shards: split by shard; 1 shard: split by sample
def test_two_ranks_cover_every_sample_once(tmp_path, tok, make_loader, per_shard):
    ids = write_numbered(tmp_path, 20, per_shard)
    seen = [answers(make_loader(tmp_path, rank=r, world_size=2, infinite=False), tok) for r in (0, 1)]
    assert sorted(seen[0] + seen[1]) == ids
    assert not set(seen[0]) & set(seen[1])
    assert abs(len(seen[0]) - len(seen[1])) <= 4  # one shard at most


def test_every_epoch_is_a_partition_and_epochs_differ(tmp_path, tok, make_loader):
    ids = write_numbered(tmp_path, 20, 5)  # 4 equal shards: each rank reads 10 samples per epoch
    streams = [answers(make_loader(tmp_path, rank=r, world_size=2, micro_batch_size=5, shuffle_buffer=4), tok, 6)
               for r in (0, 1)]
    for epoch in range(3):
        part = [s[epoch * 10 : (epoch + 1) * 10] for s in streams]
        assert sorted(part[0] + part[1]) == ids
    assert streams[0][:10] != streams[0][10:20]


def test_seeded_shuffle_is_deterministic(tmp_path, tok, make_loader):
    ids = write_numbered(tmp_path, 24, 4)
    order = lambda **kw: answers(make_loader(tmp_path, infinite=False, shuffle_buffer=8, **kw), tok)  # noqa: E731
    assert order(seed=1) == order(seed=1)
    assert order(seed=1) != order(seed=2)
    assert sorted(order(seed=1)) == ids
    assert answers(make_loader(tmp_path, infinite=False, shuffle_buffer=0), tok) == ids  # 0: file order


def _stream_with_bad_samples(tmp_path) -> None:
    overrides = {
        3: numbered_sample(3, image=b"this is not an image"),
        7: {"id": "s007", "conversations": [{"from": "gpt", "value": "no question"}], "images": []},
        8: numbered_sample(8, image=b"\x89PNG\r\n\x1a\n broken"),
    }
    write_numbered(tmp_path, 14, 3, overrides=overrides)


@pytest.mark.parametrize("workers_before,workers_after", [(0, 0), (2, 2), (0, 2)])
def test_resume_equals_the_uninterrupted_tail(tmp_path, make_loader, workers_before, workers_after):
    _stream_with_bad_samples(tmp_path)
    full = take(make_loader(tmp_path, micro_batch_size=3, shuffle_buffer=5, num_workers=workers_before), 12)
    assert sum(sum(b["skipped"].values()) for b in full) >= 3  # the bad samples are in the compared range
    for k in (1, 5):  # 12 batches = 36+ positions over 14-sample epochs: resumes cross epoch boundaries
        skip = sum(consumed_samples(b) for b in full[:k])
        resumed = make_loader(tmp_path, micro_batch_size=3, shuffle_buffer=5, num_workers=workers_after,
                              skip_samples=skip)
        assert_same_batches(take(resumed, 12 - k), full[k:])


def test_workers_do_not_change_the_stream(tmp_path, make_loader):
    _stream_with_bad_samples(tmp_path)
    one = take(make_loader(tmp_path, micro_batch_size=3, shuffle_buffer=5, infinite=False), 100)
    two = take(make_loader(tmp_path, micro_batch_size=3, shuffle_buffer=5, infinite=False, num_workers=2), 100)
    assert_same_batches(two, one)


def test_bad_samples_are_skipped_and_counted(tmp_path, tok, make_loader):
    _stream_with_bad_samples(tmp_path)
    batches = take(make_loader(tmp_path, micro_batch_size=1, shuffle_buffer=0, infinite=False), 100)
    got = [a for b in batches for a in row_answers(b, tok)]
    assert got == [f"s{i:03d}" for i in range(14) if i not in (3, 7, 8)]
    skipped = {}
    for b in batches:
        for reason, n in b["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    assert skipped == {"bad_image": 2, "malformed": 1}
    assert batches[3]["skipped"] == {"bad_image": 1}  # reported with the batch that follows the bad sample
    assert sum(consumed_samples(b) for b in batches) == 14


def test_truncated_tar_is_skipped_and_counted(tmp_path, tok, make_loader):
    write_numbered(tmp_path, 12, 4, text_only_every=1)
    shard = tmp_path / "shard-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: 512 * 3 + 100])  # s004 complete (header + data), then a cut inside s005's header
    batches = take(make_loader(tmp_path, micro_batch_size=1, shuffle_buffer=0, infinite=False), 100)
    got = [a for b in batches for a in row_answers(b, tok)]
    assert got == ["s000", "s001", "s002", "s003", "s004", "s008", "s009", "s010", "s011"]
    skipped = {}
    for b in batches:
        for reason, n in b["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    assert skipped == {"tar_error": 1}


def test_tar_cut_at_a_block_boundary_is_counted_from_the_index(tmp_path, tok, make_loader):
    write_numbered(tmp_path, 8, 4, text_only_every=1)
    shard = tmp_path / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[: 512 * 4])  # two whole samples: reads as a clean, shorter tar
    batches = take(make_loader(tmp_path, micro_batch_size=8, shuffle_buffer=0, infinite=False), 10)
    assert row_answers(batches[0], tok) == ["s000", "s001", "s004", "s005", "s006", "s007"]
    assert batches[0]["skipped"] == {"tar_error": 1}


def test_text_only_batch_gets_one_dummy_image(tmp_path, make_loader):
    write_numbered(tmp_path, 4, 4, text_only_every=1)
    batch = next(iter(make_loader(tmp_path, micro_batch_size=3)))
    assert batch["pixel_values"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch["pixel_values"].abs().sum() == 0
    assert batch["image_spans"].tolist() == [[-1, 0, 0]]
    assert batch["num_samples"] == 3


def test_mixed_batch_layout(tmp_path, tok, image_token_id, make_loader):
    write_numbered(tmp_path, 6, 6, text_only_every=2)  # s000, s002, s004 text-only
    batch = next(iter(make_loader(tmp_path, micro_batch_size=6, shuffle_buffer=0)))
    assert batch["input_ids"].dtype == batch["labels"].dtype == batch["attention_mask"].dtype == torch.long
    assert batch["pixel_values"].shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch["image_spans"][:, 0].tolist() == [1, 3, 5]
    lengths = batch["attention_mask"].sum(1)
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.pad_token_id).all()
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    assert batch["attention_mask"][0, : lengths[0]].all()  # right padding: real tokens first


@pytest.mark.parametrize("side", ["left", "right"])
def test_spans_point_at_image_tokens_after_padding(tmp_path, image_token_id, make_loader, side):
    question = "a much longer question about <image> and also <image> here"
    long = {"id": "long", "conversations": qa(question, "fine"), "images": [png_bytes(), png_bytes((1, 2, 3))]}
    write_numbered(tmp_path, 2, 2, overrides={0: numbered_sample(0), 1: long})
    batch = next(iter(make_loader(tmp_path, micro_batch_size=2, shuffle_buffer=0, padding_side=side)))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert batch["image_spans"].tolist()[0][0] == 0 and batch["image_spans"][:, 0].tolist() == [0, 1, 1]
    for b, start, length in batch["image_spans"].tolist():
        assert length == NUM_IMAGE_TOKENS
        assert (ids[b, start : start + length] == image_token_id).all()
        assert mask[b, start : start + length].all()
    assert int((ids == image_token_id).sum()) == 3 * NUM_IMAGE_TOKENS
    short = int(mask[0].sum())
    assert short < ids.shape[1]
    padded = mask[0, : ids.shape[1] - short] if side == "left" else mask[0, short:]
    assert not padded.any()


def test_shard_specs_resolve_alike(tmp_path):
    write_numbered(tmp_path, 9, 3)
    folder = resolve_shards(tmp_path)
    assert len(folder) == 3
    assert resolve_shards(str(tmp_path / "shard-{000000..000002}.tar")) == folder
    assert resolve_shards(str(tmp_path / "*.tar")) == folder
    assert resolve_shards([folder[0], str(tmp_path / "shard-00000[12].tar")]) == folder
    with pytest.raises(FileNotFoundError):
        resolve_shards(str(tmp_path / "shard-{000000..000003}.tar"))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_iterating_a_loader_leaves_the_global_torch_rng_alone(tmp_path, tok, make_loader, num_workers):
    """A resumed run restores the global RNG and then starts a loader: if the loader drew from that RNG (the
    DataLoader's worker base seed), every later dropout mask would differ from the uninterrupted run's."""
    write_numbered(tmp_path, 8, 4)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    take(make_loader(tmp_path, num_workers=num_workers), 1)
    assert torch.equal(torch.get_rng_state(), before)
