"""Full model weights out of a DeepSpeed engine (any ZeRO stage), with LoRA folded into the base linears."""

from __future__ import annotations

import torch

from vregion import distributed as dist


def gather_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """The whole model's state dict on rank 0 (None elsewhere); every rank must call this.

    Under ZeRO-3 each rank holds a shard of every parameter, so they are gathered; below that the
    module already holds full weights.
    """
    if engine.zero_optimization_partition_weights():
        state = engine._zero3_consolidated_16bit_state_dict()
    else:
        state = engine.module.state_dict() if dist.is_main() else None
    if not dist.is_main():
        return None
    return {k: v.detach().to("cpu").clone() for k, v in state.items()}


def merge_lora_state_dict(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """Fold peft LoRA weights into their base linears: W = W0 + scaling * B @ A; keys lose the LoRA names.

    peft renames a wrapped linear `x.weight` to `x.base_layer.weight` and adds `x.lora_A.<adapter>.weight`,
    `x.lora_B.<adapter>.weight`; the result has the plain model's keys, so it loads without peft.
    """
    merged: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        if ".base_layer." not in key:
            merged[key] = value
            continue
        prefix, leaf = key.split(".base_layer.")
        if leaf == "weight":
            a = next(v for k, v in state.items() if k.startswith(prefix + ".lora_A."))
            b = next(v for k, v in state.items() if k.startswith(prefix + ".lora_B."))
            delta = scaling * (b.float() @ a.float())  # (out, r) @ (r, in) -> (out, in)
            value = (value.float() + delta).to(value.dtype)
        merged[f"{prefix}.{leaf}"] = value
    return merged
