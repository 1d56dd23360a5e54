"""Read LLaVA-1.5's own checkpoints (`LlavaLlamaForCausalLM`) and its pretrain `mm_projector.bin` as vregion weights.

LLaVA's names, from its released code: the LLM is a Llama under `model.*` / `lm_head.*`; the projector is
`model.mm_projector` built from `mm_projector_type` (`linear`: one nn.Linear, `weight`/`bias`; `mlpNx_gelu`: an
nn.Sequential of Linear, GELU, Linear, ... so `0.*`, `2.*`, ...); the tower is `model.vision_tower.vision_tower`
(a CLIPVisionModel loaded from `mm_vision_tower`, often not saved with the checkpoint), read at
`mm_vision_select_layer` with `mm_vision_select_feature` `patch` (CLS dropped). `image_aspect_ratio: pad` is
LLaVA-1.5's expand-to-square; without it LLaVA uses the tower's CLIP processor (shortest side + centre crop).
A pretrain release's `mm_projector.bin` holds `model.mm_projector.*` only (LLaVA keeps what follows `mm_projector.`).
Refused, naming what was found: AnyRes / spatial patch merging and `image_newline` (LLaVA-NeXT), `cls_patch`
features, image start/end tokens, projector types other than linear and mlp2x_gelu, towers other than CLIP/SigLIP.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import torch
from transformers import (AutoConfig, AutoTokenizer, CLIPVisionConfig, GenerationConfig, LlamaConfig, MistralConfig,
                          SiglipVisionConfig)

from vregion.models.import_source import Imported, ImportRefused, infer_template, vision_type, with_pad_token
from vregion.models.safe_load import read_folder, read_tensors

PROJECTOR_KEY = "mm_projector."
TOWER_PREFIX = "model.vision_tower.vision_tower."
LLM_TYPES = {"llava_llama": LlamaConfig, "llava_mistral": MistralConfig}
PROJECTOR_TYPES = ("linear", "mlp2x_gelu")
VISION_CONFIGS = {"clip": CLIPVisionConfig, "siglip": SiglipVisionConfig}
DEFAULT_TEMPLATE = "vicuna-v1"  # LLaVA-1.5's `llava_v1` conversation is Vicuna v1's format


def is_original(config: dict) -> bool:
    """Whether a config.json is LLaVA's own format (an `mm_vision_tower`, or a llava_llama-like model_type);
    Hugging Face's llava / llava_next / ... are not."""
    return "mm_vision_tower" in config or config.get("model_type") in LLM_TYPES


def projector_type_of(keys: list[str], where: str) -> str:
    """The projector type a set of LLaVA projector keys (prefix stripped) describes, or ImportRefused."""
    layers = sorted({int(k.split(".")[0]) for k in keys if k.split(".")[0].isdigit()})
    if set(keys) == {"weight", "bias"}:
        return "linear"
    if layers == [0, 2] and len(keys) == 4:
        return "mlp2x_gelu"
    raise ImportRefused(f"{where}: projector weights {sorted(keys)} are no linear or mlp2x_gelu projector "
                        f"(valid: {', '.join(PROJECTOR_TYPES)})")


def projector_weights(state: dict[str, torch.Tensor], where: str) -> tuple[dict[str, torch.Tensor], str]:
    """(projector weights under vregion's projector names, type) from any LLaVA state dict holding
    `...mm_projector.*` keys (a full checkpoint or a pretrain `mm_projector.bin`)."""
    weights = {k.split(PROJECTOR_KEY, 1)[1]: v for k, v in state.items() if PROJECTOR_KEY in k}
    if not weights:
        raise ImportRefused(f"{where}: no `{PROJECTOR_KEY}*` weights (found e.g. {sorted(state)[:4]})")
    return weights, projector_type_of(list(weights), where)


def read_projector_file(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """A pretrain release's mm_projector.bin (or .safetensors) as (vregion projector weights, type); a pickle that
    would run code is refused before anything runs (`safe_load`)."""
    return projector_weights(read_tensors(path), str(path))


def check_config(config: dict, where: str) -> str:
    """The projector type of a LLaVA config, after refusing what vregion cannot represent (naming it)."""
    merge, aspect = config.get("mm_patch_merge_type", "flat"), config.get("image_aspect_ratio", "square")
    if merge != "flat" or aspect == "anyres":
        raise ImportRefused(f"{where}: mm_patch_merge_type {merge!r}, image_aspect_ratio {aspect!r} is LLaVA-NeXT's "
                            "AnyRes tiling with an image_newline embedding; vregion encodes one square image")
    if config.get("mm_vision_select_feature", "patch") != "patch":
        raise ImportRefused(f"{where}: mm_vision_select_feature {config['mm_vision_select_feature']!r} keeps the CLS "
                            "token; vregion reads patch features only ('patch')")
    if config.get("mm_use_im_start_end") or config.get("mm_use_im_patch_token"):
        raise ImportRefused(f"{where}: mm_use_im_start_end / mm_use_im_patch_token add image marker tokens that "
                            "vregion's templates do not write")
    projector = config.get("mm_projector_type", "linear")
    if projector not in PROJECTOR_TYPES:
        raise ImportRefused(f"{where}: mm_projector_type {projector!r} is not supported (valid: "
                            f"{', '.join(PROJECTOR_TYPES)})")
    model_type = config.get("model_type")
    if model_type not in LLM_TYPES:
        raise ImportRefused(f"{where}: model_type {model_type!r} is not an imported LLaVA language model "
                            f"({', '.join(LLM_TYPES)})")
    return projector


def _text_config(config: dict):
    """The LLM's own config: LLaVA's keys (mm_*, image_*, tokenizer_*, ...) dropped, the plain causal-LM class."""
    llava_only = re.compile(r"^(mm_|image_|tokenizer_|tune_|freeze_|unfreeze_|use_mm_|s2)")
    kept = {k: v for k, v in config.items() if not llava_only.match(k) and k not in ("model_type", "architectures")}
    cls = LLM_TYPES[config["model_type"]]
    text = cls(**kept)
    text.architectures = [cls.__name__.replace("Config", "ForCausalLM")]
    return text


def read_llava(folder: str | Path, template: Optional[str] = None, vision: Optional[str] = None) -> Imported:
    """An original LLaVA-1.5 folder as vregion weights and config.

    Args:
        template: vregion chat template (default vicuna-v1, LLaVA-1.5's; inferred first if the tokenizer has one).
        vision: the tower's Hugging Face folder (default: `mm_vision_tower`); its config is always needed, its
            weights only when the checkpoint does not hold the tower.
    """
    folder = Path(folder)
    where = str(folder)
    config = json.loads((folder / "config.json").read_text())
    projector_type = check_config(config, where)
    tower = vision or config["mm_vision_tower"]
    try:
        tower_type = vision_type(AutoConfig.from_pretrained(tower, trust_remote_code=False).model_type, where)
    except (OSError, ValueError) as e:
        if isinstance(e, ImportRefused):
            raise
        raise ImportRefused(f"{where}: cannot read the vision tower {tower!r} (mm_vision_tower); pass --vision with "
                            f"its local Hugging Face folder ({str(e).splitlines()[0]})") from None
    vision_cfg = VISION_CONFIGS[tower_type].from_pretrained(tower)  # a full CLIP config yields its vision part
    state = read_folder(folder)
    if any(k.endswith("image_newline") for k in state):
        raise ImportRefused(f"{where} holds an image_newline embedding (LLaVA-NeXT AnyRes); vregion cannot use it")
    projector, found = projector_weights(state, where)
    if found != projector_type:
        raise ImportRefused(f"{where}: mm_projector_type {projector_type!r} but the weights are a {found} projector")
    out = {f"projector.{k}": v for k, v in projector.items()}
    out |= {f"vision.model.{k[len(TOWER_PREFIX):]}": v for k, v in state.items() if k.startswith(TOWER_PREFIX)}
    unmapped = []
    for key, value in state.items():
        if PROJECTOR_KEY in key or key.startswith(TOWER_PREFIX) or key.endswith("rotary_emb.inv_freq"):
            continue  # inv_freq: a buffer older transformers saved; it is recomputed from the config
        if key.startswith(("model.", "lm_head.")):
            out[f"llm.{key}"] = value
        else:
            unmapped.append(key)
    if unmapped:
        raise ImportRefused(f"{where}: weights outside LLaVA's layout: {unmapped[:5]}")
    tokenizer = with_pad_token(AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False))
    notes = []
    if template is None and not getattr(tokenizer, "chat_template", None):
        template, note = DEFAULT_TEMPLATE, f"chat template {DEFAULT_TEMPLATE} (LLaVA-1.5's llava_v1; --template to change)"
    else:
        template, note = infer_template(tokenizer, template, where)
    notes.append(note)
    if not any(k.startswith("vision.") for k in out):
        notes.append(f"the checkpoint holds no vision tower: its weights come from {tower}")
    aspect = "pad" if config.get("image_aspect_ratio") == "pad" else "crop"
    generation = GenerationConfig.from_pretrained(str(folder)) if (folder / "generation_config.json").is_file() \
        else None
    model = {
        "vision": {"type": tower_type, "feature_layer": config.get("mm_vision_select_layer", -2), "image_aspect": aspect},
        "projector": {"type": projector_type},
        "template": template,
    }
    return Imported(out, model, vision_cfg, _text_config(config), generation, tokenizer, "llava", notes, str(tower))
