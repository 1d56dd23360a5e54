"""Length grouping and packing in the loader: grouped windows hold exactly their positions, sorted by
(text-only, length); grouping resumes exactly at every batch boundary (bad samples, workers); packed batches
hold the same samples as padded ones in fewer rows."""

from __future__ import annotations

import itertools

import pytest

from vregion.data import IGNORE_INDEX, consumed_samples, write_shards

from .conftest import numbered_sample, png_bytes, qa, row_answers
from .test_reader import assert_same_batches, take


def varied_sample(i: int) -> dict:
    """Sample s007 with a question of (i * 7) % 23 filler words; every 4th text-only; answer = its id."""
    words = " ".join(["word"] * ((i * 7) % 23))
    if i % 4 == 0:
        return {"id": f"s{i:03d}", "conversations": qa(f"q {words}", f"s{i:03d}"), "images": []}
    return {"id": f"s{i:03d}", "conversations": qa(f"<image>\nq {words}", f"s{i:03d}"),
            "images": [png_bytes((i * 7 % 256, 50, 100))]}


def write_varied(out_dir, n: int, per_shard: int = 6, bad: tuple[int, ...] = ()) -> list[str]:
    samples = [numbered_sample(i, image=b"not an image") if i in bad else varied_sample(i) for i in range(n)]
    write_shards(samples, out_dir, per_shard)
    return [s["id"] for s in samples]


def packed_answers(batch: dict, tok) -> list[str]:
    """Each sample's supervised text from a packed batch (via its sample_spans), in sample order."""
    out = []
    for row, start, length in batch["sample_spans"].tolist():
        labels = batch["labels"][row, start : start + length]
        out.append(tok.decode(labels[labels != IGNORE_INDEX].tolist(), skip_special_tokens=True).strip())
    return out


def key(batch: dict) -> list[tuple[bool, int]]:
    """(text-only, length) of each row of a padded batch."""
    lengths = batch["attention_mask"].sum(1).tolist()
    has_image = [False] * len(lengths)
    for sample, _, _ in batch["image_spans"].tolist():
        if sample >= 0:
            has_image[sample] = True
    return [(not img, n) for img, n in zip(has_image, lengths)]


def test_grouped_windows_hold_their_positions_sorted_by_modality_and_length(tmp_path, tok, make_loader):
    write_varied(tmp_path, 24)
    plain = take(make_loader(tmp_path, micro_batch_size=3, shuffle_buffer=0, infinite=False), 100)
    grouped = take(make_loader(tmp_path, micro_batch_size=3, shuffle_buffer=0, infinite=False, group_by_length=4), 100)
    assert len(grouped) == len(plain) == 8
    for w in range(2):  # windows of 4 batches = 12 positions
        window = grouped[4 * w : 4 * w + 4]
        ids = sorted(a for b in window for a in row_answers(b, tok))
        assert ids == sorted(a for b in plain[4 * w : 4 * w + 4] for a in row_answers(b, tok))
        keys = sorted((key(b) for b in window), key=lambda k: k[0])
        flat = [k for ks in keys for k in ks]
        assert flat == sorted(flat)  # batches are consecutive runs of the window's sorted samples
        assert any(k[0] for k in flat) and not all(k[0] for k in flat)  # both modalities in the window
    assert [row_answers(b, tok) for b in grouped] != [row_answers(b, tok) for b in plain]
    again = take(make_loader(tmp_path, micro_batch_size=3, shuffle_buffer=0, infinite=False, group_by_length=4), 100)
    assert_same_batches(again, grouped)  # deterministic under the seed


@pytest.mark.parametrize("workers_before,workers_after", [(0, 0), (0, 2)])
def test_grouped_resume_equals_the_uninterrupted_tail(tmp_path, make_loader, workers_before, workers_after):
    write_varied(tmp_path, 22, bad=(3, 9, 10))
    make = lambda **kw: make_loader(tmp_path, micro_batch_size=3, shuffle_buffer=5, group_by_length=3, **kw)  # noqa: E731
    full = take(make(num_workers=workers_before), 14)  # 14 batches cross window and epoch boundaries
    assert sum(sum(b["skipped"].values()) for b in full) >= 3
    for k in range(1, 14):  # every batch boundary: inside a window and at its end
        skip = sum(consumed_samples(b) for b in full[:k])
        assert_same_batches(take(make(num_workers=workers_after, skip_samples=skip), 14 - k), full[k:])


def test_packed_batches_hold_the_same_samples_in_fewer_rows(tmp_path, tok, make_loader):
    write_varied(tmp_path, 24)
    args = dict(micro_batch_size=6, shuffle_buffer=0, infinite=False, max_length=200)
    padded = take(make_loader(tmp_path, **args), 100)
    packed = take(make_loader(tmp_path, packing=True, **args), 100)
    assert len(packed) == len(padded) == 4
    for p, q in zip(packed, padded):
        assert packed_answers(p, tok) == row_answers(q, tok)  # same samples, same order
        assert p["num_samples"] == q["num_samples"] == 6
        assert p["input_ids"].shape[0] < 6 and p["input_ids"].shape[1] <= 200
        assert p["attention_mask"].sum() == q["attention_mask"].sum()  # the same real tokens
        assert p["attention_mask"].numel() < q["attention_mask"].numel()  # less padding
        assert sorted(p["pixel_values"].sum((1, 2, 3)).tolist()) == sorted(q["pixel_values"].sum((1, 2, 3)).tolist())
    resumed = take(make_loader(tmp_path, packing=True, skip_samples=consumed_samples(packed[0]), **args), 100)
    assert_same_batches(resumed, packed[1:])


def test_packing_is_for_right_padded_training(tmp_path, make_loader):
    write_varied(tmp_path, 6)
    with pytest.raises(ValueError, match="right-padded"):
        make_loader(tmp_path, packing=True, padding_side="left")
    with pytest.raises(ValueError, match="group_by_length"):
        make_loader(tmp_path, group_by_length=-1)


def test_window_of_only_bad_samples_is_counted_with_the_next_batch(tmp_path, make_loader):
    write_varied(tmp_path, 12, bad=(0, 1, 2))  # the first window (3 positions) holds only bad samples
    batches = take(make_loader(tmp_path, micro_batch_size=3, shuffle_buffer=0, infinite=False, group_by_length=1), 10)
    assert batches[0]["skipped"] == {"bad_image": 3}
    assert sum(consumed_samples(b) for b in batches) == 12
    assert list(itertools.chain.from_iterable([b["num_samples"]] for b in batches)) == [3, 3, 3]


@pytest.mark.parametrize("group_by_length", [0, 2])
def test_data_with_no_usable_sample_stops_with_a_clear_error(tmp_path, make_loader, group_by_length):
    """Every sample cut before its answer (max_length too small): an infinite loader must not spin forever."""
    write_varied(tmp_path, 8)
    loader = make_loader(tmp_path, max_length=8, micro_batch_size=2, group_by_length=group_by_length)
    with pytest.raises(RuntimeError, match="in a row were skipped.*truncated_no_supervision.*data.max_length"):
        next(iter(loader))
