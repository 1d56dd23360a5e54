"""Read a Hugging Face `LlavaForConditionalGeneration` folder (llava-hf/* checkpoints, `vregion export` output) as
vregion weights and config: the inverse of `hf_export`, exact.

The mapping:
- vision tower: the same CLIP/SigLIP model; `vision_feature_layer` becomes `model.vision.feature_layer`. vregion
  drops CLIP's CLS token and keeps every SigLIP token, i.e. strategy "default" for CLIP and "full" for SigLIP;
  the other pairings (and a list of feature layers) are refused.
- projector: `linear_1` / GELU / `linear_2` is mlp2x_gelu (inner width = the LLM's); activation "linear" with an
  identity `linear_2` (what `vregion export` writes for a linear projector) is `linear`. No bias (
  `multimodal_projector_bias: false`) loads as zero biases, exact. Other activations are refused.
- LLM: the decoder and head as they are, vocabulary included (the `<image>` token keeps its row); the families
  vregion's runner is tested on (`llava_format.HF_TEXT`).
- images: the processor's mode (LlavaImageProcessor `do_pad` -> pad, centre crop -> crop, else squash).
- chat template: inferred by rendering, or given (`import_source.infer_template`).
Weights load through `from_pretrained` (safetensors, or `.bin` with weights_only); remote code is never trusted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import AutoTokenizer, LlavaForConditionalGeneration

from vregion.models.import_source import ANYRES_TYPES, Imported, ImportRefused, infer_template, vision_type, with_pad_token
from vregion.models.llava_format import HF_TEXT, HF_VISION

PREPROCESSOR = "preprocessor_config.json"


def check_config(config: dict, where: str) -> None:
    """Refuse, naming what was found, a LLaVA config vregion cannot represent (before any weight is read)."""
    model_type = config.get("model_type")
    if model_type in ANYRES_TYPES:
        raise ImportRefused(f"{where} is {model_type} (AnyRes image tiling with an image_newline embedding): vregion "
                            "encodes one square image per <image> and cannot represent it")
    if model_type != "llava":
        raise ImportRefused(f"{where}: model_type {model_type!r} (architectures {config.get('architectures')}) is not "
                            "a Hugging Face LLaVA (llava)")
    vision = vision_type((config.get("vision_config") or {}).get("model_type", "clip_vision_model"), where)
    text = (config.get("text_config") or {}).get("model_type", "llama")
    if text not in HF_TEXT:
        raise ImportRefused(f"{where}: LLM family {text!r} is not among the imported ones ({', '.join(HF_TEXT)})")
    layer = config.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise ImportRefused(f"{where}: vision_feature_layer {layer!r} concatenates several layers; vregion reads one")
    strategy = config.get("vision_feature_select_strategy", "default")
    if strategy != HF_VISION[vision][0]:
        raise ImportRefused(f"{where}: vision_feature_select_strategy {strategy!r} with a {vision} tower; vregion "
                            f"reads {vision} with {HF_VISION[vision][0]!r} only")


def image_aspect(folder: Path, notes: list[str]) -> str:
    """The processor's preprocessing as a vregion image_aspect (squash when no processor is saved)."""
    if not (folder / PREPROCESSOR).is_file():
        notes.append(f"no {PREPROCESSOR}: images are squashed (set model.vision.image_aspect otherwise)")
        return "squash"
    proc = json.loads((folder / PREPROCESSOR).read_text())
    if proc.get("do_pad"):
        return "pad"
    if proc.get("do_center_crop", False) and "shortest_edge" in (proc.get("size") or {}):
        return "crop"
    return "squash"


def projector_state(hf: LlavaForConditionalGeneration, where: str) -> tuple[dict[str, torch.Tensor], str]:
    """(vregion projector weights without prefix, projector type) of LLaVA's multi_modal_projector."""
    proj = hf.model.multi_modal_projector
    act = hf.config.projector_hidden_act
    first, last = proj.linear_1, proj.linear_2

    def bias(linear):  # multimodal_projector_bias: false -> a zero bias, the same map
        return linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features)

    if act == "gelu":
        return {"0.weight": first.weight, "0.bias": bias(first), "2.weight": last.weight, "2.bias": bias(last)}, \
            "mlp2x_gelu"
    identity = torch.eye(last.in_features, dtype=last.weight.dtype)
    if act == "linear" and torch.equal(last.weight, identity) and not bias(last).any():
        return {"weight": first.weight, "bias": bias(first)}, "linear"
    raise ImportRefused(f"{where}: projector activation {act!r}" + (" with a linear_2 that is not the identity"
                        if act == "linear" else "") + "; vregion imports gelu (mlp2x_gelu) and linear + identity")


def read_hf_llava(folder: str | Path, template: Optional[str] = None, dtype: Any = "auto") -> Imported:
    """A Hugging Face LLaVA folder as vregion weights and config (see the module docstring).

    Args:
        template: vregion chat template name; None infers it from the tokenizer's chat template.
        dtype: passed to `from_pretrained` ("auto" keeps the stored dtype, so a re-export is bit-exact).
    Raises:
        ImportRefused: anything that cannot map, naming what was found.
    """
    folder = Path(folder)
    where = str(folder)
    config = json.loads((folder / "config.json").read_text())
    check_config(config, where)
    notes: list[str] = []
    tokenizer = with_pad_token(AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False))
    template, note = infer_template(tokenizer, template, where)
    notes.append(note)
    hf = LlavaForConditionalGeneration.from_pretrained(str(folder), dtype=dtype, trust_remote_code=False)
    projector, projector_type = projector_state(hf, where)
    vision_cfg, text_cfg = hf.config.vision_config, hf.config.text_config
    state = {f"vision.model.{k}": v for k, v in hf.model.vision_tower.state_dict().items()}
    state |= {f"projector.{k}": v for k, v in projector.items()}
    state |= {f"llm.model.{k}": v for k, v in hf.model.language_model.state_dict().items()}
    state |= {f"llm.lm_head.{k}": v for k, v in hf.lm_head.state_dict().items()}
    # LLaVA ties through its own config; the vregion LLM ties by the text config it is built from.
    text_cfg.tie_word_embeddings = bool(getattr(hf.config, "tie_word_embeddings", False))
    model = {
        "vision": {"type": vision_type(vision_cfg.model_type, where), "feature_layer": hf.config.vision_feature_layer,
                   "image_aspect": image_aspect(folder, notes)},
        "projector": {"type": projector_type},
        "template": template,
    }
    return Imported(state, model, vision_cfg, text_cfg, hf.generation_config, tokenizer, "hf-llava", notes)
