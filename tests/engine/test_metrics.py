"""Metrics logger: JSONL lines, truncation on resume, and a real offline wandb run."""

import json

from vregion.config import WandbConfig
from vregion.engine.metrics import MetricsLogger


def test_jsonl_and_offline_wandb_resume_under_the_same_id(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = MetricsLogger(tmp_path, 4, 0, WandbConfig(mode="offline"), "t", {"a": 1})
    for step in (1, 2, 3):
        logger.log({"step": step, "loss": 1.0 / step})
    logger.close()
    run_id = (tmp_path / "wandb_id.txt").read_text()
    assert list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    # Resuming from step 2 drops step 3 (logged after that checkpoint) and keeps the wandb id.
    logger = MetricsLogger(tmp_path, 4, 2, WandbConfig(mode="offline"), "t", {"a": 1})
    logger.log({"step": 3, "loss": 0.25})
    logger.close()
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2, 3]
    assert lines[-1]["loss"] == 0.25
    assert (tmp_path / "wandb_id.txt").read_text() == run_id


def test_disabled_by_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = MetricsLogger(tmp_path, 2, 0, WandbConfig(mode="offline"), "t", {})
    logger.log({"step": 1, "loss": 2.0})
    logger.close()
    assert not (tmp_path / "wandb").exists()
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1
