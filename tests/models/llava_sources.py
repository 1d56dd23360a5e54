"""Foreign checkpoints built by transformers itself from tiny random configs: a Hugging Face LLaVA folder, the same
weights under LLaVA-1.5's original key names, and a pretrain-style mm_projector.bin (never vregion's export)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (AddedToken, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig,
                          LlavaConfig, LlavaForConditionalGeneration, Qwen2Config, SiglipVisionConfig)

from vregion.data.tokenizer import build_byte_tokenizer
from vregion.models.backbones import TINY_VIT_DEFAULTS
from vregion.models.llm import TINY_LLM_DEFAULTS

TEXT = {"llama": LlamaConfig, "qwen2": Qwen2Config}
VISION = {"clip": CLIPVisionConfig, "siglip": SiglipVisionConfig}


def tokenizer_with_image():
    tokenizer = build_byte_tokenizer()
    tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    return tokenizer


def hf_llava(folder: Path, vision: str = "clip", text: str = "llama", seed: int = 0,
             crop: bool = True) -> LlavaForConditionalGeneration:
    """LlavaForConditionalGeneration from tiny random configs, saved by transformers with tokenizer and processor."""
    torch.manual_seed(seed)
    tokenizer = tokenizer_with_image()
    # A wide initialisation (as configs/tiny.yaml) so logits vary by whole units, not by the 1e-5 the test checks.
    text_cfg = TEXT[text](**TINY_LLM_DEFAULTS, initializer_range=0.15, pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=VISION[vision](**TINY_VIT_DEFAULTS).to_dict() | {"model_type": f"{vision}_vision_model"},
                         text_config=text_cfg.to_dict(), image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default" if vision == "clip" else "full",
                         vision_feature_layer=-2, image_seq_length=16)
    model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    size = TINY_VIT_DEFAULTS["image_size"]
    resize = dict(size={"shortest_edge": size}, do_center_crop=True, crop_size={"height": size, "width": size}) \
        if crop else dict(size={"height": size, "width": size}, do_center_crop=False)
    CLIPImageProcessor(**resize).save_pretrained(folder)
    return model


def original_state(hf: LlavaForConditionalGeneration, with_tower: bool) -> dict[str, torch.Tensor]:
    """The model's weights under LLaVA-1.5's names (LlavaLlamaForCausalLM: model.*, model.mm_projector.0/2,
    model.vision_tower.vision_tower.*, lm_head), plus a rotary inv_freq buffer as older transformers saved."""
    state = {f"model.{k}": v for k, v in hf.model.language_model.state_dict().items()}
    state["lm_head.weight"] = hf.lm_head.weight
    projector = hf.model.multi_modal_projector
    for index, linear in ((0, projector.linear_1), (2, projector.linear_2)):
        state[f"model.mm_projector.{index}.weight"] = linear.weight
        state[f"model.mm_projector.{index}.bias"] = linear.bias
    if with_tower:
        state |= {f"model.vision_tower.vision_tower.{k}": v for k, v in hf.model.vision_tower.state_dict().items()}
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def save_tower(hf: LlavaForConditionalGeneration, folder: Path, random_weights: bool = False) -> Path:
    """The tower as its own Hugging Face folder (what mm_vision_tower names), its weights or random ones."""
    tower = CLIPVisionModel(hf.config.vision_config)
    if not random_weights:
        tower.load_state_dict(hf.model.vision_tower.state_dict())
    tower.save_pretrained(folder)
    return folder


def original_llava(hf: LlavaForConditionalGeneration, folder: Path, tower: Path, with_tower: bool = False,
                   **config_changes) -> Path:
    """An original-format LLaVA-1.5 folder: pytorch_model.bin, its llava_llama config.json and the tokenizer."""
    folder.mkdir(parents=True)
    torch.save(original_state(hf, with_tower), folder / "pytorch_model.bin")
    config = hf.config.text_config.to_dict() | {
        "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"], "mm_vision_tower": str(tower),
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": hf.config.vision_config.hidden_size, "mm_patch_merge_type": "flat",
        "image_aspect_ratio": "pad", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
        "tune_mm_mlp_adapter": False, "tokenizer_model_max_length": 2048, "tokenizer_padding_side": "right",
    } | config_changes
    (folder / "config.json").write_text(json.dumps(config))
    build_byte_tokenizer().save_pretrained(folder)  # LLaVA-1.5 splices images by index: no <image> token
    return folder


def projector_bin(hf: LlavaForConditionalGeneration, path: Path) -> Path:
    """A pretrain release's mm_projector.bin: model.mm_projector.* only."""
    state = {k: v for k, v in original_state(hf, False).items() if "mm_projector" in k}
    torch.save(state, path)
    return path
