"""Per-step metrics: `metrics.jsonl` (always), wandb (offline unless configured), and a progress bar."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vregion.config import WandbConfig


class MetricsLogger:
    """Writes one JSON object per logged optimizer step; only rank 0 should create one with `enabled`."""

    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        start_step: int,
        wandb_cfg: WandbConfig,
        run_name: str,
        config: dict,
        enabled: bool = True,
    ):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._wandb = None
        self._bar = None
        if not enabled:
            return
        self._truncate_after(start_step)
        self._file = self.path.open("a")
        self._bar = tqdm(total=total_steps, initial=start_step, desc=run_name, dynamic_ncols=True)
        # WANDB_MODE in the environment wins over the config (e.g. disabled in CI).
        mode = os.environ.get("WANDB_MODE", wandb_cfg.mode)
        if mode != "disabled":
            self._wandb = _start_wandb(Path(run_dir), wandb_cfg, mode, run_name, config)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the curve has no duplicate steps."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])

    def progress(self, step: int, loss: float, tokens_per_s: float) -> None:
        if self._bar is None:
            return
        self._bar.n = step
        self._bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if not self.enabled:
            return
        self._bar.close()
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()


def _start_wandb(run_dir: Path, cfg: WandbConfig, mode: str, run_name: str, config: dict):
    """wandb run that resumes under the same id after a restart (id kept in the run directory)."""
    import wandb

    id_file = run_dir / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id)
    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        name=run_name,
        id=run_id,
        resume="allow",
        mode=mode,
        dir=str(run_dir),
        config=config,
    )
