"""Typed run configuration: one dataclass per concern, loaded from YAML with dotted CLI overrides.

Every field carries a help string in its metadata. Loading is strict: an unknown or mistyped key fails
with a message naming it and the valid keys, so a typo never silently falls back to a default.

A config describes one or more *stages* (e.g. projector alignment, then region tuning). The top-level
`region`, `optim`, `train`, `data`, `deepspeed` and `compress` sections are the defaults; each entry of `stages` overrides parts of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

# Re-exported: callers import the loader's errors and helpers from vregion.config.
from .config_schema import (  # noqa: F401
    ConfigError,
    join_key,
    setting as _f,  # short: every field below is declared with it
    apply_override,
    deep_merge,
    from_dict,
    parse_override,
    to_dict,
)

# ----------------------------------------------------------------------------------------------- model

@dataclass
class VisionConfig:
    type: str = _f("clip", "vision backbone id in the backbone registry (clip, siglip, ...)")
    path: Optional[str] = _f(None, "local HF folder or hub id of the vision tower; None with `tiny` set")
    tiny: Optional[dict] = _f(None, "random-weight config overrides for tests (e.g. hidden_size: 32)")
    feature_layer: int = _f(-2, "hidden-state index whose patch features feed the projector (LLaVA-1.5: -2)")
    feature_blocks: Optional[list] = _f(
        None, "EfficientNet: indices of the MBConv blocks whose outputs feed the projector, each average-pooled "
        "to the stride-32 grid and concatenated along channels (e.g. [15, 5]: 320 + 80 channels); None: the "
        "1280-channel head conv. The head keeps shape but loses colour; CNN towers only")
    image_size: Optional[int] = _f(None, "input resolution; None takes the backbone's own", ge=1)
    image_aspect: Literal["squash", "pad", "crop"] = _f(
        "squash", "how a non-square image becomes square: squash (resize, aspect lost) | pad (LLaVA-1.5: centred on "
        "a square of the mean colour, then resize) | crop (llava-hf: shortest side to the size, centre crop)")


@dataclass
class ProjectorConfig:
    type: str = _f("mlp2x_gelu", "projector id: linear | mlp2x_gelu")
    hidden_size: Optional[int] = _f(None, "mlp2x_gelu's inner width (default: the LLM's hidden size); a VPG-"
                                    "transferred projector keeps its source LLM's width", ge=1)
    init_from: Optional[str] = _f(None, "projector weights loaded after model.init_from: LLaVA's mm_projector.bin, "
                                  "or any source `vregion import` reads (only its projector is used)")


@dataclass
class LLMConfig:
    path: Optional[str] = _f(None, "local HF folder, hub id, or .gguf file of a causal LM")
    gguf_file: Optional[str] = _f(None, "GGUF file name inside `path` (when path is a folder or hub id)")
    tiny: Optional[dict] = _f(None, "random-weight config for tests: {family: llama|qwen2|gemma3, ...overrides}")
    tokenizer: Optional[str] = _f(None, "tiny LLMs: a tokenizer folder (or asset:NAME) instead of the byte tokenizer, "
                                  "e.g. for real token lengths in benchmarks; vocab_size follows it")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = _f("sdpa", "sdpa | eager | flash_attention_2 (needs the `gpu` extra)")
    cache_dir: Optional[str] = _f(None, "where GGUF exports to HF folders are cached (default ~/.cache/vregion)")


@dataclass
class ModelConfig:
    vision: VisionConfig = _f(VisionConfig(), "vision tower")
    projector: ProjectorConfig = _f(ProjectorConfig(), "vision -> LLM projector")
    llm: LLMConfig = _f(LLMConfig(), "language model")
    template: str = _f("vicuna-v1", "conversation template: vicuna-v1 | llama-3 | chatml | gemma")
    init_from: Optional[str] = _f(None, "weights that initialise the model: a vregion checkpoint, a Hugging Face "
                                  "LLaVA folder or an original LLaVA-1.5 folder (the config must build the same "
                                  "architecture; `vregion import` writes a checkpoint with a matching config)")
    gradient_checkpointing: bool = _f(False, "recompute decoder layers in backward to save activation memory")


# ------------------------------------------------------------------------------------------------ data
@dataclass
class SyntheticDataConfig:
    num_train: int = _f(0, "if > 0, generate this many synthetic image-caption samples as train shards", ge=0)
    num_eval: int = _f(0, "synthetic held-out samples", ge=0)
    image_size: int = _f(32, "side of the generated images", ge=1)
    samples_per_shard: int = _f(16, "samples per generated tar shard", ge=1)
    profile: str = _f("shapes", "length profile of the generated conversations: shapes (one short question) | "
                      "llava-665k (LLaVA-1.5 mix lengths; see `vregion data synth --profile list`)")


@dataclass
class DataConfig:
    train_shards: Optional[str] = _f(None, "train shards: brace pattern, glob, or folder of .tar files")
    eval_shards: Optional[str] = _f(None, "held-out shards (same forms)")
    max_length: int = _f(2048, "max tokens per sample; truncation never cuts inside visual tokens", ge=1)
    shuffle_buffer: int = _f(1000, "seeded shuffle buffer size in samples (0 disables)", ge=0)
    num_workers: int = _f(0, "data-loader worker processes per rank", ge=0)
    packing: bool = _f(False, "training: pack each micro-batch's samples into rows of up to max_length tokens "
                       "(no attention across samples; micro_batch_size still counts samples)")
    packing_rows: Literal["auto", "full"] = _f("auto", "packed row width: auto (per micro-batch, the width that "
                                                "computes least; dense attention pays W^2 a row) | full (fill rows "
                                                "to max_length; what flash-attention's varlen kernel wants)")
    group_by_length: int = _f(0, "training: sort windows of this many micro-batches by (text-only, length) so a "
                              "micro-batch holds similar lengths, LLaVA-style; 0 = off", ge=0)
    synthetic: SyntheticDataConfig = _f(SyntheticDataConfig(), "generated data for smoke runs")


# -------------------------------------------------------------------------------------------- compress
@dataclass
class CompressConfig:
    schedule: Optional[Any] = _f(
        None,
        "visual-token pooling schedule: a preset (two, three-deeper, three-wider, four-wider-then-deeper, "
        "four-deeper-then-wider, last-stage-compression), a list of [K, S, fraction] (K for 32 layers; "
        "S null = no pooling), or null for none",
    )
    inference: str = _f("auto", "pooling at eval/generation: auto (the schedule's inference stage) | none | K/S")
    impl: str = _f("auto", "pooling implementation: auto (Triton on CUDA, PyTorch elsewhere) | triton | torch")


# ---------------------------------------------------------------------------------------------- region
@dataclass
class LoraConfig:
    r: int = _f(128, "LoRA rank", ge=1)
    alpha: int = _f(256, "LoRA alpha", ge=1)
    dropout: float = _f(0.05, "LoRA dropout", ge=0, lt=1)


@dataclass
class RegionConfig:
    strategy: str = _f(
        "uniform",
        "none (projector only) | all (full fine-tuning) | uniform | bottom | top | middle | bottom-top | list | "
        "metric (the most important layers by `metric` from a `scores` file)",
    )
    count: Optional[int] = _f(None, "number of region layers (overrides fraction)", ge=1)
    fraction: float = _f(0.25, "share of decoder layers in the region when count is unset", gt=0, le=1)
    layers: Optional[list] = _f(None, "explicit 0-based layer indices (strategy: list)")
    scores: Optional[str] = _f(None, "strategy metric: layers.json written by `vregion analyze`")
    metric: str = _f("angular", "strategy metric: the column ranked (angular, bi, bi_multimodal, param_relative, ...)")
    spread: bool = _f(True, "strategy metric: never pick two adjacent layers")
    mode: Literal["full", "lora"] = _f("full", "full (all parameters of region layers) | lora (LoRA on their 7 linears)")
    lora: LoraConfig = _f(LoraConfig(), "LoRA hyperparameters for mode: lora")
    train_projector: bool = _f(True, "train the projector")
    train_vision: bool = _f(False, "train the vision tower")
    train_embeddings: bool = _f(False, "train the input embeddings")
    train_norms: bool = _f(False, "train the LLM's norms (region layers' norms follow the region in full mode)")
    train_lm_head: bool = _f(False, "train the output head")

    def check(self, where: str) -> None:
        """Explicit layer indices are distinct non-negative integers (the upper bound needs the model)."""
        layers = self.layers or []
        bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int) or i < 0]
        if bad or len(set(layers)) != len(layers):
            raise ConfigError(f"{join_key(where, 'layers')}: {self.layers!r} is not valid; "
                              "valid: distinct 0-based layer indices")


# ----------------------------------------------------------------------------------------------- optim
@dataclass
class OptimConfig:
    lr: float = _f(2e-5, "peak learning rate of the LLM region (and other trainable LLM parts)", ge=0)
    projector_lr: Optional[float] = _f(None, "peak learning rate of the projector (default: lr)", ge=0)
    weight_decay: float = _f(0.0, "AdamW weight decay (never applied to norms and biases)", ge=0)
    betas: list = _f([0.9, 0.999], "AdamW betas")
    eps: float = _f(1e-8, "AdamW epsilon", gt=0)
    schedule: Literal["cosine", "constant"] = _f("cosine", "cosine | constant")
    warmup_ratio: float = _f(0.03, "share of steps with linear warmup", ge=0, le=1)
    min_lr_ratio: float = _f(0.0, "cosine floor as a share of the peak", ge=0, le=1)
    grad_clip: float = _f(1.0, "max global gradient norm (0 disables)", ge=0)

    def check(self, where: str) -> None:
        """AdamW needs two betas in [0, 1)."""
        ok = len(self.betas) == 2 and all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in self.betas)
        if not ok:
            raise ConfigError(f"{join_key(where, 'betas')}: {self.betas!r} is not valid; valid: two numbers in [0, 1)")


# ------------------------------------------------------------------------------------------- deepspeed
@dataclass
class DeepSpeedConfig:
    zero_stage: Literal[0, 1, 2, 3] = _f(2, "ZeRO stage: 0 | 1 | 2 | 3")
    offload_optimizer: bool = _f(False, "keep optimizer state in CPU memory (ZeRO-Offload)")
    offload_params: bool = _f(False, "keep parameters in CPU memory (ZeRO-3 only)")
    precision: Literal["bf16", "fp16", "fp32"] = _f("bf16", "bf16 | fp16 | fp32")
    extra: dict = _f({}, "raw DeepSpeed config entries merged last (expert escape hatch)")


# ----------------------------------------------------------------------------------------------- train
@dataclass
class TrainConfig:
    micro_batch_size: int = _f(4, "samples per rank per forward", ge=1)
    grad_accum: int = _f(1, "micro-batches per optimizer step (derived when global_batch_size is set)", ge=1)
    global_batch_size: Optional[int] = _f(None, "samples per optimizer step over all ranks; sets grad_accum", ge=1)
    max_steps: Optional[int] = _f(None, "optimizer steps in this stage (overrides epochs)", ge=1)
    epochs: float = _f(1.0, "passes over the train shards (needs the shards' index.json sample counts)", gt=0)
    save_every: int = _f(0, "checkpoint every N optimizer steps (0: only at the end)", ge=0)
    keep_checkpoints: int = _f(2, "resumable checkpoints kept (oldest deleted first; 0 keeps all)", ge=0)
    log_every: int = _f(1, "metrics.jsonl / wandb logging interval in optimizer steps", ge=1)
    eval_every: int = _f(0, "held-out loss at step 0 and every N steps (0: only at the end, if eval shards are set)", ge=0)
    eval_batches: int = _f(8, "held-out batches per evaluation", ge=1)
    max_nonfinite: int = _f(20, "micro-batches with a NaN/inf loss skipped before the run aborts", ge=0)


@dataclass
class StageConfig:
    name: str = _f("train", "stage name; also its sub-folder in the run directory")
    region: Optional[dict] = _f(None, "overrides of the top-level region section for this stage")
    optim: Optional[dict] = _f(None, "overrides of the top-level optim section for this stage")
    train: Optional[dict] = _f(None, "overrides of the top-level train section for this stage")
    data: Optional[dict] = _f(None, "overrides of the top-level data section for this stage")
    deepspeed: Optional[dict] = _f(None, "overrides of the top-level deepspeed section for this stage")
    compress: Optional[dict] = _f(None, "overrides of the top-level compress section for this stage")


@dataclass
class EvalConfig:
    vqa_shards: Optional[str] = _f(None, "short-answer VQA shards scored by generation exact match")
    caption_shards: Optional[str] = _f(None, "caption shards scored by held-out loss")
    choice_shards: Optional[str] = _f(None, "short-answer shards scored closed-set: the gold answer's rank among "
                                      "eval.choice_candidates by log-likelihood (accuracy, mean rank)")
    choice_candidates: Optional[str] = _f(None, "file of candidate answers, one a line, for eval.choice_shards "
                                          "(default: the distinct gold answers of the scored samples)")
    before_after: bool = _f(False, "evaluate the starting model and the final one, and print both")
    max_samples: int = _f(200, "samples per evaluation set", ge=1)
    batch_size: int = _f(16, "evaluation batch size", ge=1)
    max_new_tokens: int = _f(16, "generation budget per answer", ge=1)
    num_examples: int = _f(4, "example answers printed per evaluation", ge=0)
    in_training: bool = _f(False, "also score VQA accuracy (eval.vqa_shards) at every held-out evaluation during "
                                  "training: an accuracy curve in metrics.jsonl, at the cost of generation")


@dataclass
class TransferConfig:
    source: Optional[str] = _f(None, "vregion checkpoint whose vision tower + projector (the VPG) are transferred")
    corpus_shards: Optional[str] = _f(None, "shards whose conversation text aligns the two tokenizers (default: "
                                      "data.train_shards)")
    max_texts: int = _f(20000, "texts read for token alignment", ge=1)
    converter_epochs: int = _f(8, "epochs of the word-embedding converter (200 fit the demo's pairs better but "
                                 "trained slower after transfer: see docs/transfer.md)", ge=0)
    converter_lr: float = _f(5.0, "SGD learning rate of the converter (VPGTrans: 5.0)", gt=0)
    converter_batch: int = _f(4096, "token pairs per converter step", ge=1)
    use_converter: bool = _f(True, "initialise the projector's last linear with the converter (False: ablation, a fresh "
                                    "last linear)")
    warmup_lr_scale: float = _f(5.0, "projector warm-up lr = this x optim.projector_lr, constant, no warmup", gt=0)
    warmup_epochs: float = _f(1.0, "projector-only warm-up length in epochs (or set warmup_steps)", gt=0)
    warmup_steps: Optional[int] = _f(None, "projector-only warm-up length in optimizer steps", ge=1)


@dataclass
class WandbConfig:
    mode: Literal["offline", "online", "disabled"] = _f("offline", "offline | online | disabled")
    project: str = _f("vregion", "wandb project")
    entity: Optional[str] = _f(None, "wandb entity")


@dataclass
class RunConfig:
    output_dir: str = _f("runs/default", "run directory (relative paths resolve against the current directory)")
    seed: int = _f(0, "global seed (data order, initialisation, dropout)")
    wandb: WandbConfig = _f(WandbConfig(), "experiment tracking")


@dataclass
class Config:
    run: RunConfig = _f(RunConfig(), "run directory, seed, tracking")
    model: ModelConfig = _f(ModelConfig(), "model parts")
    data: DataConfig = _f(DataConfig(), "shards and tokenization")
    region: RegionConfig = _f(RegionConfig(), "which LLM layers train, and how")
    compress: CompressConfig = _f(CompressConfig(), "visual context compression (LLaVolta) schedule")
    optim: OptimConfig = _f(OptimConfig(), "optimizer and learning-rate schedule")
    deepspeed: DeepSpeedConfig = _f(DeepSpeedConfig(), "DeepSpeed engine")
    train: TrainConfig = _f(TrainConfig(), "steps, batch, checkpoints")
    eval: EvalConfig = _f(EvalConfig(), "held-out evaluation before and after the run")
    transfer: TransferConfig = _f(TransferConfig(), "VPG transfer from another LLM's trained vision side")
    stages: list = _f([], "ordered stages (list of StageConfig); empty: one stage from the top-level sections")

    def stage_configs(self) -> list["Config"]:
        """One fully resolved Config per stage, each with a single stage and its overrides applied.

        A stage's bad value is reported under its own key (`stages.1.region.strategy`): the top-level
        sections were checked when the Config was built, so an error here comes from the stage's overrides.
        """
        stages = [from_dict(StageConfig, s, "stages.%d" % i) for i, s in enumerate(self.stages)]
        if not stages:
            stages = [StageConfig()]
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"stage names must be unique, got {names}")
        resolved = []
        for i, stage in enumerate(stages):
            base = to_dict(self)
            base["stages"] = [to_dict(stage)]
            for section in STAGE_SECTIONS:
                if getattr(stage, section):
                    base[section] = deep_merge(base[section], getattr(stage, section))
                    try:
                        from_dict(type(getattr(self, section)), base[section], f"stages.{i}.{section}")
                    except ConfigError as e:
                        raise ConfigError(f"stage '{stage.name}': {e}") from None
            resolved.append(from_dict(Config, base, ""))
        return resolved

    def stage_key(self, index: int, key: str) -> str:
        """Where stage `index`'s value of dotted `key` comes from: `stages.N.key` if the stage sets it, else `key`."""
        node: Any = self.stages[index] if index < len(self.stages) else {}
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return key
            node = node[part]
        return f"stages.{index}.{key}"

    @property
    def stage_name(self) -> str:
        return self.stages[0]["name"] if self.stages else "train"


# Sections a stage may override.
STAGE_SECTIONS = ("region", "optim", "train", "data", "deepspeed", "compress")


def resolve_config_path(name: str) -> Path:
    """A config file path, or the name of a shipped config (`tiny`, `demo`, ...) usable from any folder.

    Only a *file* shadows a shipped name: a folder called `tiny` in the current directory is not a config.
    """
    path = Path(name)
    if path.is_file():
        return path
    import vregion_configs

    file_name = path.name if path.suffix in (".yaml", ".yml") else path.name + ".yaml"
    shipped = Path(vregion_configs.__file__).parent / file_name
    if path.parent == Path(".") and shipped.exists():
        return shipped
    available = sorted(p.stem for p in shipped.parent.glob("*.yaml"))
    raise ConfigError(f"config {name!r} not found (shipped configs: {', '.join(available)})")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when path is None) and apply dotted overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    for text in overrides or []:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
    config = from_dict(Config, data, "")
    config.stage_configs()  # validates every stage's overrides now, not hours into a run
    return config


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
