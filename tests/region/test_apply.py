"""apply_region: exactly the right parameters train, LoRA lands only on the region, outputs behave."""

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vregion.config import LoraConfig, RegionConfig
from vregion.region import apply_region, is_lora_param, lora_layers, merge_lora
from vregion.region.lora import LORA_TARGETS, lora_module_names

from .tiny import DEPTH, VOCAB

SMALL_LORA = LoraConfig(r=4, alpha=8, dropout=0.05)


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def names_under(model, prefix):
    return {n for n, _ in model.named_parameters() if n.startswith(prefix)}


def region_params(model, layers):
    return set().union(*(names_under(model, f"llm.model.layers.{i}.") for i in layers))


def lm_step(model, input_ids, params, lr=0.5):
    """One SGD step of next-token loss on `params`."""
    opt = torch.optim.SGD(params, lr=lr)
    logits = model.llm(input_ids, use_cache=False).logits  # (B, T, V)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), input_ids[:, 1:].reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad()


def record_layers(model, input_ids):
    """Per decoder layer: its positional/keyword inputs and its output hidden states on `input_ids`."""
    records, hooks = {}, []
    for i, layer in enumerate(model.llm.model.layers):
        hooks.append(layer.register_forward_pre_hook(
            lambda m, a, k, i=i: records.__setitem__(i, [a, k, None]), with_kwargs=True))
        hooks.append(layer.register_forward_hook(
            lambda m, a, k, out, i=i: records[i].__setitem__(2, out[0] if isinstance(out, tuple) else out),
            with_kwargs=True))
    with torch.no_grad():
        model.llm(input_ids, use_cache=False)
    for h in hooks:
        h.remove()
    return records


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_full_mode_trains_exactly_region_layers_and_projector(build_vlm, family):
    model = build_vlm(family)
    plan = apply_region(model, RegionConfig(strategy="uniform", count=2, mode="full"))
    assert plan.layers == [1, 7]
    expected_region = region_params(model, [1, 7])
    # 7 linear weights + 2 norms per layer, and q/k/v biases in qwen2
    assert len(expected_region) == 2 * (12 if family == "qwen2" else 9)
    assert trainable(model) == expected_region | names_under(model, "projector.")
    assert set(plan.trainable["region"]) == expected_region
    assert set(plan.trainable["projector"]) == names_under(model, "projector.")
    for comp in ("vision", "layers", "embeddings", "norm", "lm_head", "other"):
        assert plan.trainable[comp] == [], comp
    assert (plan.strategy, plan.mode, plan.num_layers, plan.lora_modules) == ("uniform", "full", DEPTH, [])
    assert not lora_module_names(model)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_lora_mode_only_region_adapters_train_and_output_is_unchanged(build_vlm, input_ids, family):
    model = build_vlm(family, tied=family == "gemma3")
    before = model.llm(input_ids, use_cache=False).logits
    plan = apply_region(model, RegionConfig(strategy="list", layers=[2, 5], mode="lora", lora=SMALL_LORA))

    assert plan.layers == [2, 5]
    expected_modules = {
        f"llm.model.layers.{i}.{part}.{t}"
        for i in (2, 5)
        for part, targets in (("self_attn", LORA_TARGETS[:4]), ("mlp", LORA_TARGETS[4:]))
        for t in targets
    }
    assert set(plan.lora_modules) == expected_modules
    assert lora_layers(model) == [2, 5]
    lora_names = {n for n, _ in model.named_parameters() if is_lora_param(n)}
    assert len(lora_names) == 2 * 7 * 2  # A and B per linear
    assert all(n.split(".")[3] in ("2", "5") for n in lora_names)
    assert trainable(model) == lora_names | names_under(model, "projector.")
    assert set(plan.trainable["region"]) == lora_names
    # Frozen base weights keep their place in the tree, behind `base_layer`.
    assert not model.llm.model.layers[2].self_attn.q_proj.base_layer.weight.requires_grad
    assert all(b.abs().sum() == 0 for n, b in model.named_parameters() if "lora_B" in n)

    after = model.llm(input_ids, use_cache=False).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    # Injected modules (LoRA dropout) follow the model's eval mode instead of starting in train mode.
    assert not any(m.training for m in model.modules())


def test_lora_step_changes_only_region_layer_outputs(build_vlm, input_ids):
    model = build_vlm("llama")
    apply_region(model, RegionConfig(strategy="uniform", count=2, mode="lora", lora=SMALL_LORA))
    before = record_layers(model, input_ids)
    lora_params = [p for n, p in model.named_parameters() if is_lora_param(n)]
    lm_step(model, input_ids, lora_params)

    changed = []
    with torch.no_grad():
        for i, layer in enumerate(model.llm.model.layers):
            args, kwargs, out = before[i]
            new = layer(*args, **kwargs)
            new = new[0] if isinstance(new, tuple) else new
            if not torch.allclose(new, out, atol=1e-6):
                changed.append(i)
    assert changed == [1, 7]


def test_strategy_none_trains_projector_only(build_vlm):
    model = build_vlm()
    plan = apply_region(model, RegionConfig(strategy="none", mode="lora"))
    assert plan.layers == []
    assert trainable(model) == names_under(model, "projector.")
    assert not lora_module_names(model)  # no region, no adapters


def test_strategy_none_with_vision_flag(build_vlm):
    model = build_vlm()
    apply_region(model, RegionConfig(strategy="none", train_vision=True))
    assert trainable(model) == names_under(model, "projector.") | names_under(model, "vision.")


def test_strategy_all_full_trains_whole_llm(build_vlm):
    model = build_vlm()
    plan = apply_region(model, RegionConfig(strategy="all", mode="full"))
    assert plan.layers == list(range(DEPTH))
    assert trainable(model) == names_under(model, "llm.") | names_under(model, "projector.")
    assert plan.trainable["embeddings"] == ["llm.model.embed_tokens.weight"]
    assert plan.trainable["lm_head"] == ["llm.lm_head.weight"]
    assert plan.trainable["norm"] == ["llm.model.norm.weight"]
    assert plan.trainable["layers"] == []


def test_strategy_all_lora_puts_adapters_on_every_layer(build_vlm):
    model = build_vlm()
    apply_region(model, RegionConfig(strategy="all", mode="lora", lora=SMALL_LORA))
    assert lora_layers(model) == list(range(DEPTH))
    assert len(lora_module_names(model)) == 7 * DEPTH
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("llm.") and
                   not is_lora_param(n))


def test_tied_lm_head_trains_once_when_either_flag_is_set(build_vlm, caplog):
    model = build_vlm("qwen2", tied=True)
    assert model.llm.lm_head.weight is model.llm.model.embed_tokens.weight
    with caplog.at_level(logging.WARNING):
        plan = apply_region(model, RegionConfig(strategy="none", train_lm_head=True))
    assert plan.tied_lm_head
    assert model.llm.lm_head.weight.requires_grad
    assert plan.trainable["embeddings"] == ["llm.model.embed_tokens.weight"]
    assert plan.trainable["lm_head"] == []
    assert "tied" in caplog.text

    plan = apply_region(model, RegionConfig(strategy="none"))
    assert not model.llm.lm_head.weight.requires_grad
    assert plan.trainable["embeddings"] == []


def test_untied_lm_head_and_embeddings_are_separate(build_vlm):
    model = build_vlm("llama", tied=False)
    plan = apply_region(model, RegionConfig(strategy="none", train_lm_head=True))
    assert not plan.tied_lm_head
    assert plan.trainable["lm_head"] == ["llm.lm_head.weight"]
    assert not model.llm.model.embed_tokens.weight.requires_grad


@pytest.mark.parametrize("family, per_layer", [("llama", 2), ("gemma3", 6)])
def test_train_norms_covers_every_llm_norm(build_vlm, family, per_layer):
    model = build_vlm(family)
    plan = apply_region(model, RegionConfig(count=2, mode="lora", lora=SMALL_LORA, train_norms=True))
    norms = {n for n in names_under(model, "llm.") if "norm" in n}
    # llama: input + post-attention norm per layer; gemma3 adds q/k and pre/post-feedforward norms
    assert len(norms) == per_layer * DEPTH + 1
    assert norms <= trainable(model)
    assert plan.trainable["norm"] == ["llm.model.norm.weight"]
    assert len(plan.trainable["layers"]) == per_layer * (DEPTH - 2)  # norms of the non-region layers


def test_reapply_reuses_matching_adapters_and_refuses_others(build_vlm):
    model = build_vlm()
    cfg = RegionConfig(count=2, mode="lora", lora=SMALL_LORA)
    apply_region(model, cfg)
    plan = apply_region(model, cfg)
    assert len(plan.lora_modules) == 14  # not injected twice
    with pytest.raises(ValueError, match=r"already has LoRA adapters on layers \[1, 7\].*merge_lora"):
        apply_region(model, RegionConfig(count=2, mode="full"))
    with pytest.raises(ValueError, match="merge_lora"):
        apply_region(model, RegionConfig(strategy="bottom", count=2, mode="lora", lora=SMALL_LORA))
    with pytest.raises(ValueError, match="merge_lora"):  # same layers, other rank
        apply_region(model, RegionConfig(count=2, mode="lora", lora=LoraConfig(r=8, alpha=8)))
    merge_lora(model)
    plan = apply_region(model, RegionConfig(strategy="bottom", count=2, mode="full"))
    assert trainable(model) == region_params(model, [0, 1]) | names_under(model, "projector.")


def test_bad_configs(build_vlm):
    model = build_vlm()
    with pytest.raises(ValueError, match="unknown region mode 'qlora'; valid modes: full, lora"):
        apply_region(model, RegionConfig(mode="qlora"))
    with pytest.raises(ValueError, match="trains nothing"):
        apply_region(model, RegionConfig(strategy="none", train_projector=False))
    with pytest.raises(ValueError, match="valid strategies"):
        apply_region(model, RegionConfig(strategy="sparse"))

    class NoLLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.projector = nn.Linear(2, 2)

    with pytest.raises(ValueError, match="llm.model.layers"):
        apply_region(NoLLM(), RegionConfig())
