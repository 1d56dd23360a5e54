"""The analytic plan: parameter and FLOP counts against hand computations, optimizer state against a built model."""

from __future__ import annotations

from pathlib import Path

import pytest

from vregion.config import Config, DeepSpeedConfig, LoraConfig, RegionConfig, load_config
from vregion.bench.plan import (
    known_gpu,
    memory_per_gpu,
    param_counts,
    peak_tflops,
    plan_rows,
    sample_flops,
    trainable_params,
)
from vregion.bench.shapes import PRESETS, LLMShape, VisionShape, VLMShape, shape_from_config
from vregion.bench.variant import Variant, parse_variant

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

TINY_YAML = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
# hidden 8, intermediate 16, 2 layers, 2 heads of 4, 1 kv head, vocab 10; a 100-parameter ViT of width 4, 4 tokens.
SMALL = VLMShape(LLMShape(hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1, vocab=10),
                 VisionShape(params=100, tokens=4, hidden=4, layers_run=1))


def test_param_counts_by_hand():
    # q 8*8 + k 8*4 + v 8*4 + o 8*8 + gate/up/down 3 * 8*16 = 64 + 32 + 32 + 64 + 384 = 576; + 2 norms of 8
    # projector mlp2x_gelu: (4*8 + 8) + (8*8 + 8) = 112; embeddings = lm_head = 10*8 = 80; final norm 8
    counts = param_counts(SMALL)
    assert counts == {"vision": 100, "projector": 112, "embeddings": 80, "layer": 592, "layers": 1184,
                      "norm": 8, "lm_head": 80, "total": 100 + 112 + 80 + 1184 + 8 + 80}
    lora = trainable_params(SMALL, RegionConfig(strategy="list", layers=[1], mode="lora", lora=LoraConfig(r=2)))
    # r * (in + out) per linear: 2 * (16 + 12 + 12 + 16 + 24 + 24 + 24) = 256, + projector
    assert (lora["region"], lora["total"]) == (256, 256 + 112)


def test_flops_by_hand():
    t = 6
    vision = 2 * 100 * (4 + 1) + 4 * (4 + 1) ** 2 * 4 * 1  # linears on 4 patches + CLS, attention of 1 layer
    proj = 2 * 112 * 4
    lin, attn = 2 * 576 * t, 4 * t * t * 2 * 4  # per layer: linears, attention scores + values (heads * hd = 8)
    head = 2 * 10 * 8 * t
    forward = vision + proj + 2 * (lin + attn) + head

    frozen_projector = Variant("r", RegionConfig(strategy="list", layers=[1], train_projector=False))
    f = sample_flops(SMALL, frozen_projector, t)
    assert f.forward == forward
    # nothing below layer 1 trains: layer 0 needs no backward, layer 1 only its weight gradient, head its input grad
    assert f.backward == lin + head

    trained_projector = Variant("r", RegionConfig(strategy="list", layers=[1]))
    f = sample_flops(SMALL, trained_projector, t, gradient_checkpointing=True)
    # projector weight grad; both layers' activation grads (attention 2x); layer 1's weight grad; head input grad
    assert f.backward == proj + 2 * (lin + 2 * attn) + lin + head
    assert f.recompute == 2 * (lin + attn)


def test_head_on_supervised_tokens_and_a_counted_vision_tower():
    t = 6
    region = Variant("r", RegionConfig(strategy="list", layers=[1], train_projector=False))
    every = sample_flops(SMALL, region, t)
    supervised = sample_flops(SMALL, region, t, head_tokens=1.5)
    # the head (2 * vocab 10 * hidden 8 per token) runs forward and input-gradient on 1.5 instead of 6 tokens
    assert every.forward - supervised.forward == 2 * 10 * 8 * (6 - 1.5)
    assert every.backward - supervised.backward == 2 * 10 * 8 * (6 - 1.5)
    # a tower with counted FLOPs (a conv net) replaces the ViT formula (1,100 here) and nothing else
    conv = VLMShape(SMALL.llm, VisionShape(params=100, tokens=4, hidden=4, layers_run=0, flops=5000.0))
    assert sample_flops(conv, region, t).forward - every.forward == 5000 - (2 * 100 * 5 + 4 * 25 * 4)


def test_gpu_peaks_from_device_names():
    assert [known_gpu(n) for n in ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H200",
                                   "NVIDIA A100-SXM4-80GB", "Tesla V100-SXM2-16GB")] == \
        ["h100", "h100-pcie", "h200", "a100", None]
    assert [peak_tflops(g) for g in ("h100", "H200", "a100", "h100-pcie", "123.5")] == [989, 989, 312, 756, 123.5]
    with pytest.raises(ValueError, match="unknown GPU 'v100'"):
        peak_tflops("v100")


def test_pooling_shortens_layers_from_k():
    shape = PRESETS["llava-1.5-7b"]
    base = parse_variant("region", RegionConfig())
    pooled = parse_variant("region@2/8", RegionConfig())
    t = 576 + 256
    a, b = sample_flops(shape, base, t), sample_flops(shape, pooled, t)
    lin = 2 * shape.llm.linear_params
    # layers 2..31 run on 256 + 72 tokens instead of 832 (LoRA-free, so linears are exactly params * tokens)
    attn = lambda n: 4 * n * n * 4096  # noqa: E731
    saved_fwd = 30 * (lin * (t - 328) + attn(t) - attn(328)) + 2 * 32000 * 4096 * (t - 328)
    assert a.forward - b.forward == pytest.approx(saved_fwd)


def test_adam_state_matches_the_built_tiny_model():
    from vregion.models import build_vlm
    from vregion.region import apply_region

    cfg = load_config(TINY_YAML).stage_configs()[-1]
    model, _ = build_vlm(cfg.model)
    apply_region(model, cfg.region)
    measured = sum(p.numel() for p in model.parameters() if p.requires_grad) * 8  # two fp32 Adam moments
    shape = shape_from_config(cfg.model)
    assert param_counts(shape)["total"] == sum(p.numel() for p in model.parameters())
    predicted = memory_per_gpu(shape, Variant("region", cfg.region), cfg.deepspeed, 1, 8, 64, False)
    assert predicted["adam_moments"] == measured
    # 2 of 8 layers (hidden 64, inter 128, 4 heads, 2 kv heads): 2 * (2*64*64 + 2*64*32 + 3*64*128 + 128)
    # + projector (32*64 + 64) + (64*64 + 64)
    assert measured == 8 * (2 * (8192 + 4096 + 24576 + 128) + 2112 + 4160)


def test_13b_region_lora_fits_80gb_and_full_does_not():
    cfg = Config()
    cfg.model.gradient_checkpointing = True
    cfg.train.micro_batch_size = 16
    cfg.region = RegionConfig(mode="lora", lora=LoraConfig(r=128, alpha=256, dropout=0.05))
    shape = PRESETS["llava-1.5-13b"]
    for stage in (2, 3):
        cfg.deepspeed = DeepSpeedConfig(zero_stage=stage, precision="bf16")
        rows = {r.variant: r for r in plan_rows(shape, cfg, n_gpus=1, peak=989.0)}
        assert rows["region-lora"].fits
        assert not rows["full"].fits
        # full fine-tuning: 16 bytes per trainable parameter alone exceed 80 GB
        assert rows["full"].memory["optimizer"] + rows["full"].memory["grads"] > 80e9


@pytest.mark.parametrize("image_size, tolerance", [(96, 2e-3), (160, 2e-3), (200, 0.15)])
def test_efficientnet_lite0_shape_matches_the_built_network(image_size, tolerance):
    """The plan's constants for the demo's tower equal a fresh count on the real (randomly initialised) network:
    exactly for sides that are multiples of 32, within 15% otherwise ("SAME" padding rounds each stage up)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vregion.bench.shapes import efficientnet_lite0_shape
    from vregion.models.efficientnet import build_lite0_network

    network = build_lite0_network(image_size, None).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        features = network.extract_features(torch.zeros(1, 3, image_size, image_size))
    shape = efficientnet_lite0_shape(image_size)
    assert shape.params == sum(p.numel() for p in network.parameters())
    assert (shape.tokens, shape.hidden) == (features.shape[2] * features.shape[3], features.shape[1])
    assert shape.forward_flops == pytest.approx(counter.get_total_flops(), rel=tolerance)


def test_siglip_tower_has_no_cls_token_and_matches_the_built_tower():
    from vregion.bench.shapes import vision_shape
    from vregion.models.backbones import build_vision_backbone

    cfg = load_config(TINY_YAML, ["model.vision.type=siglip"]).stage_configs()[-1]
    shape, tower = vision_shape(cfg.model), build_vision_backbone(cfg.model.vision)
    # 32 px / patch 8: 16 patch tokens and nothing else (a CLIP tower would also run a CLS token)
    assert (shape.tokens, shape.prefix, shape.hidden) == (16, 0, 32) == (tower.num_tokens, 0, tower.hidden_size)
    assert shape.params == sum(p.numel() for p in tower.parameters())
    assert shape.forward_flops == 2 * shape.params * 16 + 4 * 16**2 * 32 * 1  # attention of layer 1 of 2 (-2)


def test_bunny_plans_offline_from_built_in_hub_shapes(monkeypatch, capsys):
    """The Bunny recipe (SigLIP-so400m + Llama-3-8B hub ids) plans with the network cut off."""
    import socket

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel

    from vregion.bench.shapes import KNOWN_VISION
    from vregion.cli import main
    from vregion.config import resolve_config_path

    def no_network(*args, **kwargs):
        raise AssertionError("the plan opened a network connection")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    assert main(["bench", "bunny-llama-3-8b-v", "--plan", "--tokens-per-sample", "1000"]) == 0
    assert "1000 tokens/sample" in capsys.readouterr().out
    cfg = load_config(resolve_config_path("bunny-llama-3-8b-v")).stage_configs()[-1]
    shape = shape_from_config(cfg.model)
    # 384 px / patch 14: 27 x 27 = 729 patch tokens, no CLS token
    assert (shape.vision.tokens, shape.vision.prefix, shape.vision.hidden) == (729, 0, 1152)
    with torch.device("meta"):  # the built-in shapes against the HF models (no weights, no download)
        siglip = SiglipVisionModel(SiglipVisionConfig(num_attention_heads=16,
                                                      **KNOWN_VISION["google/siglip-so400m-patch14-384"]))
        llama = LlamaForCausalLM(LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                             num_attention_heads=32, num_key_value_heads=8, vocab_size=128256))
    counts = param_counts(shape)
    assert counts["vision"] == sum(p.numel() for p in siglip.parameters()) == 428_225_600
    assert counts["total"] - counts["vision"] - counts["projector"] == sum(p.numel() for p in llama.parameters())


def test_unknown_hub_ids_fail_clearly_and_local_configs_are_read(tmp_path, capsys):
    import json

    from vregion.cli import main
    from vregion.bench.shapes import LLMShape, llm_shape, vision_shape

    assert main(["bench", "llava-1.5-7b", "--plan", "model.llm.path=someorg/unknown-7b"]) == 2
    err = capsys.readouterr().err
    assert "model.llm.path 'someorg/unknown-7b'" in err and "config.json" in err and "never downloads" in err
    llm, clip = tmp_path / "llm", tmp_path / "clip"
    llm.mkdir(), clip.mkdir()
    (llm / "config.json").write_text(json.dumps(dict(model_type="llama", hidden_size=64, intermediate_size=128,
                                                     num_hidden_layers=2, num_attention_heads=4,
                                                     num_key_value_heads=2, vocab_size=1000)))
    # a whole CLIPModel's config: the vision fields sit under vision_config, unset ones take HF's defaults
    (clip / "config.json").write_text(json.dumps(dict(model_type="clip", vision_config=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8))))
    cfg = load_config(TINY_YAML, [f"model.llm.path={llm}", "model.llm.tiny=null", f"model.vision.path={clip}",
                                  "model.vision.tiny=null"]).stage_configs()[-1]
    assert llm_shape(cfg.model) == LLMShape(64, 128, 2, 4, 2, 1000, head_dim=16)
    tiny = load_config(TINY_YAML).stage_configs()[-1]
    assert vision_shape(cfg.model) == vision_shape(tiny.model)  # same CLIP fields as tiny.yaml's random tower


def test_plan_with_a_length_profile_charges_each_data_mode_its_padding():
    """--plan --profile llava-665k: the 7B recipe's padded rows pay for padding, packed ones far less; the
    same real tokens are trained either way, so wall time scales with computed positions."""
    from vregion.bench.padding import estimate_padding, profile_lengths
    from vregion.bench.plan import plan_rows, plan_text

    cfg = load_config(CONFIGS / "llava-1.5-7b.yaml").stage_configs()[-1]
    shape = shape_from_config(cfg.model)
    estimate = estimate_padding(profile_lengths("llava-665k", shape.vision.tokens, cfg.data.max_length),
                                cfg.train.micro_batch_size, cfg.data.max_length)
    assert 0.2 < estimate.share(None) < 0.6  # LLaVA-665K lengths padded in random batches of 16
    assert estimate.share("packed") < estimate.share(None) / 2
    rows = {r.variant: r for r in plan_rows(shape, cfg, 8, 989.0, variants=("full", "full+packed"),
                                            padding=estimate.cost, tokens_per_sample=800)}
    assert rows["full"].hours > rows["full+packed"].hours * 1.3
    assert rows["full"].trainable == rows["full+packed"].trainable
    text = plan_text(cfg, n_gpus=8, profile="llava-665k")
    assert "profile llava-665k" in text and "| region@2/8+packed |" in text
    with pytest.raises(ValueError, match="no length distribution"):
        plan_text(cfg, profile="shapes")
