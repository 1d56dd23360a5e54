"""`vregion bench`: training variants timed side by side, interleaved so machine drift cancels.

Each region setting (full fine-tuning, region in full mode, region with LoRA, ...) gets its own DeepSpeed
engine on the same model, data and seed; variants that differ only in visual-token pooling (`region@2/8`)
share their setting's engine and switch the pooling hook before each of their steps, exactly as training
switches compression stages. Rounds run A B C A B C ...; every round times a few optimizer steps of each
variant, so a slow patch of a shared machine hits all variants alike. Ratios are to the first variant.
`hf-trainer` is the same model as `full` trained by transformers.Trainer as Hugging Face LLaVA
(`bench.hf_trainer`), paused between its steps so it interleaves like the others; put it first to have every
ratio against it. Each row records its first step's loss; with `full` and `hf-trainer` both present the notes
compare the two (same weights, same first batch: they must agree).

Per variant: step time (and its forward / backward / optimizer parts), samples/s, tokens/s, achieved TFLOP/s
and MFU (FLOPs from `plan.sample_flops` for each real batch), optimizer state, peak memory, and the wall time
and GPU-hours of a full run projected from the measurements (`bench.report`). Peak memory of a variant is
what its engine still holds after being built and warmed up (engines are built one after another, so each
one's growth is its own) + the most one of its steps adds on top: CUDA allocator bytes, or on CPU the RSS
(`bench.probe.MemoryMeter`). It is measured during the untimed warm-up, because handing freed memory back
to the OS before each reading would make the next step pay page faults.
"""

from __future__ import annotations

import copy
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Union

import torch

from vregion.bench import plan, probe, report
from vregion.bench.hf_trainer import HFTrainerRun, build_hf_trainer, check_config
from vregion.bench.report import Projection, StepTiming
from vregion.bench.shapes import VisionShape, VLMShape, llm_shape, vision_shape
from vregion.bench.variant import HF_TRAINER, Variant, parse_variant
from vregion.compress import (
    IGNORE_INDEX,
    PoolingSetting,
    apply_stage,
    build_schedule,
    compression_ratio,
    get_schedule,
    scale_layer,
)
from vregion.compress.schedule import REFERENCE_LAYERS, Schedule
from vregion.config import Config
from vregion import distributed as dist
from vregion.engine.ds_config import grad_accum_steps
from vregion.engine.factory import build_engine
from vregion.engine.inputs import StageData, model_inputs
from vregion.engine.trainer import model_dtype, optimizer_state_numel, seed_everything
from vregion.models import build_vlm
from vregion.region import apply_region

DEFAULT_SCHEDULE = "four-wider-then-deeper"  # LLaVolta's reference default: heavy -> light -> none


@dataclass
class EngineRun:
    """One region setting's DeepSpeed engine and data stream, shared by its pooling variants."""

    base: str
    cfg: Config
    engine: object
    data: StageData
    shape: Optional[VLMShape]  # None: the plan has no FLOP model for this LLM family (no TFLOP/s, MFU)
    trainable: int  # trainable elements of the whole model (not a rank's ZeRO-3 partition)
    accum: int
    dtype: torch.dtype
    state_bytes: int = 0  # optimizer state on this rank (ZeRO >= 1 splits it over the ranks)
    resident_bytes: Optional[int] = None  # memory still in use after building and warming up this engine
    streams: dict = field(default_factory=dict)  # data mode -> batch iterator, shared by that mode's variants
    note: Optional[str] = None  # said under the table about this setting's rows

    def batches(self, variant: Variant) -> Iterator:
        """The training batches of `variant`'s data mode (padded, packed, grouped) on this engine's model."""
        key = tuple(sorted(variant.data_overrides(self.cfg.data.group_by_length).items()))
        if key not in self.streams:
            cfg = copy.deepcopy(self.cfg)
            for name, value in key:
                setattr(cfg.data, name, value)
            data = StageData(cfg, self.engine.module, self.data.tokenizer)
            self.streams[key] = iter(data.train_loader())
        return self.streams[key]

    def optimizer_state_numel(self) -> int:
        return optimizer_state_numel(self.engine)

    def close(self) -> None:
        """Nothing to stop (an `HFTrainerRun` has a worker thread to end)."""


@dataclass
class VariantRun:
    """One compared variant: an engine, a pooling stage, and its timed steps."""

    spec: str
    owner: EngineRun
    stage: PoolingSetting
    variant: Variant
    steps: list = field(default_factory=list)
    step_peak_bytes: int = 0  # most memory its warm-up steps added above what was in use before them
    batches: Optional[Iterator] = None
    losses: list = field(default_factory=list)  # mean loss of each of its steps, warm-up included
    fresh: bool = False  # its first step was its engine's first (the untrained weights)
    _flops: dict = field(default_factory=dict)


def schedule_variants(base: str, schedule: Union[str, Schedule]) -> list[str]:
    """The base variant plus one variant per distinct compressed phase of a schedule."""
    schedule = get_schedule(schedule) if isinstance(schedule, str) else schedule
    compressed = [f"{base}@{p.layer}/{p.stride}" for p in schedule.phases if p.layer is not None]
    return [base] + list(dict.fromkeys(compressed))


def default_variants(cfg: Config) -> tuple[list[str], Schedule]:
    """The default matrix: full, region, region-lora, full at each compressed stage of the config's schedule
    (else DEFAULT_SCHEDULE), and region at the schedule's heaviest stage; with the schedule for the average row."""
    schedule = build_schedule(cfg.compress) or get_schedule(DEFAULT_SCHEDULE)
    compressed = [p for p in schedule.phases if p.layer is not None]
    variants = ["full", "region", "region-lora"] + schedule_variants("full", schedule)[1:]
    if compressed:
        heaviest = max(compressed, key=lambda p: compression_ratio(REFERENCE_LAYERS, p.layer, p.stride))
        variants.append(f"region@{heaviest.layer}/{heaviest.stride}")
    return variants, schedule


def bench_shape(cfg: Config, model) -> Optional[VLMShape]:
    """The plan's shape of the built model, or None for LLM families it does not model (e.g. gemma3).
    Towers the plan has no formula for (a backbone other than CLIP, SigLIP, EfficientNet-Lite0) get their
    parameter count from the module and their forward FLOPs counted on one image by torch's FLOP counter."""
    try:
        llm = llm_shape(cfg.model)
    except ValueError as e:
        print(f"bench: no FLOP model ({e}); TFLOP/s and MFU are left out", flush=True)
        return None
    try:
        vision = vision_shape(cfg.model)
    except ValueError:
        from torch.utils.flop_counter import FlopCounterMode

        tower = model.vision
        param = next(tower.parameters())
        image = torch.zeros(1, 3, tower.image_size, tower.image_size, device=param.device, dtype=param.dtype)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            tower(image)
        params = sum(p.numel() for p in tower.parameters())
        vision = VisionShape(params, tower.num_tokens, tower.hidden_size, 0, float(counter.get_total_flops()))
    return VLMShape(llm, vision, cfg.model.projector.type, cfg.model.projector.hidden_size)


def _build_engine(cfg: Config, variant: Variant) -> EngineRun:
    """The engine of `variant`'s region setting, built as training builds it (`engine.factory`)."""
    seed_everything(cfg.run.seed)
    model, tokenizer = build_vlm(cfg.model, dtype=model_dtype(cfg))
    shape = bench_shape(cfg, model)
    apply_region(model, variant.region)
    engine, _, _, groups = build_engine(cfg, model, total_steps=10**6)
    data = StageData(cfg, model, tokenizer)
    accum = grad_accum_steps(cfg.train, dist.world_size())
    return EngineRun(variant.base, cfg, engine, data, shape, groups.numel, accum, model_dtype(cfg))


def _attach(owner: Union[EngineRun, HFTrainerRun], variant: Variant) -> VariantRun:
    pooling = variant.pooling
    if isinstance(owner, HFTrainerRun):  # no pooling (parse_variant refuses it); the Trainer reads its own stream
        return VariantRun(variant.name, owner, PoolingSetting(0, None, None), variant)
    layers = owner.engine.module.runner.num_layers
    stage = PoolingSetting(0, None, None) if pooling is None else PoolingSetting(0, scale_layer(pooling[0], layers), pooling[1])
    return VariantRun(variant.name, owner, stage, variant, batches=owner.batches(variant))


def _now(cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()  # time the work, not its launch
    return time.perf_counter()


def _batch_flops(run: VariantRun, batch: dict) -> Optional[float]:
    """Model FLOPs (forward + backward) of a padded batch: every row costs the padded length (a packed row
    costs its full length too: attention over a block-diagonal mask is computed densely without flash)."""
    if run.owner.shape is None:
        return None
    samples, length = batch["input_ids"].shape
    supervised = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())  # where the training head runs
    key = (length, supervised)
    if key not in run._flops:
        f = plan.sample_flops(run.owner.shape, run.variant, length, run.owner.cfg.model.gradient_checkpointing,
                              head_tokens=supervised / samples)
        run._flops[key] = samples * f.model
    return run._flops[key]


def _count(t: StepTiming, run: VariantRun, batch: dict) -> None:
    """Add a micro-batch's data (tokens, positions, samples) and FLOPs to a step's timing."""
    t.tokens += float(batch["attention_mask"].sum())
    t.positions += float(batch["attention_mask"].numel())  # rows x padded length: what the model ran on
    t.samples += int(batch["num_samples"])  # samples, not rows: a packed row holds several
    flops = _batch_flops(run, batch)
    t.flops = None if flops is None or t.flops is None else t.flops + flops


def _hf_trainer_step(run: VariantRun) -> StepTiming:
    """One optimizer step of the Trainer's own loop; data and FLOPs counted on the vregion batches it consumed
    (FLOPs: what `full` needs for them, so TFLOP/s and MFU compare the same work)."""
    t, batches, loss = run.owner.step()
    for batch in batches:
        _count(t, run, batch)
    run.losses.append(loss)
    return t


def timed_step(run: VariantRun) -> StepTiming:
    """One optimizer step of `run` (grad_accum micro-batches) with its pooling set, timed in parts."""
    owner = run.owner
    if isinstance(owner, HFTrainerRun):
        return _hf_trainer_step(run)
    apply_stage(owner.engine.module, run.stage, impl=owner.cfg.compress.impl)
    cuda = dist.device().type == "cuda"
    t = StepTiming(0.0, 0.0, 0.0, 0.0, 0.0, 0, 0.0)
    losses = []
    start = _now(cuda)
    for _ in range(owner.accum):
        batch = next(run.batches)
        inputs = model_inputs(batch, dist.device(), owner.dtype)
        t0 = _now(cuda)
        out = owner.engine(**inputs)
        t1 = _now(cuda)
        owner.engine.backward(out["loss"])
        t2 = _now(cuda)
        owner.engine.step()  # the optimizer runs at the accumulation boundary; other calls are cheap
        t3 = _now(cuda)
        t.forward, t.backward, t.optimizer = t.forward + t1 - t0, t.backward + t2 - t1, t.optimizer + t3 - t2
        losses.append(out["loss"].detach())  # read after the step: no extra sync inside it
        _count(t, run, batch)
    t.seconds = _now(cuda) - start
    run.losses.append(float(sum(losses)) / len(losses))
    return t


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor() or "CPU")
    return f"CPU: {model}, {torch.get_num_threads()} torch threads"


def _build_and_warm_up(cfg: Config, variants: list[str], steps: int, meter: probe.MemoryMeter, out_dir: Path,
                       engines: dict) -> list:
    """One engine per region setting (into `engines`, base name -> owner), built one after another so each one's
    memory growth is its own, and each variant warmed up (untimed) for `steps` steps, its peak memory measured
    there."""
    runs = []
    parsed = [parse_variant(spec, cfg.region) for spec in variants]
    for variant in parsed:
        if variant.base in engines:
            continue
        before = meter.settle() if meter.kind else 0
        owner = engines[variant.base] = (build_hf_trainer(cfg, variant, out_dir / HF_TRAINER, bench_shape)
                                         if variant.base == HF_TRAINER else _build_engine(cfg, variant))
        owned = [_attach(owner, v) for v in parsed if v.base == variant.base]
        owned[0].fresh = True
        timed_step(owned[0])  # creates the optimizer state, which then stays resident
        for run in owned:  # allocations, lazy inits, loader start-up; and each variant's step peak
            start = meter.start_peak() if meter.kind else 0
            for _ in range(steps):
                timed_step(run)
            if meter.kind:
                run.step_peak_bytes = max(0, meter.peak() - start)
        owner.state_bytes = owner.optimizer_state_numel() * 4  # fp32 Adam moments
        if meter.kind:
            owner.resident_bytes = meter.settle() - before
        runs += owned
    return sorted(runs, key=lambda r: variants.index(r.spec))


def _row(run: VariantRun, peak_tflops: float, projection: Projection) -> dict:
    """A variant's result row, with the plan's predictions of what was measured beside it."""
    owner, cfg = run.owner, run.owner.cfg
    peak_mem = None if owner.resident_bytes is None else owner.resident_bytes + run.step_peak_bytes
    predicted = {}
    if owner.shape is not None:
        memory = plan.memory_per_gpu(owner.shape, run.variant, cfg.deepspeed, dist.world_size(),
                                     cfg.train.micro_batch_size, 1, cfg.model.gradient_checkpointing)
        predicted = dict(plan_trainable_params=plan.trainable_params(owner.shape, run.variant.region)["total"],
                         plan_optimizer_state_bytes_per_rank=memory["adam_moments"])
    return report.variant_row(run.spec, run.steps, owner.trainable, owner.state_bytes, peak_tflops,
                              projection, peak_mem, step_losses=run.losses, note=owner.note, **predicted)


def _loss_check(runs: list[VariantRun], dtype: torch.dtype) -> Optional[dict]:
    """hf-trainer's first-step loss against full's, when both started from untrained weights on the first batch
    of the config's padded stream (so they must agree)."""
    by_spec = {r.spec: r for r in runs}
    reference, full = by_spec.get(HF_TRAINER), by_spec.get("full")
    if reference is None or full is None or not full.fresh:
        return None
    return report.loss_check(HF_TRAINER, reference.losses[0], "full", full.losses[0], dtype == torch.float32)


def check_variants(cfg: Config, variants: list[str]) -> None:
    """Refuse bad variant strings, and `hf-trainer` on a model LLaVA cannot hold, before any engine is built.

    Raises:
        ValueError: naming the variant and what is wrong with it.
    """
    for spec in variants:
        parse_variant(spec, cfg.region)
    if any(parse_variant(spec, cfg.region).base == HF_TRAINER for spec in variants):
        check_config(cfg)


def run_bench(cfg: Config, variants: list[str], rounds: int, steps_per_round: int, out_dir: Path,
              schedule: Optional[Union[str, Schedule]] = None, peak: Optional[str] = None,
              projection: Optional[Projection] = None, memory: bool = True) -> dict:
    """Time `variants` interleaved; write bench.json, bench.md and bench.png to `out_dir`; return {"meta", "rows"}.

    Args:
        schedule: a compression schedule (or preset name) whose whole-run average of the first variant is
            added as a last row; needs `<first>@K/S` for each compressed phase (see `schedule_variants`).
        peak: TFLOP/s for MFU: h100 | h200 | a100 | h100-pcie | a number; None: detect (`bench.probe`).
        projection: the full run that measured throughput is projected to (default: `Projection()`).
        memory: measure peak memory (CUDA allocator, or RSS on Linux/glibc CPUs).
    """
    check_variants(cfg, variants)  # a typo fails before any engine is built
    schedule = get_schedule(schedule) if isinstance(schedule, str) else schedule
    projection = projection or Projection()
    dist.init_distributed()
    cfg = copy.deepcopy(cfg)
    device, dtype = dist.device(), model_dtype(cfg)
    others = probe.OtherLoad()
    peak_tflops, peak_source = probe.resolve_peak(peak, dtype, device)
    meter = probe.MemoryMeter(device, enabled=memory)
    engines: dict = {}
    try:
        runs = _build_and_warm_up(cfg, variants, steps_per_round, meter, out_dir, engines)
        from tqdm import tqdm

        for _ in tqdm(range(rounds), desc="bench rounds", disable=not dist.is_main()):
            for run in runs:
                for _ in range(steps_per_round):
                    run.steps.append(timed_step(run))
    finally:
        for owner in engines.values():
            owner.close()
    rows = [_row(run, peak_tflops, projection) for run in runs]
    if schedule is not None:
        rows.append(report.schedule_average(rows, schedule, variants[0], peak_tflops, projection))
    report.add_ratios(rows)
    meta = {
        "device": _device_name(device), "dtype": str(dtype).removeprefix("torch."), "world_size": dist.world_size(),
        "rounds": rounds, "steps_per_round": steps_per_round, "micro_batch_size": cfg.train.micro_batch_size,
        "grad_accum": grad_accum_steps(cfg.train, dist.world_size()), "peak_tflops": peak_tflops,
        "peak_source": peak_source, "memory_kind": meter.kind,
        "projection": asdict(projection), "schedule": None if schedule is None else schedule.name,
        "other_processes_cores": others.cores(), "cpu_count": os.cpu_count(),
        "loss_check": _loss_check(runs, dtype),
    }
    if dist.is_main():
        paths = report.write_report(rows, meta, out_dir)
        print(paths["md"].read_text(), flush=True)
        print(f"wrote {paths['md']}, {paths['json']}, {paths['png']}", flush=True)
        report.log_wandb(rows, meta, cfg.run.wandb, out_dir, paths["png"])
    return {"meta": meta, "rows": rows}
