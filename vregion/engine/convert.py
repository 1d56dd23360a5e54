"""`vregion convert`: a resumable DeepSpeed checkpoint (any ZeRO stage, any rank count) -> a vregion model checkpoint.

A run killed before it wrote `final/` still has its `checkpoints/step-*` folders; this turns one of them into
the portable model format (vregion.models.checkpoint) without GPUs or a process group. ZeRO-1/2/3 shards are
merged by DeepSpeed's own `zero_to_fp32` (the fp32 master weights, frozen parameters included); without
ZeRO the model-states file already holds every weight. LoRA adapters are folded into their base linears,
as the trainer does for `final/`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vregion.config import Config, load_config, to_dict
from vregion.constants import DTYPES as PRECISION_DTYPES
from vregion.engine import checkpoint

DTYPES = {name: PRECISION_DTYPES[name] for name in ("fp32", "bf16")}  # what `vregion convert --dtype` offers


def resolve_checkpoint(path: str | Path) -> tuple[Path, str]:
    """(checkpoints root, tag) for a `step-N` folder, a `checkpoints/` folder, or a stage/run folder.

    The latter two mean their newest complete checkpoint. A folder without the COMPLETE marker is a save that
    crashed part-way and is refused.
    """
    path = Path(path).resolve()
    if path.name.startswith("step-"):
        if not (path / checkpoint.COMPLETE).exists():
            raise ValueError(f"{path} has no {checkpoint.COMPLETE} marker: its save did not finish")
        return path.parent, path.name
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    tag = checkpoint.latest_tag(root)
    if tag is None:
        raise FileNotFoundError(f"no complete checkpoint (step-*/{checkpoint.COMPLETE}) under {root}")
    return root, tag


def stage_config(root: Path) -> Config:
    """The resolved config the run wrote beside its `checkpoints/` folder."""
    file = root.parent / "config.yaml"
    if not file.exists():
        raise FileNotFoundError(f"{file} is missing: cannot tell which model {root} belongs to")
    return load_config(file)


def deepspeed_state_dict(root: Path, tag: str) -> dict[str, torch.Tensor]:
    """The full fp32 model state dict of checkpoint `root/tag`, with the model's own parameter names."""
    folder = root / tag
    if list(folder.glob("*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return dict(get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag))
    # ZeRO stage 0 keeps the optimizer inside the model-states file, and every weight in its `module`.
    states = torch.load(folder / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    return {k: v.float() if v.is_floating_point() else v for k, v in states["module"].items()}


def cast(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors to `dtype`; tensors shared by several names (tied weights) stay shared."""
    done: dict[int, torch.Tensor] = {}
    out = {}
    for name, t in state.items():
        if id(t) not in done:
            done[id(t)] = t.to(dtype) if t.is_floating_point() else t
        out[name] = done[id(t)]
    return out


def convert_checkpoint(path: str | Path, out: str | Path, dtype: str = "fp32") -> Path:
    """Write the weights of DeepSpeed checkpoint `path` as a vregion checkpoint folder `out`.

    Args:
        path: a `checkpoints/step-N` folder, or a `checkpoints/` / stage folder (newest complete checkpoint).
        out: folder to write (replaced atomically); loadable with vregion.models.load_checkpoint.
        dtype: "fp32" or "bf16" for the floating-point weights.
    Returns:
        `out` as a Path.
    """
    from vregion.engine.state_dict import merge_lora_state_dict
    from vregion.models import save_state_dict

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    root, tag = resolve_checkpoint(path)
    cfg = stage_config(root)
    state = deepspeed_state_dict(root, tag)
    if any(".lora_A." in k for k in state):
        state = merge_lora_state_dict(state, cfg.region.lora.alpha / cfg.region.lora.r)
    saved = to_dict(cfg)
    saved["model"]["init_from"] = None  # the weights are in this checkpoint
    # No tokenizer is written: training never changes it, and load_checkpoint then takes the one of the
    # config's LLM source (building one here could mean loading a whole 7B model just for its tokenizer).
    return save_state_dict(cast(state, DTYPES[dtype]), saved, None, out)
