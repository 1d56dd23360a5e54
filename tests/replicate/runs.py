"""Run folders in the exact format `vregion train` (summary.json, metrics.jsonl) and `vregion eval` (eval.json)
write, for report tests that need chosen numbers; test_run checks a real tiny run writes these same keys."""

from __future__ import annotations

import json
from pathlib import Path

SUMMARY_KEYS = ("stage", "steps", "world_size", "region_layers", "region_mode", "trainable_params",
                "params_by_component", "optimizer_state_numel", "wall_time_s", "tokens_per_s", "samples_per_s",
                "skipped", "eval_loss")


def write_run(run_dir: Path, layers: list[int], accuracy: float, caption: float, ppl: float, step_time: float = 1.0,
              steps: int = 4, samples: int = 200, trainable: int = 1000) -> Path:
    """A finished, evaluated run: `steps` logged steps of `step_time` s, and the held-out figures given."""
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = {"stage": "train", "steps": steps, "world_size": 1, "region_layers": layers, "region_mode": "full",
               "trainable_params": trainable, "params_by_component": {"total": [2000, trainable]},
               "optimizer_state_numel": 2 * trainable, "wall_time_s": steps * step_time + 0.5, "tokens_per_s": 1.0,
               "samples_per_s": 1.0, "skipped": {}, "eval_loss": caption}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    lines = [{"step": s, "loss": 1.0, "lr": 1e-4, "step_time_s": step_time, "tokens_per_s": 1.0, "samples_per_s": 1.0}
             for s in range(1, steps + 1)] + [{"step": steps, "eval_loss": caption}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    correct = round(accuracy * samples)
    loss = {"loss": caption, "perplexity": 2.0 ** caption, "samples": samples, "tokens": 10 * samples}
    ev = {"checkpoint": str(run_dir / "final"), "compression": None, "world_size": 1, "max_samples": samples,
          "caption": loss,
          "text": {"loss": 1.0, "perplexity": ppl, "samples": samples, "tokens": 100 * samples, "skipped_image_samples": 0},
          "vqa": {"accuracy": correct / samples, "correct": correct, "samples": samples, "examples": []},
          "vqa_loss": loss}
    (run_dir / "eval.json").write_text(json.dumps(ev))
    return run_dir
