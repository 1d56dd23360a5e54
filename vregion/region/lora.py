"""LoRA on the seven linears of chosen decoder layers (peft, injected in place), and merging it back.

Injection keeps the module tree: `llm.model.layers.5.self_attn.q_proj` becomes a peft `lora.Linear` whose
frozen base weight is `...q_proj.base_layer.weight` and whose adapters are `...q_proj.lora_A.default.weight`
and `...q_proj.lora_B.default.weight`. `merge_lora` folds the adapters in and restores the plain names.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from vregion.config import LoraConfig
from vregion.region.names import layer_index_of

log = logging.getLogger(__name__)

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_NAME = "default"


def lora_target_regex(layers: Sequence[int]) -> str:
    """peft `target_modules` regex (full match, relative to `model.llm`) for the 7 linears of `layers`."""
    indices = "|".join(str(i) for i in sorted(layers))
    return rf"model\.layers\.({indices})\.(?:.*\.)?({'|'.join(LORA_TARGETS)})"


def inject_lora(model: nn.Module, layers: Sequence[int], cfg: LoraConfig) -> list[str]:
    """Wrap the 7 linears of each layer in `layers` with a LoRA adapter; B starts at zero (output unchanged).

    Args:
        model: a VisionLanguageModel (`model.llm.model.layers`).
        layers: 0-based decoder-layer indices; must be non-empty.
        cfg: rank, alpha and dropout.

    Returns:
        Full names (`llm.model.layers.<i>....q_proj`) of the wrapped modules.
    """
    if not layers:
        raise ValueError("LoRA needs at least one region layer")
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=lora_target_regex(layers),
        bias="none",
        init_lora_weights=True,  # A Kaiming-uniform, B zeros: the model's output is unchanged at start
    )
    inject_adapter_in_model(peft_cfg, model.llm, adapter_name=ADAPTER_NAME)
    wrapped = lora_module_names(model)
    for name in wrapped:
        # New modules (LoRA dropout) start in train mode; follow the model so eval() stays deterministic.
        model.get_submodule(name).train(model.llm.training)
    expected = len(layers) * len(LORA_TARGETS)
    if len(wrapped) != expected:
        raise ValueError(
            f"expected {expected} LoRA targets ({', '.join(LORA_TARGETS)} in each of layers {list(layers)}), "
            f"found {len(wrapped)}: {wrapped}"
        )
    return wrapped


def lora_module_names(model: nn.Module) -> list[str]:
    """Names of the modules of `model` that carry peft adapters."""
    return [name for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def lora_layers(model: nn.Module) -> list[int]:
    """Sorted decoder-layer indices that currently carry LoRA adapters."""
    return _layers_of(lora_module_names(model))


@torch.no_grad()
def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA adapter into its base linear and put the plain linear back (for plain checkpoints).

    The forward output is unchanged (up to float rounding) and parameter names return to
    `...q_proj.weight`. The merged base weights keep their `requires_grad` (frozen after apply_region).

    Returns:
        Number of modules merged (0 when the model has no adapters).
    """
    names = lora_module_names(model)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        wrapper = getattr(parent, child)
        wrapper.merge(safe_merge=True)  # safe: raises on NaNs instead of writing them into the base weight
        setattr(parent, child, wrapper.get_base_layer())
    if hasattr(model.llm, "peft_config"):
        del model.llm.peft_config  # peft would otherwise think adapters are still loaded
    if names:
        log.info("merged %d LoRA modules into their base linears (layers %s)", len(names), _layers_of(names))
    return len(names)


def _layers_of(names: list[str]) -> list[int]:
    return sorted({i for i in (layer_index_of(n + ".") for n in names) if i is not None})
