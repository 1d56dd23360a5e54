"""Per-decoder-layer importance: Block Influence, angular distance and parameter change (METHODS.md 1).

Hidden-state metrics come from ONE forward pass per calibration batch: a `between_layers` hook records the
input of every layer (h_i) and the runner's final state gives h_N (before the final norm). Everything is
accumulated as token-weighted sums, so splitting the same samples into other batches gives the same table.
Any depth and any token split: visual tokens come from the batch's `image_spans`, not from constants.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Optional

import torch
import torch.nn.functional as F

from vregion.eval.loss import to_model
from vregion.region.names import decoder_linear_of

PARAM_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LayerStats:
    """Importance metrics of one decoder layer; None where a metric is not defined (no base, block end)."""

    layer: int
    bi: float  # 1 - mean cos(h_i, h_{i+1}) over valid tokens
    bi_visual: Optional[float]  # same over visual tokens (None: no visual tokens seen)
    bi_text: Optional[float]  # same over valid non-visual tokens
    bi_multimodal: float  # mean of the visual and text parts (the available ones)
    angular: float  # mean arccos(cos(h_i, h_{i+1})) / pi over valid tokens
    angular_block: Optional[float]  # same for h_i vs h_{i+block}; None where the block runs past the top
    param_l2: Optional[float] = None  # sum over the 7 linears of ||W' - W||
    param_angular: Optional[float] = None  # sum of arccos(cos(vec W', vec W)) / pi
    param_relative: Optional[float] = None  # sum of ||W' - W|| / ||W||

    def as_dict(self) -> dict:
        return asdict(self)


def token_masks(attention_mask: torch.Tensor, image_spans: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(visual, text) boolean masks (B, T) from a batch: visual = real image spans, text = valid rest."""
    valid = attention_mask.bool()  # (B, T)
    visual = torch.zeros_like(valid)
    if image_spans is not None:
        for sample, start, length in image_spans.tolist():
            if sample >= 0:  # -1 marks collate's dummy image
                visual[sample, start : start + length] = True
    visual &= valid
    return visual, valid & ~visual


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-token cosine (B, T) in fp32, clamped so arccos stays finite."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-12).clamp(-1.0, 1.0)


class _Accumulator:
    """Token-weighted sums per layer: cos over valid / visual / text tokens, angular, block angular."""

    def __init__(self, num_layers: int, block: int):
        self.num_layers, self.block = num_layers, block
        self.sums = {k: torch.zeros(num_layers, dtype=torch.float64)
                     for k in ("cos", "cos_visual", "cos_text", "angular", "angular_block")}
        self.counts = {k: 0 for k in ("valid", "visual", "text")}

    def add(self, hidden: list[torch.Tensor], valid: torch.Tensor, visual: torch.Tensor, text: torch.Tensor) -> None:
        """hidden: N + 1 tensors (B, T, D): inputs of layers 0..N-1 and the last layer's output."""
        for i in range(self.num_layers):
            cos = _cos(hidden[i], hidden[i + 1])  # (B, T)
            self.sums["cos"][i] += cos[valid].double().sum()
            self.sums["cos_visual"][i] += cos[visual].double().sum()
            self.sums["cos_text"][i] += cos[text].double().sum()
            self.sums["angular"][i] += (torch.arccos(cos[valid]) / math.pi).double().sum()
            if i + self.block <= self.num_layers:
                block_cos = _cos(hidden[i], hidden[i + self.block])
                self.sums["angular_block"][i] += (torch.arccos(block_cos[valid]) / math.pi).double().sum()
        self.counts["valid"] += int(valid.sum())
        self.counts["visual"] += int(visual.sum())
        self.counts["text"] += int(text.sum())

    def table(self) -> list[LayerStats]:
        def mean(key: str, count: str, i: int) -> Optional[float]:
            n = self.counts[count]
            return float(self.sums[key][i] / n) if n else None

        rows = []
        for i in range(self.num_layers):
            bi_visual = None if mean("cos_visual", "visual", i) is None else 1.0 - mean("cos_visual", "visual", i)
            bi_text = None if mean("cos_text", "text", i) is None else 1.0 - mean("cos_text", "text", i)
            parts = [p for p in (bi_visual, bi_text) if p is not None]
            rows.append(LayerStats(
                layer=i,
                bi=1.0 - mean("cos", "valid", i),
                bi_visual=bi_visual,
                bi_text=bi_text,
                bi_multimodal=sum(parts) / len(parts),
                angular=mean("angular", "valid", i),
                angular_block=mean("angular_block", "valid", i) if i + self.block <= self.num_layers else None,
            ))
        return rows


@torch.no_grad()
def layer_metrics(model, batches: Iterable[dict], max_samples: int = 256, block: int = 2,
                  progress=None) -> list[LayerStats]:
    """Hidden-state metrics of every decoder layer of a VisionLanguageModel over calibration batches.

    Args:
        model: VisionLanguageModel without a `between_layers` hook (pooling would change the token count).
        batches: collated batches (input_ids, attention_mask, labels, pixel_values, image_spans, num_samples).
        max_samples: stop after this many samples.
        block: n for the block angular distance h_i vs h_{i+n}.
        progress: optional tqdm-like object; `update(samples)` is called per batch.
    Returns:
        One LayerStats per layer (parameter-change fields None; see `add_parameter_change`).
    """
    runner = model.runner
    if runner.between_layers is not None:
        raise ValueError("layer metrics need the model without a between_layers hook (e.g. visual pooling)")
    if not 1 <= block <= runner.num_layers:
        raise ValueError(f"block must be in [1, {runner.num_layers}], got {block}")
    acc = _Accumulator(runner.num_layers, block)
    captured: list[torch.Tensor] = []

    def capture(i: int, state):
        captured.append(state.hidden)  # layer i's input; layers return new tensors, so no copy is needed
        return state

    was_training = model.training
    model.eval()
    samples = 0
    runner.between_layers = capture
    try:
        for batch in batches:
            inputs = to_model(batch, model)
            captured.clear()
            embeds = model.embed(inputs["input_ids"], inputs["pixel_values"], inputs["image_spans"])  # (B, T, D)
            state = runner.run_layers(runner.prepare(embeds, inputs["attention_mask"]))
            captured.append(state.hidden)  # h_N: last layer's output, before the final norm
            visual, text = token_masks(inputs["attention_mask"], inputs["image_spans"])
            acc.add(captured, inputs["attention_mask"].bool(), visual, text)
            samples += int(batch["num_samples"])
            if progress is not None:
                progress.update(int(batch["num_samples"]))
            if samples >= max_samples:
                break
    finally:
        runner.between_layers = None
        captured.clear()
        model.train(was_training)
    if acc.counts["valid"] == 0:
        raise ValueError("no calibration tokens: the batches were empty")
    return acc.table()


def parameter_change(trained: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]) -> dict[int, dict]:
    """{layer: {param_l2, param_angular, param_relative}} summed over the 7 linears of each decoder layer.

    Weights are matched by (layer, linear) of the LLM's decoder layers only (`names.decoder_linear_of`), so a
    vregion checkpoint can be compared with another one, with the LLM's own HF state dict or with an HF LLaVA
    folder; a vision tower's encoder layers, which share the `layers.<i>.self_attn.q_proj` tail, never count.
    """
    def linears(state_dict: Mapping[str, torch.Tensor]) -> dict[tuple[int, str], torch.Tensor]:
        found = {}
        for name, w in state_dict.items():
            key = decoder_linear_of(name)
            if key is not None and key[1] in PARAM_LINEARS:
                found[key] = w
        return found

    new_w, old_w = linears(trained), linears(base)
    out: dict[int, dict] = {}
    for key, w_new in sorted(new_w.items()):
        if key not in old_w:
            raise KeyError(f"base state dict lacks layer {key[0]} {key[1]}")
        new, old = w_new.double().flatten(), old_w[key].double().flatten()
        diff = torch.linalg.vector_norm(new - old)
        cos = F.cosine_similarity(new, old, dim=0, eps=1e-12).clamp(-1.0, 1.0)
        row = out.setdefault(key[0], {"param_l2": 0.0, "param_angular": 0.0, "param_relative": 0.0})
        row["param_l2"] += float(diff)
        row["param_angular"] += float(torch.arccos(cos) / math.pi)
        row["param_relative"] += float(diff / torch.linalg.vector_norm(old).clamp_min(1e-12))
    return out


def add_parameter_change(table: list[LayerStats], change: Mapping[int, dict]) -> list[LayerStats]:
    """Fill the param_* fields of `table` in place from `parameter_change`'s result; returns table."""
    for row in table:
        for key, value in change.get(row.layer, {}).items():
            setattr(row, key, value)
    return table
