"""A whole run: prepare it once (engine/prepare.py), evaluate the start, train each stage in order, evaluate the end."""

from __future__ import annotations

import json
from pathlib import Path

from vregion import distributed as dist
from vregion.config import Config, save_config
from vregion.errors import RunDirectoryError
from vregion.engine.prepare import prepare_run, run_directory, stage_folders
from vregion.engine.trainer import FINAL, StageTrainer


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


def run_training(cfg: Config, resume: bool = False) -> list[dict]:
    """Train every stage of `cfg`; with `resume`, finished stages are skipped and the current one continues."""
    dist.init_distributed()
    run_dir = run_directory(cfg)
    if not resume and any((d / "checkpoints").exists() or (d / FINAL).exists() for d in stage_folders(cfg, run_dir)):
        raise RunDirectoryError(
            f"{run_dir} already holds checkpoints of an earlier run: pass --resume to continue it, "
            "or choose another run.output_dir"
        )
    run = prepare_run(cfg)
    if dist.is_main():
        save_config(run.cfg, run.run_dir / "config.yaml")
    first, last = run.stages[0], run.stages[-1]
    before = _evaluate(first.cfg, run_dir / "eval_before.json", None) if run.cfg.eval.before_after else None
    summaries = []
    for stage in run.stages:
        stage.dir.mkdir(parents=True, exist_ok=True)
        if (stage.dir / FINAL / "model.safetensors").exists() and (stage.dir / "summary.json").exists():
            if dist.is_main():
                print(f"stage {stage.cfg.stage_name} already finished; skipping", flush=True)
            summaries.append(json.loads((stage.dir / "summary.json").read_text()))
        else:
            if dist.is_main():
                save_config(stage.cfg, stage.dir / "config.yaml")
            summaries.append(StageTrainer(stage.cfg, stage.dir, resume=resume).run())
    if run.cfg.eval.before_after:
        after = _evaluate(last.cfg, run_dir / "eval_after.json", last.dir / FINAL)
        if dist.is_main():
            from vregion.eval import format_report

            print(format_report(before, after), flush=True)
    return summaries
