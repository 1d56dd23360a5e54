"""Compression on a tiny VLM: S = 1 parity, exact K = 0 semantics, shorter sequences from layer K on,
padding-side invariance of per-sample losses, Triton vs PyTorch in a training step, hook management."""

import pytest
import torch

from tests.models.tiny import padded_mask, tiny_model_config
from vregion.compress import CompressionHook, PoolingSetting, apply_stage, get_compression, pool_visual_spans, set_compression
from vregion.models.runner import default_position_ids
from vregion.models.vlm import build_vlm

B, T, N = 3, 60, 16  # N: visual tokens per tiny image (32 px, patch 8)


def batch(padding="right"):
    """Sample 0: two images; sample 1: one image (padded by 3); sample 2: text only (padded by 6); a dummy."""
    input_ids = torch.randint(0, 256, (B, T))
    mask = padded_mask(B, T, padding)
    shift = 3 if padding == "left" else 0  # sample 1's image sits after its left padding
    spans = torch.tensor([[0, 2, N], [0, 25, N], [1, 10 + shift, N], [-1, 0, N]])
    labels = input_ids.clone()
    labels[mask == 0] = -100
    for sample, start, length in spans.tolist():
        if sample >= 0:
            labels[sample, start : start + length] = -100
    return dict(input_ids=input_ids, attention_mask=mask, labels=labels, pixel_values=torch.randn(4, 3, 32, 32),
                image_spans=spans)


def tiny(family="llama"):
    model, _ = build_vlm(tiny_model_config(family))
    return model.eval()


def test_stride_one_is_exactly_uncompressed():
    model, inputs = tiny(), batch()
    with torch.no_grad():
        plain = model(**inputs)["logits"]
        model.runner.between_layers = CompressionHook(model.runner, 0, 1)  # the hook path itself, S = 1
        hooked = model(**inputs)["logits"]
    assert torch.equal(hooked, plain)
    assert set_compression(model, 1, 1) is None and model.runner.between_layers is None


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_layer_zero_equals_llm_on_pooled_embeddings(family):
    """K = 0: the model is exactly the HF LLM run on the pooled embeddings, mask and (float) positions."""
    model, inputs = tiny(family), batch("left")
    set_compression(model, 0, 4, impl="torch")
    with torch.no_grad():
        out = model(**inputs)
        embeds = model.embed(inputs["input_ids"], inputs["pixel_values"], inputs["image_spans"])
        mask = inputs["attention_mask"]
        p = pool_visual_spans(embeds, mask, default_position_ids(mask), None, inputs["image_spans"], 4)
        expected = model.llm(inputs_embeds=p.hidden, attention_mask=p.attention_mask, position_ids=p.position_ids)
    assert out["logits"].shape == (B, T - 6, model.llm.config.vocab_size)  # text-only sample 2 is the longest
    torch.testing.assert_close(out["logits"], expected.logits, rtol=1e-6, atol=1e-6)


def test_layers_from_k_see_the_shorter_sequence():
    model, inputs = tiny("gemma3"), batch()  # 4 layers
    inputs["input_ids"], inputs["attention_mask"] = inputs["input_ids"][:2], inputs["attention_mask"][:2]
    inputs["labels"] = inputs["labels"][:2]  # samples 0 and 1 both have images
    seen = {}  # layer index -> sequence length of its input hidden states

    def record(i):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]  # (B, T, D)
            seen[i] = hidden.shape[1]

        return hook

    for i, layer in enumerate(model.llm.model.layers):
        layer.register_forward_pre_hook(record(i), with_kwargs=True)
    set_compression(model, 2, 4)
    with torch.no_grad():
        model(**inputs)
    # Sample 0 (60 tokens, two images) -> 36; sample 1 (57 real tokens, one image) -> 45, the new length.
    assert seen == {0: T, 1: T, 2: T - 3 - (N - N // 4), 3: T - 3 - (N - N // 4)}


def per_sample_losses(model, inputs):
    losses = []
    for b in range(B):
        labels = torch.full_like(inputs["labels"], -100)
        labels[b] = inputs["labels"][b]
        with torch.no_grad():
            losses.append(model(**{**inputs, "labels": labels})["loss"].item())
    return losses


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_left_and_right_padding_give_same_per_sample_losses(family):
    """Also covers first-token labels (not -100 here): sample 0 is unpadded but moves behind padding in the
    left-padded batch, where the shifted loss would count its first label if pooling did not drop it."""
    model = tiny(family)
    set_compression(model, 1, 4)
    torch.manual_seed(1)
    right = batch("right")
    left = dict(right)
    mask = padded_mask(B, T, "left")
    for key, fill in (("input_ids", 0), ("labels", -100)):
        left[key] = torch.full_like(right[key], fill)
        for b in range(B):
            n = int(mask[b].sum())
            left[key][b, T - n :] = right[key][b, :n]
    left["attention_mask"] = mask
    left["image_spans"] = batch("left")["image_spans"]
    r, l = per_sample_losses(model, right), per_sample_losses(model, left)
    assert r == pytest.approx(l, rel=1e-5)
    # And each equals the sample run alone, unpadded: padding leaks nowhere.
    n = int(right["attention_mask"][1].sum())
    alone = {k: v[1:2, :n] for k, v in right.items() if k in ("input_ids", "attention_mask", "labels")}
    alone.update(pixel_values=right["pixel_values"][2:3], image_spans=torch.tensor([[0, 10, N]]))
    with torch.no_grad():
        assert model(**alone)["loss"].item() == pytest.approx(r[1], rel=1e-5)


def test_compression_changes_the_loss():
    model, inputs = tiny(), batch()
    with torch.no_grad():
        plain = model(**inputs)["loss"].item()
        set_compression(model, 1, 4)
        compressed = model(**inputs)["loss"].item()
    assert abs(plain - compressed) > 1e-4


def test_triton_and_torch_training_steps_agree():
    model, inputs = tiny(), batch("left")
    model.train()
    results = []
    for impl in ("torch", "triton"):
        model.zero_grad()
        set_compression(model, 1, 4, impl=impl)
        loss = model(**inputs, return_logits=False)["loss"]
        loss.backward()
        results.append((loss.item(), model.projector[0].weight.grad.clone()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    assert results[0][1].abs().sum() > 0  # gradient flows back through the pooling into the projector
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-5, atol=1e-7)


def test_hook_management():
    model = tiny()
    hook = set_compression(model, 1, 4)
    assert get_compression(model) is hook and (hook.layer, hook.stride) == (1, 4)
    assert set_compression(model, 1, 4) is hook  # same setting: no-op
    assert apply_stage(model, PoolingSetting(0, None, None)) is None and get_compression(model) is None
    assert apply_stage(model, PoolingSetting(2, 0, 8)).layer == 0
    with pytest.raises(ValueError, match=r"must be in \[0, 2\)"):
        set_compression(model, 2, 4)
    with pytest.raises(ValueError, match="valid: auto, triton, torch"):
        set_compression(model, 1, 4, impl="cuda")
    model.runner.between_layers = lambda i, state: state
    with pytest.raises(RuntimeError, match="different between_layers hook"):
        set_compression(model, 1, 4)


def test_wrapped_model_is_found():
    model = tiny()

    class Engine:  # DeepSpeed-style wrapper exposing the model as .module
        module = model

    assert set_compression(Engine(), 0, 2) is get_compression(model)
    with pytest.raises(TypeError, match="no DecoderRunner"):
        set_compression(object(), 0, 2)


def test_generation_uses_the_compression_hook():
    """With pooling installed, greedy generation equals step-by-step argmax of the pooled forward."""
    from vregion.compress import set_compression

    torch.manual_seed(0)
    model, _ = build_vlm(tiny_model_config("llama"))
    model.eval()
    inputs = batch("left")
    set_compression(model, 1, 4)
    new = model.generate(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
                         inputs["image_spans"], max_new_tokens=4, eos_token_id=None, pad_token_id=0)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    for step in range(new.shape[1]):
        with torch.no_grad():
            logits = model(ids, mask, None, inputs["pixel_values"], inputs["image_spans"])["logits"]
        expected = logits[:, -1].argmax(-1)
        assert torch.equal(new[:, step], expected), step
        ids = torch.cat([ids, expected[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    set_compression(model, None)
    plain = model.generate(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
                           inputs["image_spans"], max_new_tokens=4, pad_token_id=0)
    assert plain.shape[0] == new.shape[0]
