"""merge_lora: trained adapters fold into the base linears, outputs and parameter names are preserved."""

import torch

from vregion.config import LoraConfig, RegionConfig
from vregion.region import apply_region, lora_layers, merge_lora


def test_merge_preserves_outputs_and_restores_plain_names(build_vlm, input_ids):
    model = build_vlm("qwen2")
    plain_keys = list(model.state_dict())
    original = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = RegionConfig(strategy="list", layers=[0, 6], mode="lora", lora=LoraConfig(r=4, alpha=8))
    apply_region(model, cfg)
    with torch.no_grad():  # stand-in for training: non-zero B so the adapters matter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    adapted = model.llm(input_ids, use_cache=False).logits

    assert merge_lora(model) == 14
    merged = model.llm(input_ids, use_cache=False).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(adapted, original_logits(build_vlm, input_ids), atol=1e-3)

    assert list(model.state_dict()) == plain_keys
    assert lora_layers(model) == []
    assert not hasattr(model.llm, "peft_config")
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, original[k])}
    assert changed == {
        f"llm.model.layers.{i}.{part}.{t}_proj.weight"
        for i in (0, 6)
        for part, ts in (("self_attn", "qkvo"), ("mlp", ("gate", "up", "down")))
        for t in ts
    }


def original_logits(build_vlm, input_ids):
    return build_vlm("qwen2").llm(input_ids, use_cache=False).logits


def test_merge_without_adapters_is_a_no_op(build_vlm):
    model = build_vlm()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert merge_lora(model) == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
