"""A whole run: the run directory, generated data if configured, then each stage in order."""

from __future__ import annotations

import json
from pathlib import Path

from vregion import distributed as dist
from vregion.config import Config, save_config
from vregion.errors import RunDirectoryError
from vregion.engine.trainer import FINAL, StageTrainer


def prepare_data(cfg: Config, run_dir: Path) -> Config:
    """Generate the configured synthetic shards once (rank 0) and point the data section at them.

    Shards the user set win: `data.train_shards` (or `data.eval_shards`) given beside `data.synthetic` is
    used as given, and only the sets left unset are generated.
    """
    syn = cfg.data.synthetic
    make_train = syn.num_train > 0 and cfg.data.train_shards is None
    make_eval = syn.num_eval > 0 and cfg.data.eval_shards is None
    if not (make_train or make_eval):
        return cfg
    from vregion.data import make_synthetic_shards

    train_dir, eval_dir = run_dir / "data" / "train", run_dir / "data" / "eval"
    if dist.is_main():
        if make_train and not (train_dir / "index.json").exists():
            make_synthetic_shards(train_dir, syn.num_train, syn.image_size, cfg.run.seed, syn.samples_per_shard)
        if make_eval and not (eval_dir / "index.json").exists():
            make_synthetic_shards(eval_dir, syn.num_eval, syn.image_size, cfg.run.seed + 1, syn.samples_per_shard)
    dist.barrier()
    if make_train:
        cfg.data.train_shards = str(train_dir)
    if make_eval:
        cfg.data.eval_shards = str(eval_dir)
        cfg.eval.vqa_shards = cfg.eval.vqa_shards or str(eval_dir)  # colour questions: short answers
    return cfg


def _evaluate(cfg: Config, out_file: Path, checkpoint: Path | None) -> dict | None:
    """Evaluate the starting model (checkpoint None) or a final checkpoint on rank 0, once per run."""
    result = None
    if dist.is_main():
        if out_file.exists():
            result = json.loads(out_file.read_text())
        else:
            import torch

            from vregion.engine.trainer import seed_everything
            from vregion.eval import evaluate_model
            from vregion.models import build_vlm, load_checkpoint

            if checkpoint is None:
                seed_everything(cfg.run.seed)  # the same initial weights the first stage starts from
                model, tokenizer = build_vlm(cfg.model)
            else:
                model, tokenizer, _ = load_checkpoint(checkpoint)
            from vregion.compress import CompressionController

            compression = CompressionController(cfg.compress, model.runner.num_layers)
            compression.apply(model, compression.inference)
            print(f"evaluating {'the starting model' if checkpoint is None else checkpoint} "
                  f"(compression {compression.inference}) ...", flush=True)
            with torch.inference_mode():
                result = evaluate_model(model, tokenizer, cfg.eval, cfg.model.template, cfg.data.max_length)
            out_file.write_text(json.dumps(result, indent=2))
    dist.barrier()
    return result


def stage_dirs(cfg: Config, run_dir: Path) -> list[tuple[Config, Path]]:
    """(stage config, its folder): the run dir itself for a single unnamed stage, else a sub-folder each."""
    from vregion.assets import resolve_config_assets

    stages = cfg.stage_configs()
    for stage in stages:
        resolve_config_assets(stage)
    if not cfg.stages:
        return [(stages[0], run_dir)]
    return [(s, run_dir / s.stage_name) for s in stages]


def run_training(cfg: Config, resume: bool = False) -> list[dict]:
    """Train every stage of `cfg`; with `resume`, finished stages are skipped and the current one continues."""
    dist.init_distributed()
    run_dir = Path(cfg.run.output_dir).expanduser().resolve()
    cfg.run.output_dir = str(run_dir)
    if not resume and any(
        (d / "checkpoints").exists() or (d / FINAL).exists() for _, d in stage_dirs(cfg, run_dir)
    ):
        raise RunDirectoryError(
            f"{run_dir} already holds checkpoints of an earlier run: pass --resume to continue it, "
            "or choose another run.output_dir"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = prepare_data(cfg, run_dir)
    if dist.is_main():
        save_config(cfg, run_dir / "config.yaml")
    stages = stage_dirs(cfg, run_dir)
    before = _evaluate(stages[0][0], run_dir / "eval_before.json", None) if cfg.eval.before_after else None
    summaries = []
    previous_final: Path | None = None
    for stage_cfg, stage_dir in stages:
        if previous_final is not None:
            stage_cfg.model.init_from = str(previous_final)
        stage_dir.mkdir(parents=True, exist_ok=True)
        if (stage_dir / FINAL / "model.safetensors").exists() and (stage_dir / "summary.json").exists():
            if dist.is_main():
                print(f"stage {stage_cfg.stage_name} already finished; skipping", flush=True)
            summaries.append(json.loads((stage_dir / "summary.json").read_text()))
        else:
            if dist.is_main():
                save_config(stage_cfg, stage_dir / "config.yaml")
            summaries.append(StageTrainer(stage_cfg, stage_dir, resume=resume).run())
        previous_final = stage_dir / FINAL
    if cfg.eval.before_after:
        after = _evaluate(stages[-1][0], run_dir / "eval_after.json", previous_final)
        if dist.is_main():
            from vregion.eval import format_report

            print(format_report(before, after), flush=True)
    return summaries
