"""Prepare a run once: resolve a loaded config into everything a run needs, as new objects.

The run directory (absolute), generated synthetic shards, prepared `asset:` paths and the `init_from` chain
between stages are all settled here, before any training; the configs returned are copies, and nothing after
this point changes a config.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from vregion import distributed as dist
from vregion.config import Config

FINAL = "final"  # a stage's finished model: <stage dir>/final


@dataclass(frozen=True)
class RunStage:
    """One stage of a prepared run: its fully resolved config and its folder."""

    cfg: Config
    dir: Path


@dataclass(frozen=True)
class PreparedRun:
    """A run ready to train: the resolved top-level config (what config.yaml records), its folder, its stages."""

    cfg: Config
    run_dir: Path
    stages: tuple[RunStage, ...]


def run_directory(cfg: Config) -> Path:
    """The run's folder, absolute (so every rank and every later stage agrees on it)."""
    return Path(cfg.run.output_dir).expanduser().resolve()


def stage_folders(cfg: Config, run_dir: Path) -> list[Path]:
    """Each stage's folder: the run folder itself for a single unnamed stage, else a sub-folder per stage name."""
    if not cfg.stages:
        return [run_dir]
    return [run_dir / s.stage_name for s in cfg.stage_configs()]


def prepare_data(cfg: Config, run_dir: Path) -> Config:
    """A copy of `cfg` whose data section points at the configured synthetic shards, generated once (rank 0).

    Shards the user set win: `data.train_shards` (or `data.eval_shards`) given beside `data.synthetic` is
    used as given, and only the sets left unset are generated.
    """
    cfg = copy.deepcopy(cfg)  # the caller's config is left as it was
    syn = cfg.data.synthetic
    make_train = syn.num_train > 0 and cfg.data.train_shards is None
    make_eval = syn.num_eval > 0 and cfg.data.eval_shards is None
    if not (make_train or make_eval):
        return cfg
    from vregion.data.profile_synth import make_profile_shards  # `shapes` is make_synthetic_shards, byte for byte

    train_dir, eval_dir = run_dir / "data" / "train", run_dir / "data" / "eval"
    if dist.is_main():
        if make_train and not (train_dir / "index.json").exists():
            make_profile_shards(train_dir, syn.profile, syn.num_train, syn.image_size, cfg.run.seed, syn.samples_per_shard)
        if make_eval and not (eval_dir / "index.json").exists():
            make_profile_shards(eval_dir, syn.profile, syn.num_eval, syn.image_size, cfg.run.seed + 1,
                                syn.samples_per_shard)
    dist.barrier()
    if make_train:
        cfg.data.train_shards = str(train_dir)
    if make_eval:
        cfg.data.eval_shards = str(eval_dir)
        cfg.eval.vqa_shards = cfg.eval.vqa_shards or str(eval_dir)  # colour questions: short answers
    return cfg


def prepare_run(cfg: Config) -> PreparedRun:
    """Resolve `cfg` for training: absolute run folder (created), synthetic shards, prepared assets, and each
    stage after the first initialised from the previous stage's final model. `cfg` itself is not changed."""
    from vregion.assets import resolve_config_assets

    cfg = copy.deepcopy(cfg)
    run_dir = run_directory(cfg)
    cfg.run.output_dir = str(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = prepare_data(cfg, run_dir)
    stages, previous = [], None
    for stage_cfg, folder in zip(cfg.stage_configs(), stage_folders(cfg, run_dir)):
        stage_cfg = resolve_config_assets(stage_cfg)
        if previous is not None:
            stage_cfg.model.init_from = str(previous / FINAL)
        stages.append(RunStage(stage_cfg, folder))
        previous = folder
    return PreparedRun(cfg, run_dir, tuple(stages))
