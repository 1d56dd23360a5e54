"""build_param_groups and component_of: learning rates, weight decay, trainable parameters only."""

import pytest

from vregion.config import LoraConfig, OptimConfig, RegionConfig
from vregion.region import apply_region, build_param_groups, component_of


@pytest.mark.parametrize(
    "name, component",
    [
        ("vision.0.weight", "vision"),
        ("projector.2.bias", "projector"),
        ("llm.model.layers.3.mlp.up_proj.weight", "layers"),
        ("llm.model.layers.12.self_attn.q_proj.lora_B.default.weight", "layers"),
        ("llm.model.embed_tokens.weight", "embeddings"),
        ("llm.model.norm.weight", "norm"),
        ("llm.lm_head.weight", "lm_head"),
        ("module.llm.model.norm.weight", "norm"),  # DeepSpeed engine prefix
        ("module._orig_mod.projector.0.weight", "projector"),
        ("llm.model.rotary_emb.foo", "other"),
        ("llm.model.layersX.1.weight", "other"),
    ],
)
def test_component_of(name, component):
    assert component_of(name) == component


def by_name(groups):
    return {g["name"]: g for g in groups}


def param_names(model, group):
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_full_mode_groups_lr_and_decay(build_vlm):
    model = build_vlm("qwen2")  # q/k/v biases exercise the bias rule
    apply_region(model, RegionConfig(strategy="list", layers=[3], mode="full"))
    groups = build_param_groups(model, OptimConfig(lr=2e-5, projector_lr=1e-3, weight_decay=0.1))
    g = by_name(groups)
    assert [x["name"] for x in groups] == ["projector", "projector_no_decay", "llm", "llm_no_decay"]
    assert (g["projector"]["lr"], g["projector_no_decay"]["lr"]) == (1e-3, 1e-3)
    assert (g["llm"]["lr"], g["llm_no_decay"]["lr"]) == (2e-5, 2e-5)
    assert (g["projector"]["weight_decay"], g["llm"]["weight_decay"]) == (0.1, 0.1)
    assert (g["projector_no_decay"]["weight_decay"], g["llm_no_decay"]["weight_decay"]) == (0.0, 0.0)

    layer = "llm.model.layers.3."
    assert param_names(model, g["llm_no_decay"]) == {
        layer + s
        for s in ("input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.bias",
                  "self_attn.k_proj.bias", "self_attn.v_proj.bias")
    }
    assert param_names(model, g["llm"]) == {
        layer + f"{part}.{x}_proj.weight"
        for part, xs in (("self_attn", "qkvo"), ("mlp", ("gate", "up", "down")))
        for x in xs
    }
    assert param_names(model, g["projector"]) == {"projector.0.weight", "projector.2.weight"}
    assert param_names(model, g["projector_no_decay"]) == {"projector.0.bias", "projector.2.bias"}


def test_groups_hold_every_trainable_param_once_and_nothing_frozen(build_vlm):
    model = build_vlm("qwen2", tied=True)
    apply_region(model, RegionConfig(count=2, mode="full", train_lm_head=True, train_vision=True))
    groups = build_param_groups(model, OptimConfig(lr=1e-4))
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    g = by_name(groups)
    assert g["projector"]["lr"] == 1e-4  # projector_lr unset: falls back to lr
    assert param_names(model, g["vision_no_decay"]) == {"vision.0.bias", "vision.1.weight", "vision.1.bias"}
    assert "llm.model.embed_tokens.weight" in param_names(model, g["llm"])  # the tied tensor, once


def test_lora_params_decay_and_empty_groups_are_dropped(build_vlm):
    model = build_vlm("llama")
    apply_region(model, RegionConfig(count=1, mode="lora", lora=LoraConfig(r=2, alpha=4),
                                     train_projector=False))
    groups = build_param_groups(model, OptimConfig(weight_decay=0.05))
    assert [g["name"] for g in groups] == ["llm"]
    assert groups[0]["weight_decay"] == 0.05
    names = param_names(model, groups[0])
    assert len(names) == 14 and all(".lora_" in n for n in names)
