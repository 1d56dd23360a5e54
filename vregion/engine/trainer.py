"""The training loop of one stage: build, freeze, wrap in DeepSpeed, stream batches, log, checkpoint, resume."""

from __future__ import annotations

import json
import math
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from vregion import distributed as dist
from vregion.compress import CompressionController
from vregion.config import Config, to_dict
from vregion.constants import DTYPES
from vregion.data import consumed_samples
from vregion.engine import checkpoint
from vregion.engine.ds_config import grad_accum_steps
from vregion.engine.evaluate import held_out_accuracy, held_out_loss
from vregion.engine.factory import build_engine
from vregion.engine.inputs import StageData, model_inputs, supervised_tokens
from vregion.engine.metrics import MetricsLogger
from vregion.engine.prepare import FINAL
from vregion.engine.state_dict import gather_state_dict, merge_lora_state_dict
from vregion.models import build_vlm, save_state_dict
from vregion.region import apply_region, parameter_counts, parameter_table



# SLURM sends SIGTERM before preempting (and `#SBATCH --signal=USR1@120` a warning ahead of the time limit).
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """The run was asked to stop by a signal; a complete checkpoint of `step` was written first."""

    def __init__(self, step: int, signal_name: str | None = None):
        by = signal_name or "a signal"
        super().__init__(f"stopped by {by} after step {step}; checkpoint written, continue with --resume")
        self.step = step
        # The signal this rank received, or None when another rank's signal stopped the run (ranks stop
        # together): the batch script tells a cancel (SIGTERM) from a time-limit warning (SIGUSR1) by it.
        self.signal_name = signal_name


class NonFiniteLossError(RuntimeError):
    """Too many micro-batches with a NaN/inf loss: training would only diverge further."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_dtype(cfg: Config) -> torch.dtype:
    return DTYPES[cfg.deepspeed.precision]


def total_steps(cfg: Config, data: StageData, world_size: int) -> int:
    """Optimizer steps of this stage: `train.max_steps`, else epochs over the shards' sample count."""
    if cfg.train.max_steps is not None:
        return cfg.train.max_steps
    samples = data.train_sample_count()
    if samples is None:
        raise ValueError(
            "train.max_steps is unset and the train shards have no index.json sample counts; "
            "set train.max_steps or pack the shards with `vregion data pack`"
        )
    per_step = cfg.train.micro_batch_size * grad_accum_steps(cfg.train, world_size) * world_size
    return max(1, math.ceil(cfg.train.epochs * samples / per_step))


def optimizer_state_numel(engine) -> int:
    """Elements of optimizer state (exp_avg + exp_avg_sq ...) held by this rank."""
    inner = engine.optimizer
    while hasattr(inner, "optimizer") and not isinstance(inner, torch.optim.Optimizer):
        inner = inner.optimizer
    if not isinstance(inner, torch.optim.Optimizer):
        inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    total = 0
    for state in inner.state.values():
        total += sum(v.numel() for k, v in state.items() if torch.is_tensor(v) and v.dim() > 0)
    return total


class StageTrainer:
    """Trains one stage of a run into `stage_dir` (metrics.jsonl, checkpoints/, final/, summary.json)."""

    def __init__(self, cfg: Config, stage_dir: Path, resume: bool):
        self.nonfinite = 0
        self.cfg = cfg
        self.stage_dir = stage_dir
        self.ckpt_root = stage_dir / "checkpoints"
        self.resume = resume

    # ------------------------------------------------------------------------------------------- build
    def _build(self) -> None:
        cfg = self.cfg
        dist.init_distributed()  # no-op when the run already set it up
        seed_everything(cfg.run.seed)
        self.model, self.tokenizer = build_vlm(cfg.model, dtype=model_dtype(cfg))
        self.plan = apply_region(self.model, cfg.region)
        self.param_counts = parameter_counts(self.model, self.plan)
        if dist.is_main():
            print(parameter_table(self.model, self.plan), flush=True)
        self.data = StageData(cfg, self.model, self.tokenizer)
        self.compression = CompressionController(cfg.compress, self.model.runner.num_layers)
        self.total_steps = total_steps(cfg, self.data, dist.world_size())
        self.engine, _, self.scheduler, groups = build_engine(cfg, self.model, self.total_steps)
        self.group_names, self.trainable_numel = groups.names, groups.numel

    # ------------------------------------------------------------------------------------------ resume
    def _restore(self) -> tuple[int, int, Counter]:
        """(optimizer step, this rank's data position, skipped counts) to continue from."""
        tag = checkpoint.latest_tag(self.ckpt_root)
        if tag is None:
            return 0, 0, Counter()
        client, rank_state = checkpoint.load(self.engine, self.ckpt_root, tag)
        if dist.is_main():
            print(f"resuming {self.stage_dir.name} from {self.ckpt_root / tag}", flush=True)
        if self.compression.schedule is not None:
            expected = self.compression.at(client["step"], self.total_steps).index
            if client.get("compress_stage") != expected and dist.is_main():
                print(f"warning: the checkpoint was in compression stage {client.get('compress_stage')}, the "
                      f"configured schedule puts step {client['step']} in stage {expected}", flush=True)
        return client["step"], rank_state["data_position"], Counter(rank_state["skipped"])

    def _save(self, step: int, data_position: int, skipped: Counter) -> None:
        checkpoint.save(
            self.engine,
            self.ckpt_root,
            step,
            client_state={"step": step, "total_steps": self.total_steps, "compress_stage": self._pooling(step).index},
            rank_state={"data_position": data_position, "skipped": dict(skipped)},
            keep=self.cfg.train.keep_checkpoints,
        )

    # -------------------------------------------------------------------------------------- compression
    def _pooling(self, step: int):
        """Compression setting for the optimizer step about to run (see CompressionController.at)."""
        return self.compression.at(step, self.total_steps)

    def _held_out(self, step: int, dtype) -> dict:
        """Held-out loss (and with eval.in_training, VQA accuracy) under the inference compression setting,
        then back to the training setting."""
        self.compression.apply(self.engine.module, self.compression.inference)
        result = {"step": step, "eval_loss": held_out_loss(self.engine, self.data, self.cfg.train.eval_batches, dtype)}
        if self.cfg.eval.in_training and self.cfg.eval.vqa_shards:
            result["eval_vqa_accuracy"] = held_out_accuracy(self.engine.module, self.tokenizer, self.cfg)
        self.compression.apply(self.engine.module, self._pooling(min(step, self.total_steps - 1)))
        return result

    # -------------------------------------------------------------------------------------------- loop
    def _request_stop(self, signum, frame) -> None:
        self.stop_requested = True
        # The first signal names the stop: a cancel that follows a time-limit warning is still reported as
        # the warning that started it, the stop itself being the same checkpoint.
        self.stop_signal = self.stop_signal or signal.Signals(signum).name

    def run(self) -> dict:
        """Train the stage; on SIGTERM/SIGUSR1 finish the step, checkpoint, and raise Preempted."""
        self.stop_requested = False
        self.stop_signal = None
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {sig: signal.signal(sig, self._request_stop) for sig in PREEMPT_SIGNALS}
        try:
            return self._run()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def _run(self) -> dict:
        self._build()
        step, data_position, skipped = self._restore() if self.resume else (0, 0, Counter())
        logger = MetricsLogger(
            self.stage_dir,
            self.total_steps,
            step,
            self.cfg.run.wandb,
            run_name=f"{Path(self.cfg.run.output_dir).name}/{self.cfg.stage_name}",
            config=to_dict(self.cfg),
            enabled=dist.is_main(),
        )
        if step == 0 and self.cfg.train.eval_every and self.data.has_eval:
            logger.log(self._held_out(0, model_dtype(self.cfg)))  # the curve starts at the initial model
        batches = iter(self.data.train_loader(skip_samples=data_position))
        self.engine.train()
        accum = grad_accum_steps(self.cfg.train, dist.world_size())
        dtype = model_dtype(self.cfg)
        started = time.perf_counter()
        trained_tokens = trained_samples = 0.0
        last_eval = None
        while step < self.total_steps:
            pooling = self._pooling(step)
            if self.compression.schedule is not None:
                self.compression.apply(self.engine.module, pooling)
            lrs = self.scheduler.get_last_lr()  # the rates this step uses (stepping moves them to the next's)
            t0 = time.perf_counter()
            loss_sum = tokens = samples = 0.0
            # The loss is the mean over the step's supervised tokens (all micro-batches, all ranks), so packed
            # and padded runs, and micro-batches of different lengths, optimise the same objective.
            drawn = [(b, supervised_tokens(b)) for b in (next(batches) for _ in range(accum))]
            (step_tokens,) = dist.all_reduce_sum([float(sum(count for _, count in drawn))])
            scale = accum * dist.world_size() / max(step_tokens, 1.0)  # DeepSpeed divides by both
            while drawn:
                batch, count = drawn.pop(0)
                data_position += consumed_samples(batch)
                skipped.update(batch["skipped"])
                micro_loss = self.micro_step(batch, dtype, skipped, weight=count * scale)
                if micro_loss is None:
                    # a non-finite loss: the micro-batch is dropped and another one drawn in its place (the
                    # step's normaliser keeps the dropped one's tokens; a rare, logged event)
                    replacement = next(batches)
                    drawn.append((replacement, supervised_tokens(replacement)))
                    continue
                loss_sum += micro_loss * count
                tokens += float(batch["attention_mask"].sum())
                samples += batch["num_samples"]
            step += 1
            elapsed = time.perf_counter() - t0
            # One collective per step: the logged sums, and whether any rank was asked to stop (a signal may
            # reach ranks at different times; all must stop after the same step).
            loss_sum, tokens, samples, stop = dist.all_reduce_sum(
                [loss_sum, tokens, samples, 1.0 if self.stop_requested else 0.0]
            )
            loss = loss_sum / max(step_tokens, 1.0)
            trained_tokens += tokens
            trained_samples += samples
            if step % self.cfg.train.log_every == 0 or step == self.total_steps:
                record = self._record(step, loss, lrs, elapsed, tokens, samples, skipped)
                if self.compression.schedule is not None:
                    record.update(compress_stage=pooling.index,
                                  compress_layer=pooling.layer if pooling.compressed else -1,
                                  compress_stride=pooling.stride or 1)
                logger.log(record)
                logger.progress(step, loss, record["tokens_per_s"])
            every = self.cfg.train.eval_every
            if every and step % every == 0 and step < self.total_steps and self.data.has_eval:
                last_eval = self._held_out(step, dtype)
                logger.log(last_eval)
            save_every = self.cfg.train.save_every
            if step == self.total_steps or (save_every and step % save_every == 0):
                self._save(step, data_position, skipped)
            if stop and step < self.total_steps:
                if not (save_every and step % save_every == 0):
                    self._save(step, data_position, skipped)
                logger.close()
                raise Preempted(step, self.stop_signal)
        wall = time.perf_counter() - started
        if self.data.has_eval:
            last_eval = self._held_out(step, dtype)
            logger.log(last_eval)
        logger.close()
        summary = self._finish(step, wall, trained_tokens, trained_samples, skipped, last_eval)
        return summary

    def micro_step(self, batch: dict, dtype: torch.dtype, skipped: Counter, weight: float = 1.0) -> float | None:
        """Forward, backward and (at accumulation boundaries) optimizer step of one micro-batch.

        `weight` scales the micro-batch's mean loss in the backward (its share of the step's supervised tokens,
        times the accumulation steps and ranks DeepSpeed averages over); the unscaled mean is returned.

        A non-finite loss on any rank skips the backward on every rank (ranks must stay in step under ZeRO),
        is counted as `skipped_nonfinite_loss`, and too many abort the run with a clear error.
        """
        out = self.engine(**model_inputs(batch, dist.device(), dtype))
        loss = out["loss"]
        (bad,) = dist.all_reduce_sum([0.0 if bool(torch.isfinite(loss.detach())) else 1.0])
        if bad:
            self.nonfinite += 1
            if dist.is_main():
                skipped["nonfinite_loss"] += 1
            if self.nonfinite > self.cfg.train.max_nonfinite:
                raise NonFiniteLossError(
                    f"{self.nonfinite} micro-batches had a non-finite loss (limit train.max_nonfinite="
                    f"{self.cfg.train.max_nonfinite}); lower the learning rate, check the data, or use fp32/bf16"
                )
            return None
        self.engine.backward(loss * weight)
        self.engine.step()
        return loss.item()

    def _record(self, step: int, loss: float, lrs: list[float], elapsed: float, tokens: float, samples: float,
                skipped: Counter) -> dict:
        record = {
            "step": step,
            "loss": loss,
            "lr": lrs[-1],
            "step_time_s": elapsed,
            "tokens_per_s": tokens / elapsed,
            "samples_per_s": samples / elapsed,
        }
        record.update({f"lr_{name}": lr for name, lr in zip(self.group_names, lrs)})
        counts = _gather_counts(skipped)
        record.update({f"skipped_{k}": v for k, v in counts.items()})
        return record

    # ------------------------------------------------------------------------------------------ finish
    def _finish(self, step, wall, tokens, samples, skipped, last_eval: dict | None) -> dict:
        """Write the final vregion checkpoint (LoRA merged) and summary.json."""
        state = gather_state_dict(self.engine)
        opt_numel = dist.all_reduce_sum([float(optimizer_state_numel(self.engine))])[0]
        summary = {
            "stage": self.cfg.stage_name,
            "steps": step,
            "world_size": dist.world_size(),
            "region_layers": self.plan.layers,
            "region_mode": self.plan.mode,
            "trainable_params": self.trainable_numel,
            "params_by_component": self.param_counts,
            "optimizer_state_numel": int(opt_numel),
            "wall_time_s": wall,
            "tokens_per_s": tokens / wall if wall else 0.0,
            "samples_per_s": samples / wall if wall else 0.0,
            "skipped": _gather_counts(skipped),
            "eval_loss": last_eval["eval_loss"] if last_eval else None,
        }
        if last_eval and "eval_vqa_accuracy" in last_eval:
            summary["eval_vqa_accuracy"] = last_eval["eval_vqa_accuracy"]
        if dist.is_main():
            if self.plan.mode == "lora" and self.plan.layers:
                lora = self.cfg.region.lora
                state = merge_lora_state_dict(state, lora.alpha / lora.r)
            saved = to_dict(self.cfg)
            saved["model"]["init_from"] = None  # the weights are in this checkpoint
            save_state_dict(state, saved, self.tokenizer, self.stage_dir / FINAL)
            (self.stage_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        dist.barrier()
        return summary


def _gather_counts(counts: Counter) -> dict:
    """Skipped-sample counts summed over ranks (keys may differ per rank)."""
    if not torch.distributed.is_initialized() or dist.world_size() == 1:
        return dict(counts)
    everyone: list = [None] * dist.world_size()
    torch.distributed.all_gather_object(everyone, dict(counts))
    total: Counter = Counter()
    for c in everyone:
        total.update(c)
    return dict(total)
