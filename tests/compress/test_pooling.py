"""Reference pooling: a hand-computed batch, padding sides, partial windows, identity cases, bad spans."""

import pytest
import torch

from vregion.compress import IGNORE_INDEX as X
from vregion.compress import plan_pooling
from vregion.compress.pooling import pool_rows, pool_visual_spans
from vregion.models.runner import default_position_ids

B, T = 3, 10


def hand_batch():
    """Right-padded, S = 3. Sample 0: images at t 1-4 and 6-8; sample 1: text only; sample 2: image at t 3-7.

    hidden[b, t] = (100 b + t, -(100 b + t)) and labels[b, t] = 1000 b + t everywhere (even on images), so
    every expected value below is a mean of row numbers.
    """
    rows = (100 * torch.arange(B)[:, None] + torch.arange(T)).float()  # (B, T)
    hidden = torch.stack([rows, -rows], -1)  # (B, T, 2)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 8:] = 0
    mask[2, 9:] = 0
    labels = 1000 * torch.arange(B)[:, None] + torch.arange(T)
    spans = torch.tensor([[0, 1, 4], [0, 6, 3], [-1, 0, 4], [2, 3, 5]])
    return hidden, mask, default_position_ids(mask), labels, spans


def test_hand_computed_example_with_partial_windows():
    hidden, mask, positions, labels, spans = hand_batch()
    out = pool_visual_spans(hidden, mask, positions, labels, spans, stride=3)
    # Sample 0: t0 | (1,2,3) (4) | t5 | (6,7,8) | t9; sample 1 unchanged; sample 2: t0 t1 t2 | (3,4,5) (6,7) | t8.
    first = torch.tensor(
        [
            [0, 2, 4, 5, 7, 9, 0, 0],
            [100, 101, 102, 103, 104, 105, 106, 107],
            [200, 201, 202, 204, 206.5, 208, 0, 0],
        ]
    )
    torch.testing.assert_close(out.hidden, torch.stack([first, -first], -1), rtol=0, atol=0)
    assert out.attention_mask.tolist() == [[1] * 6 + [0] * 2, [1] * 8, [1] * 6 + [0] * 2]
    assert out.position_ids.tolist() == [
        [0, 2, 4, 5, 7, 9, 0, 0],
        [0, 1, 2, 3, 4, 5, 6, 7],
        [0, 1, 2, 4, 6.5, 8, 0, 0],  # exact float means, not truncated
    ]
    assert out.labels.tolist() == [  # first tokens too: nothing predicts them
        [X, X, X, 5, X, 9, X, X],
        [X, 1001, 1002, 1003, 1004, 1005, 1006, 1007],
        [X, 2001, 2002, X, X, 2008, X, X],
    ]
    assert out.image_spans.tolist() == [[0, 1, 2], [0, 4, 1], [-1, 0, 4], [2, 3, 2]]  # dummy row unchanged


def shift_left_padded(x, mask, fill=0):
    """Right-padded (B, T, ...) -> the same rows left-padded."""
    out = torch.full_like(x, fill)
    for b in range(x.shape[0]):
        n = int(mask[b].sum())
        out[b, T - n :] = x[b, :n]
    return out


def test_left_padding_keeps_its_side_and_content():
    hidden, mask, positions, labels, spans = hand_batch()
    right = pool_visual_spans(hidden, mask, positions, labels, spans, stride=3)
    left_mask = shift_left_padded(mask, mask)
    left_spans = spans.clone()
    left_spans[3, 1] += 1  # sample 2 has one padding token in front now
    left = pool_visual_spans(
        shift_left_padded(hidden, mask), left_mask, default_position_ids(left_mask),
        shift_left_padded(labels, mask, X), left_spans, stride=3,
    )
    assert left.attention_mask.tolist() == [[0] * 2 + [1] * 6, [1] * 8, [0] * 2 + [1] * 6]
    for b in range(B):
        n = int(right.attention_mask[b].sum())
        torch.testing.assert_close(left.hidden[b, -n:], right.hidden[b, :n], rtol=0, atol=0)
        assert left.position_ids[b, -n:].tolist() == right.position_ids[b, :n].tolist()
        assert left.labels[b, -n:].tolist() == right.labels[b, :n].tolist()
    # Sample 0 had no padding: in a left-padded batch it is right-aligned too.
    assert left.image_spans.tolist() == [[0, 3, 2], [0, 6, 1], [-1, 0, 4], [2, 5, 2]]


def test_padding_side_detected_per_row():
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0]])
    spans = torch.tensor([[0, 3, 4], [1, 0, 4], [2, 0, 4]])
    plan = plan_pooling(mask, spans, stride=4)
    assert plan.attention_mask.tolist() == [[0, 1], [1, 1], [1, 0]]  # row 0 stays left-padded, row 2 right
    assert plan.start.tolist() == [[0, 3], [0, 4], [0, 0]] and plan.count.tolist() == [[0, 4], [4, 1], [4, 0]]
    assert plan.image_spans.tolist() == [[0, 1, 1], [1, 0, 1], [2, 0, 1]]


@pytest.mark.parametrize("length,stride,rows", [(576, 16, 36), (577, 16, 37), (7, 4, 2), (5, 8, 1), (3, 2, 2)])
def test_any_span_length_pools_to_ceil(length, stride, rows):
    mask = torch.ones(1, length + 2, dtype=torch.long)
    plan = plan_pooling(mask, torch.tensor([[0, 1, length]]), stride)
    assert plan.count.shape == (1, rows + 2)
    expected = [stride] * (length // stride) + ([length % stride] if length % stride else [])
    assert plan.count[0, 1:-1].tolist() == expected and plan.visual[0].tolist() == [False] + [True] * rows + [False]
    assert plan.image_spans.tolist() == [[0, 1, rows]]


def test_identity_cases_return_inputs():
    hidden, mask, positions, labels, spans = hand_batch()
    out = pool_visual_spans(hidden, mask, positions, labels, spans, stride=1)
    assert out.hidden is hidden and out.position_ids is positions and out.labels is labels
    text_only = pool_visual_spans(hidden, mask, positions, labels, torch.tensor([[-1, 0, 4]]), stride=4)
    assert text_only.hidden is hidden and text_only.attention_mask is mask
    assert pool_visual_spans(hidden, mask, positions, None, None, stride=4).hidden is hidden


def test_reference_gradient_is_grad_over_count():
    hidden, mask, positions, labels, spans = hand_batch()
    hidden.requires_grad_(True)
    plan = plan_pooling(mask, spans, 3)
    pool_rows(hidden, plan.start, plan.count).sum().backward()
    expected = torch.tensor([[1, 1 / 3, 1 / 3, 1 / 3, 1, 1, 1 / 3, 1 / 3, 1 / 3, 1]] + [[1] * 8 + [0] * 2]
                            + [[1, 1, 1, 1 / 3, 1 / 3, 1 / 3, 1 / 2, 1 / 2, 1, 0]])
    torch.testing.assert_close(hidden.grad[..., 0], expected)  # dropped padding: zero gradient


@pytest.mark.parametrize(
    "spans,match",
    [
        ([[0, 1, 4], [0, 3, 2]], "overlap"),
        ([[1, 6, 4]], "real"),  # sample 1's tokens 8-9 are padding
        ([[0, 8, 4]], "outside"),
        ([[3, 0, 2]], "outside"),
        ([[0, 2, 0]], "at least one token"),
    ],
)
def test_bad_spans_rejected(spans, match):
    hidden, mask, positions, labels, _ = hand_batch()
    with pytest.raises(ValueError, match=match):
        pool_visual_spans(hidden, mask, positions, labels, torch.tensor(spans), stride=2)


def test_stride_must_be_positive():
    hidden, mask, positions, labels, spans = hand_batch()
    with pytest.raises(ValueError, match="stride"):
        pool_visual_spans(hidden, mask, positions, labels, spans, stride=0)
