"""Which shards a run trains on: generated data fills only the sets the user left unset."""

from __future__ import annotations

from pathlib import Path

from vregion.config import load_config
from vregion.engine.prepare import prepare_data

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


def test_prepare_run_resolves_a_copy_and_chains_the_stages(tmp_path, monkeypatch):
    """One function settles the run folder, the shards and the init_from chain; the loaded config is untouched."""
    from vregion.config import to_dict
    from vregion.engine.prepare import prepare_run

    monkeypatch.chdir(tmp_path)
    cfg = load_config(CONFIGS / "tiny.yaml", ["run.output_dir=runs/t"])
    before = to_dict(cfg)
    run = prepare_run(cfg)
    assert to_dict(cfg) == before  # nothing mutated the caller's config
    assert run.run_dir == tmp_path / "runs" / "t" and run.cfg.run.output_dir == str(run.run_dir)
    assert [s.dir.name for s in run.stages] == ["align", "region"]
    align, region = run.stages
    assert align.cfg.model.init_from is None
    assert region.cfg.model.init_from == str(run.run_dir / "align" / "final")
    assert region.cfg.data.train_shards == str(run.run_dir / "data" / "train")
