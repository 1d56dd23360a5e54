"""What an import reads out of a foreign checkpoint, in vregion's terms, and the refusal every reader raises.

`Imported` is the common result of `hf_import` (Hugging Face LLaVA folders) and `llava_original` (LLaVA-1.5's own
format): vregion-named weights, the model section of a vregion config, the Hugging Face configs of the tower and
the LLM (saved inside the checkpoint as architecture-only folders), tokenizer, and notes on what was inferred.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from vregion.config import ConfigError
from vregion.data.templates import TEMPLATES

# Sources that cannot map, by Hugging Face model_type: multi-crop / AnyRes image tiling with an image_newline row.
ANYRES_TYPES = ("llava_next", "llava_next_video", "llava_onevision")
VISION_TYPES = {"clip": "clip", "clip_vision_model": "clip", "siglip": "siglip", "siglip_vision_model": "siglip"}


class ImportRefused(ConfigError):
    """A source vregion cannot represent exactly (the message names what was found); the CLI exits with 2."""


@dataclass
class Imported:
    """A foreign checkpoint in vregion's terms.

    Attributes:
        state: weights under vregion names (`vision.model.*`, `projector.*`, `llm.model.*`, `llm.lm_head.*`);
            `vision.*` may be absent when the source does not hold its tower (original LLaVA releases).
        model: the `model` section of a vregion config (paths left for the writer to fill).
        vision_config, text_config: the tower's and the LLM's Hugging Face configs.
        generation_config: the LLM's generation defaults, or None.
        tokenizer: the source's tokenizer (pad token set).
        kind: "hf-llava" | "llava"; notes: what was inferred or could not be carried, for the user.
        vision_source: where the tower's own weights live when `state` lacks them (a folder or hub id).
    """

    state: dict[str, torch.Tensor]
    model: dict
    vision_config: Any
    text_config: Any
    generation_config: Any
    tokenizer: Any
    kind: str
    notes: list[str] = field(default_factory=list)
    vision_source: Optional[str] = None


def vision_type(model_type: str, where: str) -> str:
    """vregion's backbone id for a Hugging Face vision model_type, or ImportRefused naming it."""
    if model_type not in VISION_TYPES:
        raise ImportRefused(f"{where}: vision tower of model_type {model_type!r} is not CLIP or SigLIP; vregion imports "
                            f"only {', '.join(sorted(VISION_TYPES))}")
    return VISION_TYPES[model_type]


def with_pad_token(tokenizer: Any) -> Any:
    """The tokenizer with a pad token, falling back to unk / eos as `build_llm` does (batching needs one)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


PROBE = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A red circle."}]},
    {"role": "user", "content": [{"type": "text", "text": "And its size?"}]},
]


def _render(tokenizer: Any, template: str) -> Optional[str]:
    """The probe conversation through a Jinja chat template (transformers renders it sandboxed), or None."""
    try:
        return tokenizer.apply_chat_template(PROBE, chat_template=template, tokenize=False, add_generation_prompt=True)
    except Exception:  # a template that cannot render this conversation simply does not match
        return None


def infer_template(tokenizer: Any, given: Optional[str], where: str) -> tuple[str, str]:
    """(vregion template name, note): `given` when set, else the template whose Jinja form renders a probe
    conversation exactly as the source's chat template does.

    Raises:
        ImportRefused: an unknown `given`, or no template to compare / none matching (asks for --template).
    """
    from vregion.models.llava_format import chat_template

    valid = " | ".join(TEMPLATES)
    if given is not None:
        if given not in TEMPLATES:
            raise ImportRefused(f"--template {given!r} is not valid; valid: {valid}")
        return given, f"chat template {given} (given)"
    source = getattr(tokenizer, "chat_template", None)
    if not source:
        raise ImportRefused(f"{where} has no chat template to infer vregion's from; pass --template ({valid})")
    rendered = _render(tokenizer, source)
    for name in TEMPLATES:
        if rendered is not None and _render(tokenizer, chat_template(tokenizer, name)) == rendered:
            return name, f"chat template {name} (inferred: renders as the source's)"
    shown = (rendered or "<does not render a user/assistant conversation>")[:160]
    raise ImportRefused(f"{where}: its chat template matches none of vregion's (it renders {shown!r}); pass "
                        f"--template ({valid}) to train with one of them")
