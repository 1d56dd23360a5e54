"""VisionLanguageModel: parameter names, splicing at the spans, dummy images, loss, generation, dtypes."""

import math

import pytest
import torch

from vregion.models.vlm import VisionLanguageModel, build_vlm

from .tiny import padded_mask, tiny_model_config

B, T, N = 2, 40, 16  # N: visual tokens per tiny image (32 px, patch 8)


def batch(mask_padding="right"):
    """Two samples: sample 0 has two images, sample 1 one; the 4th image is a dummy (sample index -1)."""
    input_ids = torch.randint(0, 256, (B, T))
    attention_mask = padded_mask(B, T, mask_padding)
    pixel_values = torch.randn(4, 3, 32, 32)
    image_spans = torch.tensor([[0, 2, N], [0, 20, N], [1, 8, N], [-1, 0, N]])
    labels = input_ids.clone()
    labels[:, :25] = -100
    labels[attention_mask == 0] = -100
    return dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        pixel_values=pixel_values,
        image_spans=image_spans,
    )


def capture_runner_embeds(model):
    captured = {}
    prepare = model.runner.prepare

    def spy(embeds, *args, **kwargs):
        captured["embeds"] = embeds.detach().clone()
        return prepare(embeds, *args, **kwargs)

    model.runner.prepare = spy
    return captured


def test_parameter_names_contract():
    model, _ = build_vlm(tiny_model_config("gemma3"))
    names = set(model.state_dict())
    required = {"llm.model.embed_tokens.weight", "llm.model.norm.weight", "llm.lm_head.weight", "projector.0.weight"}
    assert required <= names
    prefixes = {n.split(".")[0] for n in names}
    assert prefixes == {"vision", "projector", "llm"}  # the runner adds no state
    assert any(n.startswith("llm.model.layers.3.") for n in names)
    assert model.num_visual_tokens == N


def test_features_land_exactly_at_spans():
    model, _ = build_vlm(tiny_model_config("llama"))
    model.eval()
    inputs = batch()
    captured = capture_runner_embeds(model)
    with torch.no_grad():
        model(**inputs)
        features = model.encode_images(inputs["pixel_values"])  # (4, N, D)
        text = model.llm.get_input_embeddings()(inputs["input_ids"])  # (B, T, D)
    embeds = captured["embeds"]
    expected = text.clone()
    for m, (sample, start, length) in enumerate(inputs["image_spans"].tolist()):
        if sample >= 0:
            expected[sample, start : start + length] = features[m]
    torch.testing.assert_close(embeds, expected, rtol=0, atol=0)
    assert not torch.equal(embeds[0, 2:18], text[0, 2:18])  # the images really replaced the placeholders
    torch.testing.assert_close(embeds[1, :8], text[1, :8], rtol=0, atol=0)  # dummy image written nowhere


def test_forward_equals_hf_llm_on_spliced_embeddings():
    model, _ = build_vlm(tiny_model_config("gemma3"))
    model.eval()
    inputs = batch("left")
    with torch.no_grad():
        out = model(**inputs)
        embeds = model.embed(inputs["input_ids"], inputs["pixel_values"], inputs["image_spans"])
        mask = inputs["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        expected = model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
    torch.testing.assert_close(out["logits"], expected, rtol=1e-6, atol=1e-6)


def test_loss_equals_manual_cross_entropy():
    model, _ = build_vlm(tiny_model_config("qwen2"))
    inputs = batch()
    out = model(**inputs)
    logits, labels = out["logits"].detach(), inputs["labels"]
    total, count = 0.0, 0
    for b in range(B):
        for t in range(T - 1):
            target = int(labels[b, t + 1])
            if target != -100:
                total -= torch.log_softmax(logits[b, t].double(), -1)[target].item()
                count += 1
    assert out["num_label_tokens"] == count == int((labels[:, 1:] != -100).sum())
    assert out["loss"].item() == pytest.approx(total / count, rel=1e-5)
    assert math.isclose(out["loss"].item(), math.log(320), rel_tol=0.2)  # near-uniform at random init


def test_no_labels_and_all_ignored_labels():
    model, _ = build_vlm(tiny_model_config("llama"))
    inputs = batch()
    out = model(**{**inputs, "labels": None})
    assert out["loss"] is None and out["num_label_tokens"] == 0
    out = model(**{**inputs, "labels": torch.full((B, T), -100)})
    assert out["loss"].item() == 0.0 and out["num_label_tokens"] == 0
    out["loss"].backward()  # still in the graph


def test_text_only_batch_with_dummy_image_gives_zero_grads_not_none():
    model, _ = build_vlm(tiny_model_config("llama"))
    inputs = batch()
    inputs["pixel_values"] = torch.zeros(1, 3, 32, 32)
    inputs["image_spans"] = torch.tensor([[-1, 0, N]])
    model(**inputs)["loss"].backward()
    for name, p in model.projector.named_parameters():
        assert p.grad is not None, name
        assert torch.count_nonzero(p.grad) == 0, name
    assert model.vision.model.embeddings.patch_embedding.weight.grad is not None
    assert model.llm.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0


def test_image_batch_trains_projector():
    model, _ = build_vlm(tiny_model_config("llama"))
    inputs = batch()
    inputs["labels"][:, 3:] = inputs["input_ids"][:, 3:]  # labels right after the first image
    model(**inputs)["loss"].backward()
    assert model.projector[0].weight.grad.abs().sum() > 0


def test_bad_spans_rejected():
    model, _ = build_vlm(tiny_model_config("llama"))
    inputs = batch()
    with pytest.raises(ValueError, match="must be 16 tokens long"):
        model(**{**inputs, "image_spans": torch.tensor([[0, 2, 8], [0, 20, N], [1, 8, N], [-1, 0, N]])})
    with pytest.raises(ValueError, match="outside the sequence"):
        model(**{**inputs, "image_spans": torch.tensor([[0, 30, N], [0, 2, N], [1, 8, N], [-1, 0, N]])})
    with pytest.raises(ValueError, match=r"image_spans must be \(4, 3\)"):
        model(**{**inputs, "image_spans": torch.tensor([[0, 2, N]])})


def test_projector_output_cast_to_llm_dtype():
    fp32, _ = build_vlm(tiny_model_config("llama"))
    bf16, _ = build_vlm(tiny_model_config("llama"), dtype=torch.bfloat16)
    model = VisionLanguageModel(fp32.vision, fp32.projector, bf16.llm)
    inputs = batch()
    assert model.encode_images(inputs["pixel_values"]).dtype == torch.bfloat16
    out = model(**inputs)
    assert out["logits"].dtype == torch.bfloat16 and torch.isfinite(out["loss"])


def test_gradient_checkpointing_flag_reaches_runner():
    model, _ = build_vlm(tiny_model_config("llama", gradient_checkpointing=True))
    assert model.runner.gradient_checkpointing and model.runner.llm is model.llm


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_generate_is_greedy_consistent_with_forward(name):
    model, tokenizer = build_vlm(tiny_model_config(name))
    model.eval()
    inputs = batch("left")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    new = model.generate(ids, mask, inputs["pixel_values"], inputs["image_spans"], max_new_tokens=5)
    assert new.shape == (B, 5)
    # Teacher-forcing the generated tokens, each must be the argmax of the forward logits before it.
    full_ids = torch.cat([ids, new], 1)
    full_mask = torch.cat([mask, torch.ones_like(new)], 1)
    with torch.no_grad():
        out = model(full_ids, full_mask, pixel_values=inputs["pixel_values"], image_spans=inputs["image_spans"])
    logits = out["logits"]
    assert torch.equal(logits[:, T - 1 : -1].argmax(-1), new)


def test_generate_stops_at_eos_and_pads():
    model, tokenizer = build_vlm(tiny_model_config("llama"))
    model.eval()
    inputs = batch("left")
    args = (inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], inputs["image_spans"])
    free = model.generate(*args, max_new_tokens=4).tolist()
    eos, pad = free[0][0], tokenizer.pad_token_id  # row 0 emits this first: make it end-of-sequence
    stopped = model.generate(*args, max_new_tokens=4, eos_token_id=eos, pad_token_id=pad).tolist()
    # Greedy tokens are unchanged up to each row's first eos, padding after it; generation ends when
    # every row has stopped.
    expected, ends = [], []
    for row in free:
        end = row.index(eos) + 1 if eos in row else len(row)
        expected.append(row[:end] + [pad] * (len(row) - end))
        ends.append(end)
    assert stopped == [row[: max(ends)] for row in expected]
    assert stopped[0][0] == eos and all(t == pad for t in stopped[0][1:])


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_supervised_positions_loss_equals_full_logits_loss(name):
    """return_logits=False runs the head on supervised positions only: same loss, same gradients."""
    torch.manual_seed(0)
    model, _ = build_vlm(tiny_model_config(name))
    inputs = batch()
    full = model(**inputs)
    full["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    lean = model(**inputs, return_logits=False)
    lean["loss"].backward()
    assert lean["logits"] is None and lean["num_label_tokens"] == full["num_label_tokens"] > 0
    torch.testing.assert_close(lean["loss"], full["loss"], rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6)
    inputs["labels"][:] = -100
    empty = model(**inputs, return_logits=False)
    assert empty["num_label_tokens"] == 0 and empty["loss"].item() == 0.0
