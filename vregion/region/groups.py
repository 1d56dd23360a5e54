"""Optimizer parameter groups of the trainable parameters: per-component learning rate, no decay on 1-D.

Weight decay follows common practice (Hugging Face Trainer, peft examples): every parameter with two or
more dimensions decays, LoRA A/B matrices included; biases, norm weights and other 1-D parameters don't.
"""

from __future__ import annotations

from torch import nn

from vregion.config import OptimConfig
from vregion.region.names import component_of, is_no_decay

__all__ = ["build_param_groups", "component_of"]

# Group order is fixed so optimizer state and schedules line up across runs and resumes.
_GROUP_PREFIXES = ("projector", "vision", "llm")


def _group_prefix(name: str) -> str:
    comp = component_of(name)
    return comp if comp in ("projector", "vision") else "llm"


def build_param_groups(model: nn.Module, optim: OptimConfig) -> list[dict]:
    """Parameter groups for a torch / DeepSpeed optimizer, trainable parameters only.

    Args:
        model: the model after apply_region.
        optim: learning rates and weight decay.

    Returns:
        Non-empty groups, in the order projector, projector_no_decay, vision, vision_no_decay, llm,
        llm_no_decay. Each is {"name", "params", "lr", "weight_decay"}; the projector groups use
        `optim.projector_lr or optim.lr`, the others `optim.lr`; `*_no_decay` groups have weight decay 0.
        A tied lm_head / embedding tensor appears once.
    """
    lrs = {"projector": optim.projector_lr or optim.lr, "vision": optim.lr, "llm": optim.lr}
    buckets: dict[str, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():  # deduplicates tied tensors
        if not p.requires_grad:
            continue
        key = _group_prefix(name) + ("_no_decay" if is_no_decay(name, p) else "")
        buckets.setdefault(key, []).append(p)
    groups = []
    for prefix in _GROUP_PREFIXES:
        for key, wd in ((prefix, optim.weight_decay), (f"{prefix}_no_decay", 0.0)):
            if buckets.get(key):
                groups.append({"name": key, "params": buckets[key], "lr": lrs[prefix], "weight_decay": wd})
    return groups
