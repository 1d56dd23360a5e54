"""`vregion bench --plan`: an analytic cost model (parameters, FLOPs, memory per GPU, wall time) from model shapes.

Nothing here builds weights: an LLM is its shape (`LLMShape`), a vision tower its parameter count, token
count and width (`VisionShape`), both read offline from configs or known hub ids (`bench.shapes`); a
compared setting is a `bench.variant.Variant`. The model answers "what does a visual region save before I
rent GPUs": trainable parameters, FLOPs per optimizer step actually done, memory per GPU under ZeRO 0-3,
and the wall time of one epoch at an assumed (or measured) throughput. Every estimate is documented where
it is made; the memory model ignores allocator fragmentation beyond a fixed reserve, so treat "fits" near
the limit as "measure it".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from vregion.bench.shapes import VLMShape, shape_from_config
from vregion.bench.variant import Variant, parse_variant
from vregion.compress.schedule import scale_layer
from vregion.config import Config, DeepSpeedConfig, RegionConfig
from vregion.region.apply import region_layers_for

GB = 1e9
# bf16 dense tensor-core peaks (SXM parts; the H100 PCIe card's is 756)
PEAK_TFLOPS = {"h100": 989.0, "h200": 989.0, "a100": 312.0, "h100-pcie": 756.0}
TEXT_TOKENS_ESTIMATE = 256  # assumed text tokens per LLaVA-665K sample (single image) when not measured
RESERVE_BYTES = 2.0 * GB  # CUDA context, NCCL buffers, allocator slack: not modelled, so reserved
# The compared variants (`bench.variant` names, with optional @K/S pooling).
PLAN_VARIANTS = ("full", "region", "region-lora", "region@2/8", "region-lora@2/8")


# ------------------------------------------------------------------------------------------ parameters
def param_counts(shape: VLMShape) -> dict[str, int]:
    """Parameters per component; `layer` is one decoder layer, `layers` all of them."""
    llm = shape.llm
    counts = {
        "vision": shape.vision.params,
        "projector": shape.projector_params,
        "embeddings": llm.vocab * llm.hidden,
        "layer": llm.layer_params,
        "layers": llm.layers * llm.layer_params,
        "norm": llm.hidden,
        "lm_head": 0 if llm.tied else llm.vocab * llm.hidden,
    }
    counts["total"] = sum(v for k, v in counts.items() if k != "layer")
    return counts


def trainable_params(shape: VLMShape, region: RegionConfig) -> dict[str, int]:
    """Trainable parameters per component under `region`, mirroring `vregion.region.trainable_names`.

    `region` and `lora` are the region layers' parameters (mode full) or their adapters (mode lora);
    `lora_total` counts every adapter (they are weights too, trainable or not).
    """
    llm, counts = shape.llm, param_counts(shape)
    layers = region_layers_for(region, llm.layers)
    whole = region.strategy == "all" and region.mode == "full"
    lora = llm.lora_params(region.lora.r) * len(layers) if region.mode == "lora" else 0
    out = {
        "vision": counts["vision"] if region.train_vision else 0,
        "projector": counts["projector"] if region.train_projector else 0,
        "region": counts["layers"] if whole else (lora if region.mode == "lora" else len(layers) * llm.layer_params),
        "embeddings": counts["embeddings"] if whole or region.train_embeddings or (llm.tied and region.train_lm_head)
        else 0,
        "lm_head": counts["lm_head"] if whole or region.train_lm_head else 0,
        "norm": 0,
    }
    if whole or region.train_norms:
        full_region = len(layers) if region.mode == "full" and not whole else (llm.layers if whole else 0)
        out["norm"] = llm.hidden + (0 if whole else 2 * llm.hidden * (llm.layers - full_region))
    out["total"] = sum(out.values())
    out["lora_total"] = lora
    return out


# --------------------------------------------------------------------------------------------- FLOPs
def layer_tokens(shape: VLMShape, tokens: int, pooling: Optional[tuple[int, int]]) -> list[int]:
    """Sequence length entering each decoder layer: layers >= K see ceil(V / S) instead of V visual tokens."""
    if pooling is None:
        return [tokens] * shape.llm.layers
    k = scale_layer(pooling[0], shape.llm.layers) if pooling[0] else 0
    v = shape.vision.tokens
    pooled = tokens - v + -(-v // pooling[1])
    return [tokens if i < k else pooled for i in range(shape.llm.layers)]


@dataclass
class Flops:
    """FLOPs for one sample; `model` = forward + backward, `total` adds gradient-checkpointing recompute."""

    forward: float = 0.0
    backward: float = 0.0
    recompute: float = 0.0

    @property
    def model(self) -> float:
        return self.forward + self.backward

    @property
    def total(self) -> float:
        return self.model + self.recompute


def lowest_trainable(shape: VLMShape, region: RegionConfig) -> int:
    """Index of the lowest decoder layer with trainable weights; -1 when something at the input trains
    (projector, vision, embeddings, every layer's norms), so gradients flow through every layer."""
    layers = region_layers_for(region, shape.llm.layers)
    below = region.train_vision or region.train_projector or region.train_embeddings or region.train_norms
    if below or (region.strategy == "all" and region.mode == "full"):
        return -1
    return min(layers, default=shape.llm.layers)


def sample_flops(shape: VLMShape, variant: Variant, tokens: int, gradient_checkpointing: bool = False,
                 head_tokens: Optional[float] = None) -> Flops:
    """FLOPs of one training sample of `tokens` LLM tokens (visual tokens included).

    Forward: 2 * params * tokens per linear, + 4 * T^2 * d per attention (QK^T and PV, causal mask not
    halved, as sdpa/flash kernels on padded batches mostly do not skip it). Backward of a module: the
    activation gradient (~= its forward; 2x forward for attention: dP, dV, dQ, dK) when anything below it
    trains, + the weight gradient (~= the forward of its trainable weights: the adapters only for LoRA).
    The frozen vision tower runs forward only. With gradient checkpointing, every decoder layer that takes
    part in backward runs its forward again. The output head runs on `head_tokens` positions (default: every
    output token; vregion's training forward computes logits only where a label is supervised, so pass the
    supervised count, a mean per sample, to get the FLOPs it actually does).
    """
    llm, region = shape.llm, variant.region
    vis, f = shape.vision, Flops()
    f.forward += vis.forward_flops
    proj = 2 * shape.projector_params * vis.tokens
    f.forward += proj
    train = trainable_params(shape, region)
    layers = set(region_layers_for(region, llm.layers))
    whole = region.strategy == "all" and region.mode == "full"
    lora_layer = llm.lora_params(region.lora.r) if region.mode == "lora" else 0
    lowest = lowest_trainable(shape, region)
    if region.train_projector or region.train_vision:
        f.backward += proj  # weight gradient
    if region.train_vision:
        f.backward += proj + 2 * (f.forward - proj)  # projector activation grad + the tower's both gradients
    lengths = layer_tokens(shape, tokens, variant.pooling)
    for i, t in enumerate(lengths):
        lin = 2 * llm.linear_params * t + (2 * lora_layer * t if i in layers else 0)
        attn = 4 * t * t * llm.heads * llm.hd
        f.forward += lin + attn
        if i > lowest:
            f.backward += lin + 2 * attn  # activation gradient
        if whole or (i in layers and region.mode == "full"):
            f.backward += 2 * llm.linear_params * t  # weight gradient
        elif i in layers:
            f.backward += 2 * lora_layer * t
        if gradient_checkpointing and i >= lowest:
            f.recompute += lin + attn
    head = 2 * llm.vocab * llm.hidden * (lengths[-1] if head_tokens is None else head_tokens)
    f.forward += head
    f.backward += head * (lowest < llm.layers) + (head if train["lm_head"] or (llm.tied and train["embeddings"]) else 0)
    return f


def mfu(flops_per_step: float, step_s: float, n_gpus: int, peak_tflops: float) -> float:
    """Model FLOPs utilisation: FLOPs done per second over the peak of all GPUs."""
    return flops_per_step / step_s / (n_gpus * peak_tflops * 1e12)


def peak_tflops(gpu: str) -> float:
    """`h100` | `h200` | `a100`, or a number of TFLOP/s."""
    if gpu.lower() in PEAK_TFLOPS:
        return PEAK_TFLOPS[gpu.lower()]
    try:
        return float(gpu)
    except ValueError:
        raise ValueError(f"unknown GPU {gpu!r}; valid: {', '.join(PEAK_TFLOPS)} or a peak in TFLOP/s") from None


def known_gpu(device_name: str) -> Optional[str]:
    """The PEAK_TFLOPS key named in a CUDA device name ("NVIDIA H100 80GB HBM3" -> "h100"), or None."""
    name = device_name.lower()
    if "h100" in name and "pcie" in name:
        return "h100-pcie"
    return next((key for key in PEAK_TFLOPS if key in name), None)


# -------------------------------------------------------------------------------------------- memory
def activation_bytes(shape: VLMShape, variant: Variant, micro_tokens: int, tokens: int,
                     gradient_checkpointing: bool, bytes_per: int = 2) -> float:
    """Activations kept for backward on one GPU, for a micro-batch of `micro_tokens` tokens.

    Per token, a llama layer saves (elements): its input and the attention-norm output (2h), q, k, v
    (h + 2 kv), the attention output (h; sdpa keeps no T x T scores), the MLP-norm input and output (2h),
    gate, up, silu(gate) and their product (4i): 5h + 2kv + 4i, at `bytes_per` bytes. Layers below the
    lowest trainable module save nothing. With checkpointing, a layer keeps only its input (h) and one
    layer's full set is live during its recompute. Logits add 6 bytes x vocab per output token (bf16
    logits + their fp32 upcast for the loss). Pooled layers scale by their shorter length.
    """
    llm, region = shape.llm, variant.region
    full_layer = 5 * llm.hidden + 2 * llm.kv_heads * llm.hd + 4 * llm.intermediate
    lowest = lowest_trainable(shape, region)
    scale = micro_tokens / tokens
    lengths = [t * scale for i, t in enumerate(layer_tokens(shape, tokens, variant.pooling)) if i >= lowest]
    if gradient_checkpointing:
        kept = sum(lengths) * llm.hidden + max(lengths, default=0) * full_layer
    else:
        kept = sum(lengths) * full_layer
    logits = 6 * llm.vocab * layer_tokens(shape, tokens, variant.pooling)[-1] * scale
    return kept * bytes_per + logits


def memory_per_gpu(shape: VLMShape, variant: Variant, ds: DeepSpeedConfig, n_gpus: int, micro_batch: int,
                   tokens: int, gradient_checkpointing: bool) -> dict[str, float]:
    """Bytes per GPU (and on CPU for offload) by kind.

    Weights (every parameter, frozen ones too, adapters included) at 2 bytes (bf16/fp16) or 4 (fp32);
    gradients of trainable parameters at the same width; optimizer state of trainable parameters: fp32
    master (4 bytes, only with 16-bit training) + two fp32 Adam moments (8 bytes). ZeRO >= 1 partitions
    the optimizer state over `n_gpus`, >= 2 the gradients too, 3 the weights too (+ two layers gathered
    at a time); offload moves optimizer state (and with offload_params, ZeRO-3 weights) to CPU.
    """
    width = 4 if ds.precision == "fp32" else 2
    train = trainable_params(shape, variant.region)
    params = param_counts(shape)["total"] + train["lora_total"]
    n, stage = n_gpus, ds.zero_stage
    m = {"weights": params * width / (n if stage == 3 else 1)}
    if stage == 3:
        m["weights"] = 0.0 if ds.offload_params else m["weights"]
        m["weights"] += 2 * shape.llm.layer_params * width  # layers gathered for compute / prefetch
    m["grads"] = train["total"] * width / (n if stage >= 2 else 1)
    master = 0 if ds.precision == "fp32" else 4
    optim = train["total"] * (master + 8) / (n if stage >= 1 else 1)
    m["adam_moments"] = train["total"] * 8 / (n if stage >= 1 else 1)
    m["optimizer"] = 0.0 if ds.offload_optimizer else optim
    m["activations"] = activation_bytes(shape, variant, micro_batch * tokens, tokens, gradient_checkpointing, width)
    m["reserve"] = RESERVE_BYTES
    m["gpu_total"] = m["weights"] + m["grads"] + m["optimizer"] + m["activations"] + m["reserve"]
    m["cpu"] = (optim if ds.offload_optimizer else 0) + (params * width / n if stage == 3 and ds.offload_params else 0)
    return m


# ---------------------------------------------------------------------------------------------- plan
@dataclass
class PlanRow:
    variant: str
    trainable: int
    flops_per_sample: float  # model FLOPs (forward + backward), for MFU
    memory: dict
    tokens_per_s: float
    hours: float
    gpu_hours: float
    fits: bool


def plan_rows(shape: VLMShape, cfg: Config, n_gpus: int, peak: float, samples: int = 665_000,
              tokens_per_sample: Optional[int] = None, mfu_assumed: float = 0.4,
              variants: tuple[str, ...] = PLAN_VARIANTS, gpu_memory_gb: float = 80.0,
              padding: Optional[dict] = None) -> list[PlanRow]:
    """One row per variant: trainable params, FLOPs, memory per GPU, and one epoch's wall time at `mfu_assumed`.

    Throughput is tokens/s = mfu * peak * n_gpus / (FLOPs per token incl. recompute); the same MFU for every
    variant, which flatters light variants whose fixed costs (data, optimizer, communication) weigh more.
    `padding` (data mode -> computed positions per real token, `bench.padding`) makes each variant pay for the
    padding its micro-batches carry; tokens/s then counts real tokens. Without it, no padding is assumed.
    """
    tokens = tokens_per_sample or default_tokens_per_sample(shape, cfg)
    rows = []
    for spec in variants:
        v = parse_variant(spec, cfg.region)
        overhead = 1.0 if padding is None else padding[v.data]
        computed = round(tokens * overhead)  # positions per sample, padding included
        gc = cfg.model.gradient_checkpointing
        f = sample_flops(shape, v, computed, gc)
        mem = memory_per_gpu(shape, v, cfg.deepspeed, n_gpus, cfg.train.micro_batch_size, computed, gc)
        tps = mfu_assumed * peak * 1e12 * n_gpus / (f.total / computed) / overhead  # real tokens/s
        hours = samples * tokens / tps / 3600
        rows.append(PlanRow(spec, trainable_params(shape, v.region)["total"], f.model, mem, tps, hours,
                            hours * n_gpus, mem["gpu_total"] <= gpu_memory_gb * GB))
    return rows


def default_tokens_per_sample(shape: VLMShape, cfg: Config) -> int:
    """Visual tokens + TEXT_TOKENS_ESTIMATE, capped by data.max_length."""
    return min(cfg.data.max_length, shape.vision.tokens + TEXT_TOKENS_ESTIMATE)


def _sig(x: float) -> str:
    """3 significant figures without exponent (0.0123, 1.23, 1,234): small models' costs must not read as 0.0."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{float(f'{x:.3g}'):g}"


def format_plan(rows: list[PlanRow], title: str = "", gpu_memory_gb: float = 80.0) -> str:
    """Markdown table of plan rows; memory in GB (1e9 bytes)."""
    lines = [title] if title else []
    lines += [f"| variant | trainable params | TFLOPs/sample | weights | grads | optimizer | activations | "
              f"GPU total (GB) | fits in {gpu_memory_gb:g} GB? | tokens/s | wall (h) | GPU-hours |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = {k: v / GB for k, v in r.memory.items()}
        cpu = f" (+{m['cpu']:.0f} CPU)" if m["cpu"] else ""
        lines.append(
            f"| {r.variant} | {r.trainable / 1e6:,.1f}M | {_sig(r.flops_per_sample / 1e12)} | {m['weights']:.1f} | "
            f"{m['grads']:.1f} | {m['optimizer']:.1f} | {m['activations']:.1f} | {m['gpu_total']:.1f}{cpu} | "
            f"{'yes' if r.fits else 'no'} | {r.tokens_per_s:,.0f} | {_sig(r.hours)} | {_sig(r.gpu_hours)} |"
        )
    return "\n".join(lines)


PROFILE_VARIANTS = ("full", "full+grouped", "full+packed", "region", "region+packed", "region@2/8",
                    "region@2/8+packed")


def plan_text(cfg: Config, n_gpus: int = 1, gpu: str = "h100", samples: int = 665_000,
              tokens_per_sample: Optional[int] = None, profile: Optional[str] = None) -> str:
    """The `vregion bench --plan` report for one resolved stage config; with a length `profile` (e.g.
    llava-665k) tokens per sample and each data mode's padding come from the profile's lengths."""
    shape = shape_from_config(cfg.model)
    padding, variants, note = None, PLAN_VARIANTS, ""
    if profile is not None:
        from vregion.bench.padding import estimate_padding, profile_lengths

        lengths = profile_lengths(profile, shape.vision.tokens, cfg.data.max_length)
        estimate = estimate_padding(lengths, cfg.train.micro_batch_size, cfg.data.max_length)
        padding, variants = estimate.cost, PROFILE_VARIANTS
        tokens = tokens_per_sample or round(estimate.real_tokens_per_sample)
        note = (f"profile {profile}: {tokens} real tokens/sample; padding share of computed positions: padded "
                f"{estimate.share(None):.1%}, grouped {estimate.share('grouped'):.1%}, packed "
                f"{estimate.share('packed'):.1%} (micro-batch {cfg.train.micro_batch_size}, rows of "
                f"{cfg.data.max_length}); tokens/s counts real tokens\n")
    tokens = tokens_per_sample or (tokens if profile else default_tokens_per_sample(shape, cfg))
    rows = plan_rows(shape, cfg, n_gpus, peak_tflops(gpu), samples, tokens, variants=variants, padding=padding)
    title = (f"plan: {n_gpus} x {gpu}, ZeRO-{cfg.deepspeed.zero_stage} {cfg.deepspeed.precision}, micro-batch "
             f"{cfg.train.micro_batch_size}, {tokens} tokens/sample, gradient checkpointing "
             f"{'on' if cfg.model.gradient_checkpointing else 'off'}, {samples:,} samples, 40% MFU assumed\n")
    return format_plan(rows, title + note)
