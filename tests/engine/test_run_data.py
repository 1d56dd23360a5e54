"""Which shards a run trains on: generated data fills only the sets the user left unset."""

from __future__ import annotations

from pathlib import Path

from vregion.config import load_config
from vregion.engine.run import prepare_data

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_user_shards_win_over_the_configs_generated_data(tmp_path):
    """`vregion train tiny data.train_shards=X`: X is trained on (tiny generates data by default); the held-out
    set the user did not give is still generated."""
    cfg = load_config(CONFIGS / "tiny.yaml", [f"data.train_shards={tmp_path}/mine"])
    cfg = prepare_data(cfg, tmp_path / "run")
    assert cfg.data.train_shards == f"{tmp_path}/mine"
    assert not (tmp_path / "run" / "data" / "train").exists()
    assert cfg.data.eval_shards == str(tmp_path / "run" / "data" / "eval")
    assert (tmp_path / "run" / "data" / "eval" / "index.json").exists()


def test_generated_data_when_no_shards_are_given(tmp_path):
    cfg = prepare_data(load_config(CONFIGS / "tiny.yaml"), tmp_path / "run")
    assert cfg.data.train_shards == str(tmp_path / "run" / "data" / "train")
    assert cfg.data.eval_shards == str(tmp_path / "run" / "data" / "eval")
    assert cfg.eval.vqa_shards == cfg.data.eval_shards
