"""Export a vregion checkpoint as a Hugging Face LLaVA folder (`LlavaForConditionalGeneration` + processor).

The mapping, and why it is exact:
- vision tower: the same HF CLIP/SigLIP model; LLaVA reads `hidden_states[vision_feature_layer]` like
  `HFViTBackbone`, and strategy "default" drops the CLS token (CLIP), "full" keeps every token (SigLIP has none).
  A resolution other than the tower's own (vregion interpolates position embeddings on the fly) is baked in:
  the tower's own bicubic interpolation is run once and stored as the new, larger position table.
- projector: mlp2x_gelu -> linear_1 / GELU / linear_2. A narrower inner width (VPG transfer keeps the source
  LLM's) is zero-padded, exact since GELU(0) = 0. `linear` has no second layer: it becomes linear_1 with an
  identity activation and an identity linear_2 (an extra D x D matrix, exact in floating point).
  A wider inner width than the LLM's cannot be expressed and is refused.
- LLM: the decoder and head as they are. The `<image>` token is added to the tokenizer; when it falls outside
  the vocabulary, embeddings and head grow to the next multiple of 64 with mean rows (a mean head row's
  logit is the mean of the real logits, so greedy decoding never picks a padding token).
- Images: the processor preprocesses in the checkpoint's `image_aspect` mode (squash, crop, or LLaVA-1.5's pad via
  LlavaImageProcessor's `do_pad`), as vregion's ImageProcessor does.
- Prompt: the tokenizer and processor get a Jinja chat template built from the checkpoint's vregion template, so
  `processor.apply_chat_template(...)` gives the training prompt's ids (BOS and system text included).
- Visual-token compression (LLaVolta pooling inside the LLM) has no LLaVA counterpart: a checkpoint that pools
  at inference is refused unless `allow_uncompressed`, which writes the setting to `vregion_export.json`.
Other backbones (e.g. efficientnet-lite0) have no LLaVA counterpart: `format="auto"` keeps the vregion format.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from torch import nn
from transformers import AddedToken, LlavaConfig, LlavaForConditionalGeneration

from vregion.config import ModelConfig, from_dict
from vregion.models.backbones import HFViTBackbone
from vregion.models.checkpoint import CONFIG_FILE, MODEL_FILE
from vregion.models.llava_format import HF_TEXT, HF_VISION, IMAGE_TOKEN, chat_template
from vregion.models.projectors import LinearProjector, MLPProjector
from vregion.models.vlm import load_checkpoint

FORMATS = ("auto", "hf")
VREGION_LOADER = (
    "from vregion.models import load_checkpoint\n"
    "model, tokenizer, config = load_checkpoint({path!r})  # VisionLanguageModel, tokenizer, config dict"
)
HF_LOADER = (
    "from transformers import AutoProcessor, LlavaForConditionalGeneration\n"
    "model = LlavaForConditionalGeneration.from_pretrained({path!r})\n"
    "processor = AutoProcessor.from_pretrained({path!r})  # '<image>' in the text expands to the visual tokens"
)
RECORD_FILE = "vregion_export.json"  # what the export could not carry over, next to the HF files
_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


class ExportError(ValueError):
    """The checkpoint cannot be written in the requested format (the message says why)."""


def stored_dtype(checkpoint: str | Path) -> torch.dtype:
    """The floating dtype the checkpoint's projector was saved in (the export keeps it)."""
    with safe_open(str(Path(checkpoint) / MODEL_FILE), framework="pt", device="cpu") as f:
        for key in f.keys():
            if key.startswith("projector."):
                return _DTYPES.get(f.get_slice(key).get_dtype(), torch.float32)
    return torch.float32


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def projector_state(projector: nn.Module, llm_dim: int) -> tuple[dict[str, torch.Tensor], str]:
    """(LLaVA `multi_modal_projector` state dict, projector_hidden_act) equal to vregion's projector."""
    if isinstance(projector, MLPProjector):
        first, last = projector[0], projector[-1]
        inner = first.out_features
        if inner > llm_dim:
            raise ExportError(f"mlp2x_gelu inner width {inner} > LLM width {llm_dim}: LLaVA's projector is "
                              f"{llm_dim} wide inside and cannot hold it")
        pad = llm_dim - inner  # zero rows give GELU(0) = 0, which the zero columns of linear_2 ignore
        w1 = torch.cat([first.weight, first.weight.new_zeros(pad, first.in_features)])  # (D, V)
        b1 = torch.cat([first.bias, first.bias.new_zeros(pad)])  # (D,)
        w2 = torch.cat([last.weight, last.weight.new_zeros(llm_dim, pad)], dim=1)  # (D, D)
        return {"linear_1.weight": w1, "linear_1.bias": b1, "linear_2.weight": w2, "linear_2.bias": last.bias}, "gelu"
    if isinstance(projector, LinearProjector):
        eye = torch.eye(llm_dim, dtype=projector.weight.dtype)  # (D, D)
        return {"linear_1.weight": projector.weight, "linear_1.bias": projector.bias,
                "linear_2.weight": eye, "linear_2.bias": eye.new_zeros(llm_dim)}, "linear"
    raise ExportError(f"no LLaVA equivalent of projector {type(projector).__name__}")


def vision_state(vision: HFViTBackbone) -> tuple[dict[str, torch.Tensor], dict]:
    """(tower state dict, vision config dict) at the resolution vregion feeds it (position table baked in)."""
    tower = vision.model
    state, config = dict(tower.state_dict()), tower.config.to_dict()
    if vision.interpolate:
        # Found by its method: transformers versions differ on whether a `vision_model.` level wraps it.
        name, embeddings = next((n, m) for n, m in tower.named_modules() if hasattr(m, "interpolate_pos_encoding"))
        grid = vision.image_size // tower.config.patch_size
        dummy = torch.zeros(1, grid * grid + vision.num_prefix_tokens, tower.config.hidden_size)
        table = embeddings.interpolate_pos_encoding(dummy, vision.image_size, vision.image_size)[0]  # (P, H)
        state[f"{name}.position_embedding.weight"] = table.detach().clone()
        config["image_size"] = vision.image_size
    return state, config


def _with_image_token(tokenizer) -> int:
    """Add `<image>` as a special token (unless present); returns its id."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def _text_state(llm: nn.Module, vocab: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(decoder state dict, head state dict), vocabulary rows grown to `vocab` with mean rows if needed."""
    decoder, head = dict(llm.model.state_dict()), dict(llm.lm_head.state_dict())

    def grow(weight: torch.Tensor) -> torch.Tensor:
        extra = vocab - weight.shape[0]
        return torch.cat([weight, weight.float().mean(0, keepdim=True).to(weight.dtype).expand(extra, -1)])

    if vocab > decoder["embed_tokens.weight"].shape[0]:
        decoder["embed_tokens.weight"] = grow(decoder["embed_tokens.weight"])
        head["weight"] = grow(head["weight"])
    return decoder, head


def image_processor(vision: HFViTBackbone):
    """The Hugging Face image processor preprocessing as vregion's ImageProcessor in the tower's aspect mode:
    squash resizes to the square, crop resizes the shortest side and centre-crops, pad expands to a square of
    the mean colour first (LlavaImageProcessor's `do_pad`, LLaVA-1.5's rule); bicubic and the tower's stats."""
    from transformers import LlavaImageProcessor

    size, aspect = vision.image_size, vision.image_aspect
    square = {"height": size, "width": size}
    resize = {"size": {"shortest_edge": size}, "do_center_crop": True, "crop_size": square} if aspect == "crop" \
        else {"size": square, "do_center_crop": False}
    return LlavaImageProcessor(do_pad=aspect == "pad", resample=3, image_mean=list(vision.image_mean),
                               image_std=list(vision.image_std), do_convert_rgb=True, **resize)


def _processor(vision: HFViTBackbone, tokenizer, strategy: str, extra_tokens: int):
    """LLaVA processor preprocessing images as vregion does (`image_processor`); its chat template is the
    tokenizer's."""
    from transformers import LlavaProcessor

    return LlavaProcessor(image_processor=image_processor(vision), tokenizer=tokenizer,
                          patch_size=vision.model.config.patch_size, vision_feature_select_strategy=strategy,
                          image_token=IMAGE_TOKEN, num_additional_image_tokens=extra_tokens,
                          chat_template=tokenizer.chat_template)


def hf_support(vision_type: str, text_config: Any = None) -> str | None:
    """Why a model cannot be exported to HF LLaVA, or None when it can (text_config None: not checked yet)."""
    if vision_type not in HF_VISION:
        return f"vision backbone '{vision_type}' has no LLaVA counterpart (supported: {', '.join(HF_VISION)})"
    if text_config is None:
        return None
    if text_config.model_type not in HF_TEXT:
        return f"LLM family '{text_config.model_type}' is not among the exported families ({', '.join(HF_TEXT)})"
    # LLaVA applies its own lm_head, so the causal LM's final soft-capping (Gemma 2 style) would be lost.
    if getattr(text_config, "final_logit_softcapping", None):
        return "the LLM soft-caps its logits (final_logit_softcapping), which LLaVA's head does not do"
    return None


def llava_model(model: nn.Module, vision_type: str, image_token_id: int, vocab_size: int, share: bool = False):
    """`model` (a VisionLanguageModel) as a LlavaForConditionalGeneration in memory. `image_token_id` marks visual
    positions; vocabulary rows beyond the LLM's own (up to `vocab_size`) are mean rows (`_text_state`).
    share: the LLaVA model may hold vregion's own tensors (an export that only saves it: no second copy of a
    7B-13B model); otherwise its weights are copies, so training one model leaves the other as it was."""
    reason = hf_support(vision_type, model.llm.config)
    if reason or not isinstance(model.vision, HFViTBackbone):
        raise ExportError(reason or f"vision backbone {type(model.vision).__name__} is not an HF ViT tower")
    strategy, _ = HF_VISION[vision_type]
    text_config = model.llm.config.to_dict()
    text_config["vocab_size"] = max(text_config["vocab_size"], vocab_size)
    llm_dim = model.llm.get_input_embeddings().embedding_dim
    projector, act = projector_state(model.projector, llm_dim)
    vision, vision_config = vision_state(model.vision)
    decoder, head = _text_state(model.llm, text_config["vocab_size"])
    tied = bool(text_config.get("tie_word_embeddings", False))
    config = LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_index=image_token_id,
        image_seq_length=model.num_visual_tokens, projector_hidden_act=act,
        vision_feature_select_strategy=strategy, vision_feature_layer=model.vision.feature_layer,
        multimodal_projector_bias=True, tie_word_embeddings=tied,
    )

    def own(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # Assigned tensors become the LLaVA model's parameters: copies unless sharing is asked for.
        return state if share else {k: v.detach().clone() for k, v in state.items()}

    # An export builds on the meta device and fills by assignment: a 7B-13B export never allocates a second
    # random model. It saves only the weights; a model that will run needs its non-persistent buffers (rotary
    # frequencies, position ids) computed, so it is built for real first.
    with torch.device("meta") if share else contextlib.nullcontext():
        hf = LlavaForConditionalGeneration(config)
    hf.model.vision_tower.load_state_dict(own(vision), strict=True, assign=True)
    hf.model.multi_modal_projector.load_state_dict(own(projector), strict=True, assign=True)
    hf.model.language_model.load_state_dict(own(decoder), strict=True, assign=True)
    if tied:
        hf.lm_head.weight = hf.model.language_model.embed_tokens.weight
    else:
        hf.lm_head.load_state_dict(own(head), strict=True, assign=True)
    left = [name for name, p in hf.state_dict().items() if p.is_meta]
    if left:
        raise ExportError(f"weights not mapped: {left[:5]}")
    hf.generation_config = model.llm.generation_config
    return hf


def export_hf(model: nn.Module, tokenizer: Any, vision_type: str, out: str | Path, template: str = "vicuna-v1") -> Path:
    """Write `model` (a VisionLanguageModel) as a LlavaForConditionalGeneration folder with tokenizer + processor,
    both carrying the chat template `template` (the checkpoint's `model.template`) as Jinja."""
    reason = hf_support(vision_type, model.llm.config)
    if reason or not isinstance(model.vision, HFViTBackbone):
        raise ExportError(reason or f"vision backbone {type(model.vision).__name__} is not an HF ViT tower")
    strategy, extra_tokens = HF_VISION[vision_type]
    tokenizer = copy.deepcopy(tokenizer)  # adding <image> must not change the caller's tokenizer
    image_token_id = _with_image_token(tokenizer)
    tokenizer.chat_template = chat_template(tokenizer, template)
    hf = llava_model(model, vision_type, image_token_id, _round_up(image_token_id + 1, 64), share=True)
    out = Path(out)
    hf.save_pretrained(out)
    _processor(model.vision, tokenizer, strategy, extra_tokens).save_pretrained(out)
    return out


def _vision_type(checkpoint: Path) -> str:
    config = yaml.safe_load((checkpoint / CONFIG_FILE).read_text()) or {}
    return ((config.get("model") or {}).get("vision") or {}).get("type", "clip")


def inference_compression(config: dict, num_layers: int) -> dict | None:
    """{"layer": K, "stride": S} the checkpoint pools visual tokens with at inference (K scaled to `num_layers`,
    as evaluation and generation apply it), or None when it runs uncompressed."""
    # Imported here: vregion.compress installs hooks on vregion.models, so it sits above this package.
    from vregion.compress import CompressionController

    setting = CompressionController.from_config_dict(config, num_layers).inference
    return None if setting.layer is None else {"layer": setting.layer, "stride": setting.stride}


def _compression_setting(config: dict, compression: dict) -> str:
    """`compression` and the config fields that ask for it, for messages."""
    ccfg = config.get("compress") or {}
    return (f"layer K={compression['layer']}, stride S={compression['stride']} from compress.schedule="
            f"{ccfg.get('schedule')}, compress.inference={ccfg.get('inference', 'auto')}")


def export_checkpoint(checkpoint: str | Path, out: str | Path, fmt: str = "auto",
                      allow_uncompressed: bool = False) -> dict:
    """Export a vregion checkpoint folder to `out`.

    Args:
        fmt: "hf" (LLaVA folder, or ExportError saying why not) or "auto" (HF when possible, else a copy of
            the vregion checkpoint, loaded with `vregion.models.load_checkpoint`).
        allow_uncompressed: export to HF a checkpoint that pools visual tokens at inference; LLaVA cannot pool
            inside the LLM, so the HF model runs uncompressed (said in "warning" and in `vregion_export.json`).
            Without it such a checkpoint raises ExportError. The vregion format keeps the pooling either way.
    Returns:
        {"format": "hf" | "vregion", "path", "load": a Python snippet that loads the result, "reason" (vregion only),
        "warning" (hf only: None, or what the export changed)}.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    checkpoint, out = Path(checkpoint), Path(out)
    if not (checkpoint / CONFIG_FILE).exists():
        raise FileNotFoundError(f"not a vregion checkpoint (no {CONFIG_FILE}): {checkpoint}")
    if out.exists():
        raise ExportError(f"{out} already exists; choose a new folder")
    vision_type = _vision_type(checkpoint)
    reason = hf_support(vision_type)
    if reason is None:
        model, tokenizer, config = load_checkpoint(checkpoint, stored_dtype(checkpoint))
        reason = hf_support(vision_type, model.llm.config)
        if reason is None:
            return _export_hf_checkpoint(checkpoint, out, model, tokenizer, config, vision_type, allow_uncompressed)
    if fmt == "hf":
        raise ExportError(f"cannot export {checkpoint} to Hugging Face LLaVA: {reason}")
    shutil.copytree(checkpoint, out)
    return {"format": "vregion", "path": str(out), "load": VREGION_LOADER.format(path=str(out)), "reason": reason}


def _export_hf_checkpoint(checkpoint: Path, out: Path, model: nn.Module, tokenizer: Any, config: dict,
                          vision_type: str, allow_uncompressed: bool) -> dict:
    """The HF branch of `export_checkpoint`: refuse or record inference-time compression, then `export_hf`."""
    compression = inference_compression(config, model.runner.num_layers)
    warning = None
    if compression is not None:
        setting = _compression_setting(config, compression)
        if not allow_uncompressed:
            raise ExportError(
                f"{checkpoint} pools visual tokens inside the LLM at inference ({setting}); Hugging Face LLaVA "
                "cannot pool inside the LLM, so the exported model would silently compute a different, "
                "uncompressed model. Pass --allow-uncompressed (allow_uncompressed=True) to export it anyway, "
                "or use the checkpoint in the vregion format, which keeps the pooling")
        warning = (f"{checkpoint} pools visual tokens at inference ({setting}); the exported LLaVA model runs "
                   f"uncompressed (recorded in {out / RECORD_FILE})")
    template = from_dict(ModelConfig, config.get("model") or {}, "model").template
    export_hf(model, tokenizer, vision_type, out, template)
    record = {
        "source": str(checkpoint), "chat_template": template, "inference_compression": compression,
        "runs_uncompressed": compression is not None,
        "note": None if compression is None else (
            f"the source checkpoint pools visual tokens at layer {compression['layer']} with stride "
            f"{compression['stride']} at inference; LlavaForConditionalGeneration cannot pool inside the LLM, "
            "so this model runs uncompressed: its outputs differ from the source checkpoint's"),
    }
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return {"format": "hf", "path": str(out), "load": HF_LOADER.format(path=str(out)), "warning": warning}
