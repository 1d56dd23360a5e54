"""What `vregion serve` shows beside a checkpoint: config facts, summary.json and the run's eval_after.json."""

from __future__ import annotations

import json

import yaml

from vregion.chat.summary import checkpoint_summary
from vregion.compress.schedule import PoolingSetting

CONFIG = {"model": {"llm": {"tiny": {"family": "llama"}}, "vision": {"type": "clip"}, "template": "vicuna-v1"},
          "region": {"strategy": "uniform", "fraction": 0.25}}


def run_layout(root, stages=("align", "region")):
    """A two-stage run folder as `vregion train` leaves it (only the files the summary reads)."""
    (root / "config.yaml").write_text(yaml.safe_dump({"stages": [{"name": s} for s in stages]}))
    for steps, stage in enumerate(stages, start=1):
        (root / stage / "final").mkdir(parents=True)
        (root / stage / "summary.json").write_text(json.dumps(
            {"stage": stage, "steps": 10 * steps, "region_layers": [1, 7][: steps - 1], "region_mode": "full",
             "eval_loss": 0.5 / steps}))
    (root / "eval_after.json").write_text(json.dumps(
        {"vqa": {"accuracy": 0.75, "correct": 24, "samples": 32}, "vqa_loss": {"loss": 0.29512}}))


def test_final_checkpoint_of_a_run_shows_its_training_and_results(tmp_path):
    run_layout(tmp_path)
    card = checkpoint_summary(tmp_path / "region" / "final", CONFIG, PoolingSetting(-1, 2, 4), num_layers=8)
    assert card["facts"] == {
        "LLM": "tiny llama, 8 layers", "vision": "clip", "template": "vicuna-v1",
        "region": "1 layer [1] (full)", "compression": "pool visual tokens before layer 2, stride 4",
        "training steps": "20 (region stage)"}
    assert card["held_out"] == {"held-out loss": 0.25, "end-of-run VQA accuracy": "75.0% of 32",
                                "end-of-run VQA answer loss": 0.2951}
    assert card["summary_file"] == str(tmp_path / "region" / "summary.json")


def test_an_earlier_stage_gets_no_end_of_run_scores_and_a_bare_checkpoint_its_config(tmp_path):
    run_layout(tmp_path)
    align = checkpoint_summary(tmp_path / "align" / "final", CONFIG, PoolingSetting(-1, None, None), num_layers=8)
    assert align["facts"]["region"] == "none (projector)" and align["facts"]["compression"] == "none"
    assert align["held_out"] == {"held-out loss": 0.5}  # eval_after.json scored the region stage, not this one
    bare = tmp_path / "elsewhere"
    bare.mkdir()
    card = checkpoint_summary(bare, CONFIG, PoolingSetting(-1, None, None), num_layers=6)
    assert card["facts"]["region"] == "uniform, 0.25 of the layers (full)" and "training steps" not in card["facts"]
    assert card["held_out"] == {} and card["summary_file"] is None
