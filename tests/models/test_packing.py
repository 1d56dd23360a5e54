"""Packed rows compute exactly what each sample computes alone: per-sample losses and gradients equal the
unpacked ones (llama, qwen2 with sliding windows, gemma3), with and without in-LLM pooling at several K/S,
with two-image, one-image and text-only samples; no token attends across a sample boundary."""

import pytest
import torch

from tests.models.tiny import tiny_model_config
from vregion.compress import CompressionHook, set_compression
from vregion.constants import IGNORE_INDEX
from vregion.data.collate import batch_to, collate
from vregion.data.packing import collate_packed, first_fit_decreasing
from vregion.models.vlm import build_vlm

N = 16  # visual tokens per tiny CLIP image (32 px, patch 8)
POOLINGS = [None, (0, 4), (1, 2), (1, 3)]  # (K, S); S = 3 leaves a partial last window of 16 tokens


def sample(length: int, image_starts: list[int], seed: int) -> dict:
    """A tokenized sample as the decoder makes it: a prompt without labels, images without labels."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 256, (length,), generator=g)
    labels = input_ids.clone()
    labels[:4] = IGNORE_INDEX  # the prompt
    for start in image_starts:
        labels[start : start + N] = IGNORE_INDEX
    pixels = torch.randn(len(image_starts), 3, 32, 32, generator=g)
    return dict(input_ids=input_ids, labels=labels, pixel_values=pixels, image_spans=[(s, N) for s in image_starts])


def samples() -> list[dict]:
    return [
        sample(50, [2, 24], 0),  # two images
        sample(23, [3], 1),  # one image, short
        sample(17, [], 2),  # text only
        sample(40, [10], 3),  # one image mid-text
        sample(9, [], 4),  # short text only
    ]


def tiny(family: str, attn: str = "sdpa"):
    torch.manual_seed(0)
    cfg = tiny_model_config(family)
    cfg.llm.attn_implementation = attn
    model, _ = build_vlm(cfg)
    return model.eval()  # no dropout; gradients still flow


def install_pooling(model, pooling):
    set_compression(model, None)
    if pooling is not None:
        set_compression(model, pooling[0], pooling[1], impl="torch")


def only(batch: dict, keep: torch.Tensor) -> dict:
    """The batch with labels outside `keep` ignored: its loss is the loss of the kept tokens alone."""
    labels = torch.where(keep, batch["labels"], IGNORE_INDEX)
    return {**batch, "labels": labels}


def loss_and_grads(model, batch) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    out = model(**batch_to(batch, torch.device("cpu"), torch.float32), return_logits=False)
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out["loss"].item(), grads


def test_first_fit_decreasing_fills_rows_and_keeps_order():
    rows = first_fit_decreasing([50, 23, 17, 40, 9], 64)
    assert rows == [[0, 4], [1, 3], [2]]  # 50 + 9; 40 + 23; 17 (no row has 17 left)
    assert first_fit_decreasing([5, 5, 5], 10) == [[0, 1], [2]]
    with pytest.raises(ValueError, match="more than the row capacity"):
        first_fit_decreasing([11], 10)


def test_packed_batch_layout():
    batch = collate_packed(samples(), pad_token_id=0, image_size=32, capacity=64)
    assert batch["input_ids"].shape == (3, 63) and batch["num_samples"] == 5
    assert batch["sample_spans"].tolist() == [[0, 0, 50], [1, 0, 23], [2, 0, 17], [1, 23, 40], [0, 50, 9]]
    assert batch["position_ids"][1, 23:27].tolist() == [0, 1, 2, 3]  # sample 3 restarts at 0
    assert batch["segment_ids"][1].tolist() == [0] * 23 + [1] * 40
    assert batch["segment_ids"][2, 17:].eq(0).all()  # padding continues the row's last sample
    assert batch["labels"][1, 23] == IGNORE_INDEX  # nothing predicts a sample's first token
    # images in span order: sample 0's two, sample 3's one (row 1 at 23 + 10), sample 1's
    assert batch["image_spans"].tolist() == [[0, 2, N], [0, 24, N], [1, 3, N], [1, 33, N]]
    assert batch["attention_mask"].sum() == 50 + 23 + 17 + 40 + 9


# every pooling on llama; sliding windows (qwen2) and gemma3's local rotary base with and without pooling
CASES = [("llama", p) for p in POOLINGS] + [(f, p) for f in ("qwen2", "gemma3") for p in (None, (1, 3))]


@pytest.mark.parametrize("family,pooling", CASES, ids=lambda p: "none" if p is None else
                         (p if isinstance(p, str) else f"K{p[0]}S{p[1]}"))
def test_packed_losses_and_gradients_equal_unpacked(family, pooling):
    model = tiny(family)
    install_pooling(model, pooling)
    items = samples()
    packed = collate_packed(items, pad_token_id=0, image_size=32, capacity=64)
    assert packed["input_ids"].shape[0] < len(items)  # several samples share a row
    for i, item in enumerate(items):
        alone_loss, alone_grads = loss_and_grads(model, collate([item], 0, 32))
        row, start, length = packed["sample_spans"][i].tolist()
        keep = torch.zeros_like(packed["labels"], dtype=torch.bool)
        keep[row, start : start + length] = True
        packed_loss, packed_grads = loss_and_grads(model, only(packed, keep))
        assert packed_loss == pytest.approx(alone_loss, rel=1e-5), f"sample {i}"
        assert packed_grads.keys() == alone_grads.keys()
        for name, grad in alone_grads.items():
            # relative to the tensor's largest entry (fp32 sums in another order differ by ~1e-7 of it); 1e-9
            # absolute for gradients that are zero in exact arithmetic (attention key biases)
            error = (packed_grads[name] - grad).abs().max().item()
            assert error <= 1e-5 * grad.abs().max().item() + 1e-9, f"sample {i}: {name} off by {error}"


@pytest.mark.parametrize("pooling", [None, (1, 4)], ids=["none", "K1S4"])
def test_batch_loss_is_the_token_mean_of_the_unpacked_samples(pooling):
    model = tiny("llama")
    install_pooling(model, pooling)
    items = samples()
    with torch.no_grad():
        padded = model(**batch_to(collate(items, 0, 32), torch.device("cpu"), torch.float32), return_logits=False)
        packed = model(**batch_to(collate_packed(items, 0, 32, 64), torch.device("cpu"), torch.float32),
                       return_logits=False)
    assert packed["num_label_tokens"] == padded["num_label_tokens"]
    assert packed["loss"].item() == pytest.approx(padded["loss"].item(), rel=1e-5)


@pytest.mark.parametrize("pooling", [None, (0, 4), (1, 2)], ids=["none", "K0S4", "K1S2"])
def test_no_attention_across_samples(pooling):
    """Eager attention weights: every query's weight on other samples' keys is exactly zero, at every layer."""
    model = tiny("llama", attn="eager")
    batch = collate_packed(samples(), 0, 32, 64)
    segments, weights = {}, {}
    hook = None if pooling is None else CompressionHook(model.runner, pooling[0], pooling[1], impl="torch")

    def between(i, state):
        state = state if hook is None else hook(i, state)
        segments[i] = state.segment_ids.clone()
        return state

    model.runner.between_layers = between
    for i, layer in enumerate(model.llm.model.layers):
        layer.self_attn.register_forward_hook(lambda m, args, out, i=i: weights.__setitem__(i, out[1].detach()))
    with torch.no_grad():
        model(**batch_to(batch, torch.device("cpu"), torch.float32))
    assert len(weights) == model.runner.num_layers
    for i, w in weights.items():  # (R, heads, T, T)
        seg = segments[i]
        other = seg[:, :, None] != seg[:, None, :]  # (R, T, T) query and key in different samples
        assert w.shape[-1] == seg.shape[1]
        assert w.masked_select(other[:, None].expand_as(w)).abs().max() == 0, f"layer {i}"
        real = batch["attention_mask"].sum() if i < (pooling or (99,))[0] else None
        if real is not None:
            assert seg.shape[1] == batch["input_ids"].shape[1]
    if pooling is not None:  # pooled layers saw a shorter sequence, and still no cross-sample weight
        assert segments[model.runner.num_layers - 1].shape[1] < batch["input_ids"].shape[1]


def test_flash_varlen_arguments_cover_each_sample_and_each_padding_tail():
    from vregion.models.runner import varlen_kwargs

    segments = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    out = varlen_kwargs(segments, mask)
    assert out["cu_seq_lens_q"].tolist() == [0, 2, 4, 6, 12] and out["cu_seq_lens_q"].dtype == torch.int32
    assert out["max_length_q"] == out["max_length_k"] == 6


def test_forward_and_packed_forward_emit_no_future_warning():
    """transformers deprecated create_causal_mask's `past_key_values` (removed in 5.40): the runner passes `cache`."""
    import warnings

    model = tiny("gemma3")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for batch in (collate(samples(), 0, 32), collate_packed(samples(), 0, 32, 64)):
            model(**batch_to(batch, torch.device("cpu"), torch.float32))
