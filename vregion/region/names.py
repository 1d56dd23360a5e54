"""Parameter-name conventions of a VisionLanguageModel: which component a name belongs to, and its layer.

The model has submodules `vision`, `projector` and `llm` (a Hugging Face causal LM whose decoder layers are
`llm.model.layers`). Everything in vregion.region relies on these names only, never on module classes.
"""

from __future__ import annotations

import re
from typing import Optional

from torch import nn

from vregion.models.runner import decoder_layers

COMPONENTS = ("vision", "projector", "layers", "embeddings", "norm", "lm_head", "other")

# Prefixes added by wrappers (DeepSpeed engine, torch.compile, a PeftModel) that are not part of the name.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "base_model.model.")
_LAYER = re.compile(r"^llm\.model\.layers\.(\d+)\.")
# A decoder layer's linear weight in the LLM's state dict as vregion (`llm.model.layers`), a Hugging Face causal
# LM (`model.layers`) or a Hugging Face LLaVA (`model.language_model.layers`, older `language_model.model.layers`)
# names it. Anchored at the start: a vision tower's `vision.model.encoder.layers.<i>.self_attn.q_proj` has the
# same tail and must never match.
_DECODER_LINEAR = re.compile(
    r"^(?:llm\.model|model|model\.language_model|language_model\.model)\.layers\.(\d+)\."
    r"(?:self_attn|mlp)\.(\w+_proj)\.weight$"
)


def strip_wrappers(name: str) -> str:
    """`module._orig_mod.llm.x` -> `llm.x`."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name


def component_of(name: str) -> str:
    """Component of a parameter name: vision | projector | layers | embeddings | norm | lm_head | other.

    `layers` is any decoder layer (`llm.model.layers.<i>.*`, LoRA weights included); `norm` is the final
    norm `llm.model.norm`; norms inside decoder layers count as `layers`.
    """
    name = strip_wrappers(name)
    if name.startswith("vision."):
        return "vision"
    if name.startswith("projector."):
        return "projector"
    if _LAYER.match(name):
        return "layers"
    if name.startswith("llm.model.embed_tokens."):
        return "embeddings"
    if name.startswith("llm.model.norm."):
        return "norm"
    if name.startswith("llm.lm_head."):
        return "lm_head"
    return "other"


def layer_index_of(name: str) -> Optional[int]:
    """Decoder-layer index of a parameter name, or None outside `llm.model.layers`."""
    m = _LAYER.match(strip_wrappers(name))
    return int(m.group(1)) if m else None


def decoder_linear_of(name: str) -> Optional[tuple[int, str]]:
    """(layer index, linear name) of an LLM decoder layer's linear weight in a vregion, HF causal-LM or HF LLaVA
    state dict (`llm.model.layers.3.mlp.up_proj.weight` -> (3, "up_proj")); None for every other weight,
    the vision tower's encoder layers included."""
    m = _DECODER_LINEAR.match(strip_wrappers(name))
    return (int(m.group(1)), m.group(2)) if m else None


def is_lora_param(name: str) -> bool:
    """True for peft LoRA weights (`...q_proj.lora_A.default.weight`, `lora_B`, `lora_magnitude_vector`)."""
    return ".lora_" in name


def is_norm_param(name: str) -> bool:
    """True when the owning module's name mentions norm (input_layernorm, q_norm, model.norm, ...)."""
    parts = name.split(".")
    return len(parts) > 1 and "norm" in parts[-2].lower()


def is_no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norm weights and every other parameter with fewer than two dimensions skip weight decay."""
    return param.ndim < 2 or name.endswith(".bias") or is_norm_param(name)


def norm_param_names(model: nn.Module) -> set[str]:
    """Names of every normalisation parameter of the LLM (all decoder layers' norms and the final norm)."""
    names = (n for n, _ in model.named_parameters())
    return {n for n in names if strip_wrappers(n).startswith("llm.") and is_norm_param(n)}


def vlm_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a VLM's `llm` (`models.runner.decoder_layers`), with a clear error when the model
    does not follow the naming."""
    try:
        return decoder_layers(model.llm)
    except AttributeError:
        raise ValueError(
            f"{type(model).__name__} has no `llm.model.layers`; vregion.region needs a model with "
            "`vision`, `projector` and `llm` submodules where `llm` is a Hugging Face causal LM"
        ) from None
