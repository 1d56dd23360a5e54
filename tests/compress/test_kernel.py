"""Triton pooling kernel against the PyTorch reference: forward and gradients, every dtype, odd shapes.

Off CUDA the kernel runs in Triton's interpreter (conftest sets TRITON_INTERPRET=1 before it is imported).
"""

import pytest
import torch

from vregion.compress import plan_pooling, pool_rows, pool_visual_spans, resolve_impl
from vregion.models.runner import default_position_ids

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Both sides accumulate in fp32 and round once; they may differ by the last bit (divide vs reciprocal).
TOLERANCE = {torch.float32: (1e-6, 1e-6), torch.bfloat16: (2**-7, 1e-5), torch.float16: (2**-10, 1e-5)}


def odd_batch(T=37):
    """Left-padded rows (0, 5 and 2 padding tokens), several spans with partial windows, a dummy row."""
    mask = torch.ones(3, T, dtype=torch.long)
    mask[1, :5] = 0
    mask[2, :2] = 0
    spans = torch.tensor([[0, 1, 11], [0, 14, 9], [0, 25, 7], [1, 6, 13], [-1, 0, 11], [2, 30, 3]])
    return mask, spans


def run(impl, hidden, start, count, grad_out):
    x = hidden.detach().clone().requires_grad_(True)
    y = pool_rows(x, start, count, impl=impl)
    y.backward(grad_out)
    return y.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("stride,D", [(2, 40), (4, 7), (8, 1100)])  # 1100: more than one column block
def test_kernel_matches_reference(dtype, stride, D):
    mask, spans = odd_batch()
    plan = plan_pooling(mask.to(DEVICE), spans, stride)
    hidden = torch.randn(3, mask.shape[1], D, device=DEVICE).to(dtype)  # (B, T, D)
    grad_out = torch.randn(*plan.start.shape, D, device=DEVICE).to(dtype)  # (B, T', D)
    y_ref, g_ref = run("torch", hidden, plan.start, plan.count, grad_out)
    y, g = run("triton", hidden, plan.start, plan.count, grad_out)
    assert y.dtype == g.dtype == dtype and y.shape == y_ref.shape and g.shape == hidden.shape
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(y, y_ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(g, g_ref, rtol=rtol, atol=atol)
    assert torch.count_nonzero(y[plan.count == 0]) == 0  # padding rows are zeros
    assert torch.count_nonzero(g[1, :5]) == 0  # dropped padding gets no gradient


def test_kernel_on_hand_plan_including_empty_rows():
    from vregion_kernels.pool_visual import covering_rows
    from vregion_kernels.pool_visual import pool_rows as kernel_pool_rows

    hidden = torch.arange(2 * 7 * 3, dtype=torch.float32, device=DEVICE).reshape(2, 7, 3)
    start = torch.tensor([[0, 1, 4, 6], [0, 0, 2, 5]], device=DEVICE)
    count = torch.tensor([[1, 3, 2, 1], [0, 2, 3, 1]], device=DEVICE)
    out = kernel_pool_rows(hidden, start, count)
    expected = torch.stack(
        [hidden[0, 0], hidden[0, 1:4].mean(0), hidden[0, 4:6].mean(0), hidden[0, 6],
         torch.zeros(3, device=DEVICE), hidden[1, 0:2].mean(0), hidden[1, 2:5].mean(0), hidden[1, 5]]
    ).reshape(2, 4, 3)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert covering_rows(start, count, 7).tolist() == [[0, 1, 1, 1, 2, 2, 3], [1, 1, 2, 2, 2, 3, -1]]


def test_full_pooling_same_through_either_impl():
    mask, spans = odd_batch()
    hidden = torch.randn(3, mask.shape[1], 16, device=DEVICE)
    positions = default_position_ids(mask)
    labels = torch.randint(0, 9, mask.shape)
    ref = pool_visual_spans(hidden, mask, positions, labels, spans, 4, impl="torch")
    fused = pool_visual_spans(hidden, mask, positions, labels, spans, 4, impl="triton")
    torch.testing.assert_close(fused.hidden, ref.hidden, rtol=1e-6, atol=1e-6)
    for name in ("attention_mask", "position_ids", "labels", "image_spans"):
        assert torch.equal(getattr(fused, name), getattr(ref, name)), name


def test_impl_resolution(monkeypatch):
    cpu = torch.zeros(1)
    assert resolve_impl("auto", cpu) == "torch" and resolve_impl("torch", cpu) == "torch"
    with pytest.raises(ValueError, match="valid: auto, triton, torch"):
        resolve_impl("cuda", cpu)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolve_impl("triton", cpu)


def test_kernel_pools_packed_rows_per_sample():
    """Packed rows (several samples per row, right padding): the kernel pools each sample's images exactly
    as the reference, and segment ids follow the pooled rows."""
    from vregion.data.packing import collate_packed

    def sample(n, starts):
        ids = torch.arange(n) + 3
        return dict(input_ids=ids, labels=ids.clone(), pixel_values=torch.zeros(len(starts), 3, 8, 8),
                    image_spans=[(s, 6) for s in starts])

    batch = collate_packed([sample(20, [2, 10]), sample(9, [1]), sample(7, []), sample(15, [4])], 0, 8, 32)
    hidden = torch.randn(*batch["input_ids"].shape, 24, device=DEVICE)
    args = (batch["attention_mask"].to(DEVICE), batch["position_ids"].to(DEVICE), batch["labels"].to(DEVICE),
            batch["image_spans"].to(DEVICE), 4)
    ref = pool_visual_spans(hidden, *args, impl="torch", segment_ids=batch["segment_ids"].to(DEVICE))
    fused = pool_visual_spans(hidden, *args, impl="triton", segment_ids=batch["segment_ids"].to(DEVICE))
    torch.testing.assert_close(fused.hidden, ref.hidden, rtol=1e-6, atol=1e-6)
    assert torch.equal(fused.segment_ids, ref.segment_ids)
    for row, (seg, mask) in enumerate(zip(ref.segment_ids.tolist(), ref.attention_mask.tolist())):
        real = [s for s, m in zip(seg, mask) if m]
        assert real == sorted(real)  # samples stay contiguous, in order
    # each sample keeps its own positions: pooled windows average positions of one sample only
    for s in range(int(ref.segment_ids.max()) + 1):
        rows = (ref.segment_ids == s) & ref.attention_mask.bool()
        assert (ref.position_ids[rows] >= 0).all()
    # four images of 6 tokens pooled with stride 4 keep 2 tokens each
    assert int(ref.attention_mask.sum()) == int(batch["attention_mask"].sum()) - 4 * (6 - 2)
