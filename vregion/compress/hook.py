"""Install visual context compression on a model as the decoder runner's `between_layers` hook.

`set_compression(model, K, S)` makes the runner pool every image's visual tokens right before decoder
layer K (K = 0: before the first layer), then rebuild masks and rotary embeddings with `runner.refresh`.
Layers < K see all visual tokens, layers >= K see ceil(L / S) per image. The hook also keeps
`state.extras["labels"]` and `["image_spans"]` (and packed rows' segment ids) aligned, so `VisionLanguageModel.forward`'s loss uses the
pooled labels. Other per-token extras are not touched.

Generation is compressed too: with the hook installed, `VisionLanguageModel.generate` decodes through the
runner without a KV cache, so every step sees the pooled sequence training saw (evaluation applies the
checkpoint's inference stage, e.g. last-stage-compression's 16/4, to loss and generation alike).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from vregion.compress.dispatch import IMPLS, pool_visual_spans
from vregion.compress.schedule import PoolingSetting
from vregion.models.runner import DecoderRunner, RunnerState

log = logging.getLogger(__name__)


class CompressionHook:
    """`between_layers` hook pooling visual spans before layer `layer` with stride `stride`."""

    def __init__(self, runner: DecoderRunner, layer: int, stride: int, impl: str = "auto"):
        self.runner = runner
        self.layer = layer
        self.stride = stride
        self.impl = impl

    def __call__(self, layer_idx: int, state: RunnerState) -> RunnerState:
        if layer_idx != self.layer:
            return state
        pooled = pool_visual_spans(
            state.hidden,
            state.attention_mask,
            state.position_ids,
            state.extras.get("labels"),
            state.extras.get("image_spans"),
            self.stride,
            impl=self.impl,
            segment_ids=state.segment_ids,
        )
        if pooled.hidden is state.hidden:  # nothing pooled (text-only batch): masks are still valid
            return state
        state.hidden = pooled.hidden  # (B, T', D)
        state.attention_mask = pooled.attention_mask  # (B, T')
        state.position_ids = pooled.position_ids  # (B, T')
        state.segment_ids = pooled.segment_ids  # (B, T') or None
        state.extras["labels"] = pooled.labels
        state.extras["image_spans"] = pooled.image_spans
        return self.runner.refresh(state)

    def __repr__(self) -> str:
        return f"CompressionHook(layer={self.layer}, stride={self.stride}, impl={self.impl!r})"


def _runner(model: Any) -> DecoderRunner:
    """The DecoderRunner of a VisionLanguageModel, or of one wrapped in `.module` (DeepSpeed, DDP)."""
    for candidate in (model, getattr(model, "module", None)):
        runner = getattr(candidate, "runner", None)
        if isinstance(runner, DecoderRunner):
            return runner
    raise TypeError(f"{type(model).__name__} has no DecoderRunner at .runner or .module.runner")


def get_compression(model: Any) -> Optional[CompressionHook]:
    """The installed compression hook, or None."""
    hook = _runner(model).between_layers
    return hook if isinstance(hook, CompressionHook) else None


def set_compression(model: Any, layer: Optional[int], stride: int = 1, impl: str = "auto") -> Optional[CompressionHook]:
    """Pool visual tokens before decoder layer `layer` with kernel = stride = `stride`; None or S = 1 removes it.

    Args:
        model: a VisionLanguageModel (or a wrapper exposing it as `.module`).
        layer: K in [0, num_layers) *of this model* (scale schedule values with `scale_layer`), or None.
        stride: S >= 1.
        impl: "auto" | "triton" | "torch", see `vregion.compress.dispatch`.
    Returns:
        the installed hook, or None when compression is off. Re-setting the same values is a no-op, so it
        can be called every step; a change is logged. A `between_layers` hook that is not a compression
        hook is never replaced (raises).
    """
    runner = _runner(model)
    current = runner.between_layers
    if current is not None and not isinstance(current, CompressionHook):
        raise RuntimeError(f"runner already has a different between_layers hook ({current!r}); not replacing it")
    if impl not in IMPLS:
        raise ValueError(f"unknown pooling impl '{impl}'; valid: {', '.join(IMPLS)}")
    if layer is None or stride == 1:
        if current is not None:
            log.info("visual context compression off")
        runner.between_layers = None
        return None
    if not isinstance(layer, int) or not 0 <= layer < runner.num_layers:
        raise ValueError(f"compression layer must be in [0, {runner.num_layers}) for this model, got {layer}")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"compression stride must be an int >= 1, got {stride}")
    if current is not None and (current.layer, current.stride, current.impl) == (layer, stride, impl):
        return current
    hook = CompressionHook(runner, layer, stride, impl)
    runner.between_layers = hook
    log.info("visual context compression: pool visual tokens with stride %d before layer %d of %d (impl %s)",
             stride, layer, runner.num_layers, impl)
    return hook


def apply_stage(model: Any, stage: PoolingSetting, impl: str = "auto") -> Optional[CompressionHook]:
    """`set_compression` from a schedule PoolingSetting whose K is already scaled to the model (`stage_at(..., num_layers=)`)."""
    return set_compression(model, stage.layer, stage.stride or 1, impl=impl)
