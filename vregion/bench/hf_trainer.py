"""The `hf-trainer` variant of `vregion bench`: the same model trained the way most LLaVA code trains it, as a
Hugging Face `LlavaForConditionalGeneration` driven by `transformers.Trainer` (+ DeepSpeed), the reference row
vregion's own variants are compared with.

What makes the comparison fair (checked at build time, else a ValueError says what differs):
- model: built like `full`'s (same config, seed, dtype), region applied as `full` applies it, then mapped to LLaVA
  in memory (`models.hf_export.llava_model`). The mapping must be one to one: a projector the export pads or
  extends (a narrower `mlp2x_gelu`, `linear`) would train a different model and is refused; the trainable
  parameter count must equal vregion's.
- optimizer: the very AdamW groups vregion builds (projector lr, no-decay groups) and its warmup + cosine schedule,
  handed to the Trainer by overriding `create_optimizer` / `create_scheduler`; the same DeepSpeed config
  (`engine.ds_config`), which the Trainer passes on to `deepspeed.initialize` through Accelerate.
- data: its own stream of the config's padded batches (same seed, so the same batches as `full`'s stream), each
  rewritten for LLaVA: the image token id at visual positions, the images in sequence order, text-only samples'
  dummy images dropped (LLaVA has none: slightly less work than vregion, which runs the tower on them).
  The image token id is an embedding row no text token uses (the first id past the tokenizer, else the last
  non-special id, checked absent from every batch's text), so the vocabulary does not grow.
- timing: the Trainer's own `train()` loop, run in a worker thread that a callback pauses after every optimizer
  step (`on_step_end`) until the bench asks for the next, so its steps interleave with the other variants'.
  A step's time is from the bench releasing it to the loop reaching `on_step_end` again: it includes the
  Trainer's per-step overheads (fetching and moving the batch, counting label tokens, grad-norm, callbacks), as a
  user's run pays them. forward = `compute_loss`; optimizer = DeepSpeed's `engine.step` (which Accelerate calls
  inside backward) or, without DeepSpeed, `optimizer.step`; backward = the rest of `training_step`.
- loss: LLaVA's mean over supervised tokens equals vregion's; with grad-accum > 1 the Trainer averages over all
  the step's tokens while vregion averages micro-batch means (timing is unaffected).
Only padded batches: pooling (@K/S) and packed rows have no LLaVA counterpart (`bench.variant` refuses them).
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import torch

from vregion import distributed as dist
from vregion.bench.report import StepTiming
from vregion.bench.variant import HF_TRAINER, Variant
from vregion.config import Config
from vregion.constants import IGNORE_INDEX
from vregion.engine.ds_config import build_ds_config, grad_accum_steps
from vregion.engine.inputs import StageData
from vregion.engine.optim import build_optimizer, build_scheduler
from vregion.engine.trainer import model_dtype, seed_everything
from vregion.models import build_vlm
from vregion.models.hf_export import ExportError, hf_support, llava_model
from vregion.models.projectors import MLPProjector
from vregion.region import apply_region, build_param_groups

TOTAL_STEPS = 10**6  # the lr schedule's span, as the bench's vregion engines are built


# vregion parameter-name prefix -> LlavaForConditionalGeneration's (the export's layout, `models.hf_export`).
LLAVA_PREFIXES = {
    "vision.model.": "model.vision_tower.",
    "projector.0.": "model.multi_modal_projector.linear_1.",
    "projector.2.": "model.multi_modal_projector.linear_2.",
    "llm.model.": "model.language_model.",
    "llm.lm_head.": "lm_head.",
}


def hf_name(name: str) -> str:
    """The LlavaForConditionalGeneration parameter that holds vregion's parameter `name`."""
    for prefix, target in LLAVA_PREFIXES.items():
        if name.startswith(prefix):
            return target + name[len(prefix):]
    raise ValueError(f"no LLaVA counterpart of parameter {name!r}")


def image_token_id(tokenizer, vocab_size: int) -> int:
    """An id whose embedding row no text token uses: the first past the tokenizer when the embedding has spare
    rows, else the last id that is not a special token (`to_llava_batch` checks each batch's text for it)."""
    if len(tokenizer) < vocab_size:
        return len(tokenizer)
    special = set(tokenizer.all_special_ids)
    return next(i for i in range(vocab_size - 1, -1, -1) if i not in special)


def to_llava_batch(batch: dict, token_id: int, num_tokens: int, dtype: torch.dtype = torch.float32) -> dict:
    """A vregion padded batch as LlavaForConditionalGeneration's training inputs.

    `token_id` is written over every image span (LLaVA finds visual positions by it); images are ordered by
    (sample, position), the order LLaVA scatters features in, and cast to the model's `dtype` (as vregion's
    `batch_to` does); dummy images (span row -1) are dropped.
    """
    if "segment_ids" in batch:
        raise ValueError(f"{HF_TRAINER} trains on padded batches only, got packed rows")
    input_ids = batch["input_ids"].clone()  # (B, T)
    if bool((input_ids == token_id).any()):
        raise ValueError(f"{HF_TRAINER}: the image token id {token_id} chosen for LLaVA occurs in the batch's text")
    spans = batch["image_spans"]  # (M, 3) [sample, start, length]
    real = (spans[:, 0] >= 0).nonzero().flatten().tolist()
    real.sort(key=lambda i: (int(spans[i, 0]), int(spans[i, 1])))
    for i in real:
        sample, start, length = (int(v) for v in spans[i])
        if length != num_tokens:
            raise ValueError(f"image span of {length} tokens; the vision tower gives {num_tokens}")
        input_ids[sample, start:start + length] = token_id
    out = {"input_ids": input_ids, "attention_mask": batch["attention_mask"], "labels": batch["labels"]}
    if real:
        out["pixel_values"] = batch["pixel_values"][real].to(dtype)  # (R, 3, H, W)
    return out


class _Feed:
    """The Trainer's training data: the bench's padded batches as LLaVA inputs, each vregion batch remembered
    until the bench collects it (tokens, samples and FLOPs are counted on vregion's batch)."""

    def __init__(self, stream: Iterator, token_id: int, num_tokens: int, dtype: torch.dtype):
        self.stream, self.token_id, self.num_tokens, self.dtype = stream, token_id, num_tokens, dtype
        self.consumed: list[dict] = []

    def __iter__(self):
        for batch in self.stream:
            self.consumed.append(batch)
            yield to_llava_batch(batch, self.token_id, self.num_tokens, self.dtype)

    def take(self) -> list[dict]:
        taken, self.consumed = self.consumed, []
        return taken


@dataclass
class _Clock:
    """Seconds of the current step's parts, added up by the Trainer's hooks in the worker thread."""

    forward: float = 0.0
    optimizer: float = 0.0
    training_step: float = 0.0
    losses: list = field(default_factory=list)

    def reset(self) -> None:
        self.forward = self.optimizer = self.training_step = 0.0
        self.losses = []


def _make_trainer_class():
    """A Trainer using vregion's optimizer and schedule, with timing around its own steps (transformers is
    imported only when the variant runs)."""
    from transformers import Trainer

    class BenchTrainer(Trainer):
        def __init__(self, *args, feed: _Feed, groups: list, cfg: Config, clock: _Clock, **kwargs):
            super().__init__(*args, **kwargs)
            self.feed, self.groups, self.vr_cfg, self.clock = feed, groups, cfg, clock

        def get_train_dataloader(self):
            return self.feed  # batches already formed by vregion's loader: the same batches as `full`'s

        def create_optimizer(self, model=None):
            if self.optimizer is None:
                # DeepSpeed wraps it (its state stays here): kept for counting the optimizer state
                self.optimizer = self.base_optimizer = build_optimizer(self.groups, self.vr_cfg.optim,
                                                                       self.vr_cfg.deepspeed.offload_optimizer)
            return self.optimizer

        def create_scheduler(self, num_training_steps: int, optimizer=None):
            if self.lr_scheduler is None:
                self.lr_scheduler = build_scheduler(optimizer or self.optimizer, self.vr_cfg.optim, TOTAL_STEPS)
                self._created_lr_scheduler = True
            return self.lr_scheduler

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            start = _now()
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            self.clock.forward += _now() - start
            return out

        def training_step(self, model, inputs, num_items_in_batch=None):
            start = _now()
            loss = super().training_step(model, inputs, num_items_in_batch)
            self.clock.training_step += _now() - start
            self.clock.losses.append(loss)  # read after the step: no extra sync inside it
            return loss

    return BenchTrainer


def _now() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # time the work, not its launch
    return time.perf_counter()


def _pacer(owner: "HFTrainerRun"):
    """A TrainerCallback holding the Trainer's loop before training and after each optimizer step until the bench
    releases it (`HFTrainerRun.step`); it also times the optimizer step the Trainer makes itself."""
    from transformers import TrainerCallback

    class Pacer(TrainerCallback):
        def _pause(self, control):
            owner._done.release()
            owner._go.acquire()
            if owner._stopping:
                control.should_training_stop = True
            return control

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            owner._wrap_engine_step()
            return self._pause(control)

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            owner._opt_start = _now()

        def on_optimizer_step(self, args, state, control, **kwargs):
            owner.clock.optimizer += _now() - owner._opt_start

        def on_step_end(self, args, state, control, **kwargs):
            return self._pause(control)

    return Pacer()


@dataclass
class HFTrainerRun:
    """The `hf-trainer` variant's Trainer, paused between optimizer steps in a worker thread; stands where the
    other variants have an `EngineRun` (same fields the bench reads)."""

    base: str
    cfg: Config
    trainer: object
    feed: _Feed
    shape: object
    trainable: int
    accum: int
    dtype: torch.dtype
    note: str
    state_bytes: int = 0
    resident_bytes: Optional[int] = None
    clock: _Clock = field(default_factory=_Clock)
    _go: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    _done: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    _stopping: bool = False
    _error: Optional[BaseException] = None
    _thread: Optional[threading.Thread] = None
    _opt_start: float = 0.0

    def start(self) -> None:
        """Run `Trainer.train()` in a worker thread up to its first step (engine and optimizer built)."""
        def train():
            try:
                self.trainer.train()
            except BaseException as e:  # reported to the bench's thread by `_wait`
                self._error = e
            finally:
                self._done.release()

        self._thread = threading.Thread(target=train, name=HF_TRAINER, daemon=True)
        self._thread.start()
        self._wait()

    def _wait(self) -> None:
        self._done.acquire()
        if self._error is not None:
            raise RuntimeError(f"{HF_TRAINER}: transformers.Trainer failed: {self._error}") from self._error

    def _wrap_engine_step(self) -> None:
        """Time DeepSpeed's `engine.step` (the optimizer step Accelerate makes inside `backward`)."""
        engine = self.trainer.model_wrapped
        if not hasattr(engine, "step") or getattr(engine, "_bench_timed", False):
            return
        step = engine.step

        def timed_step(*args, **kwargs):
            start = _now()
            out = step(*args, **kwargs)
            self.clock.optimizer += _now() - start
            return out

        engine.step, engine._bench_timed = timed_step, True

    def step(self) -> tuple[StepTiming, list[dict], float]:
        """One optimizer step of the Trainer's loop: (timing without the data counts, the vregion batches it
        trained on, its mean loss)."""
        self.clock.reset()
        start = _now()
        self._go.release()
        self._wait()
        seconds = _now() - start
        c = self.clock
        t = StepTiming(seconds, c.forward, max(0.0, c.training_step - c.forward - c.optimizer), c.optimizer,
                       0.0, 0, 0.0)
        return t, self.feed.take(), float(sum(c.losses)) / max(1, len(c.losses))

    def optimizer_state_numel(self) -> int:
        """Elements of Adam state the Trainer's optimizer holds (vregion's AdamW, under DeepSpeed's wrapper)."""
        optimizer = self.trainer.base_optimizer
        return sum(v.numel() for state in optimizer.state.values() for v in state.values()
                   if torch.is_tensor(v) and v.dim() > 0)

    def close(self) -> None:
        """Let the Trainer's loop finish (it stops at its next pause) and join the thread."""
        if self._thread is None or not self._thread.is_alive():
            return
        self._stopping = True
        self._go.release()
        self._thread.join(timeout=60)


def check_config(cfg: Config) -> None:
    """Refuse, before anything is built, a config whose model `hf-trainer` cannot train as LLaVA.

    Raises:
        ValueError: naming what has no LLaVA counterpart (vision backbone, projector type).
    """
    reason = hf_support(cfg.model.vision.type)
    if reason is None and cfg.model.projector.type != "mlp2x_gelu":
        reason = (f"projector '{cfg.model.projector.type}' has no one-to-one LLaVA form (LLaVA's projector is "
                  "mlp2x_gelu-shaped)")
    if reason:
        raise ValueError(f"{HF_TRAINER}: the model cannot be trained as Hugging Face LLaVA: {reason}; bench a "
                         "config with a CLIP or SigLIP tower and an mlp2x_gelu projector (e.g. configs/tiny.yaml)")


def _same_model_or_refuse(model) -> None:
    projector = model.projector
    if not isinstance(projector, MLPProjector) or projector[0].out_features != projector[-1].out_features:
        raise ValueError(f"{HF_TRAINER}: LLaVA can hold this projector only padded or extended (an mlp2x_gelu whose "
                         "inner width is the LLM's is mapped one to one), which would train a different model")


def build_hf_trainer(cfg: Config, variant: Variant, out_dir: Path, shape_of) -> HFTrainerRun:
    """The `hf-trainer` variant: `full`'s model as LLaVA in a Trainer, started up to its first step.

    Args:
        variant: the parsed `hf-trainer` variant (its region is `full`'s).
        out_dir: the Trainer's output_dir (it writes nothing there: no saving, logging or reporting).
        shape_of: `bench.run.bench_shape`, the plan's shape of the built vregion model (for FLOPs).
    """
    from transformers import TrainingArguments

    check_config(cfg)
    cfg = copy.deepcopy(cfg)
    for name, value in variant.data_overrides(cfg.data.group_by_length).items():  # padded rows, maybe grouped
        setattr(cfg.data, name, value)
    vision_type = cfg.model.vision.type
    seed_everything(cfg.run.seed)  # the weights `full`'s engine starts from
    dtype = model_dtype(cfg)
    model, tokenizer = build_vlm(cfg.model, dtype=dtype)
    shape = shape_of(cfg, model)
    apply_region(model, variant.region)
    _same_model_or_refuse(model)
    vocab = model.llm.get_input_embeddings().num_embeddings
    token_id = image_token_id(tokenizer, vocab)
    try:
        hf = llava_model(model, vision_type, token_id, vocab)
    except ExportError as e:
        raise ValueError(f"{HF_TRAINER}: the model has no LlavaForConditionalGeneration form: {e}") from None
    hf.set_attn_implementation(cfg.model.llm.attn_implementation)
    hf_params = dict(hf.named_parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    for p in hf.parameters():
        p.requires_grad_(False)
    groups = build_param_groups(model, cfg.optim)
    for group in groups:
        mapped = []
        for p in group["params"]:
            target = hf_params.get(hf_name(names[id(p)]))
            if target is None or target.shape != p.shape:
                found = "missing" if target is None else f"{tuple(target.shape)}"
                raise ValueError(f"{HF_TRAINER}: {names[id(p)]} {tuple(p.shape)} is {found} in LLaVA")
            mapped.append(target.requires_grad_(True))
        group["params"] = mapped
    trainable = sum(p.numel() for p in hf.parameters() if p.requires_grad)
    expected = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable != expected:
        raise ValueError(f"{HF_TRAINER}: {trainable:,} trainable parameters in LLaVA, {expected:,} in vregion")
    if cfg.model.gradient_checkpointing:
        hf.gradient_checkpointing_enable()
    data = StageData(cfg, model, tokenizer)
    feed = _Feed(iter(data.train_loader()), token_id, model.num_visual_tokens, dtype)
    del model  # only LLaVA's copy trains

    accum = grad_accum_steps(cfg.train, dist.world_size())
    ds = build_ds_config(cfg, dist.world_size())
    precision = cfg.deepspeed.precision
    args = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=cfg.train.micro_batch_size,
        gradient_accumulation_steps=accum, max_steps=TOTAL_STEPS, learning_rate=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay, max_grad_norm=cfg.optim.grad_clip, bf16=precision == "bf16",
        fp16=precision == "fp16", deepspeed=ds, use_cpu=not torch.cuda.is_available(), seed=cfg.run.seed,
        save_strategy="no", eval_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
        remove_unused_columns=False, dataloader_num_workers=0,
    )
    clock = _Clock()
    owner = HFTrainerRun(HF_TRAINER, cfg, None, feed, shape, trainable, accum, dtype,
                         note=f"transformers.Trainer + DeepSpeed ZeRO-{cfg.deepspeed.zero_stage} ({precision}), "
                              "same config as the vregion engines", clock=clock)
    from transformers import PrinterCallback

    trainer_class = _make_trainer_class()
    threads = torch.get_num_threads()  # Accelerate sets its own on CPU when OMP_NUM_THREADS is unset
    owner.trainer = trainer_class(model=hf, args=args, feed=feed, groups=groups, cfg=cfg, clock=clock,
                                  callbacks=[_pacer(owner)])
    owner.trainer.remove_callback(PrinterCallback)  # it would print the run's summary when the bench ends it
    torch.set_num_threads(threads)  # one process: every variant, this one too, runs on the same threads
    owner.start()
    return owner
