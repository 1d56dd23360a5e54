"""The transfer demonstration's report: curves across stages, steps and time to the scratch run's final quality."""

from __future__ import annotations

import json

import pytest

from vregion.transfer.demo import ABLATION, SCRATCH, TRANSFER, compare, format_table, plot, read_curve


def write_stage(folder, steps: int, step_time: float, evals: dict[int, tuple[float, float]]):
    """metrics.jsonl as the trainer writes it: one record per step, one per held-out evaluation."""
    folder.mkdir(parents=True)
    lines = [{"step": s, "loss": 1.0, "step_time_s": step_time} for s in range(1, steps + 1)]
    for s, (loss, acc) in evals.items():
        lines.append({"step": s, "eval_loss": loss, "eval_vqa_accuracy": acc})
    lines.sort(key=lambda r: (r["step"], "eval_loss" in r))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def test_curve_accumulates_steps_and_time_across_stages_and_drops_the_repeated_start(tmp_path):
    warmup = write_stage(tmp_path / "warmup", 4, 2.0, {0: (5.0, 0.0), 4: (3.0, 0.2)})
    train = write_stage(tmp_path / "train", 6, 1.0, {0: (3.0, 0.2), 3: (2.0, 0.4), 6: (1.5, 0.5)})
    curve = read_curve([warmup, train], start_s=10.0)
    assert [p.step for p in curve] == [0, 4, 7, 10]
    assert [p.train_s for p in curve] == [10.0, 18.0, 21.0, 24.0]
    assert [p.eval_loss for p in curve] == [5.0, 3.0, 2.0, 1.5]
    assert curve[2].accuracy == 0.4


def test_steps_and_time_to_the_scratch_final_quality(tmp_path):
    scratch = read_curve([write_stage(tmp_path / "s", 12, 1.0,
                                      {0: (9.0, 0.0), 4: (4.0, 0.1), 8: (2.0, 0.3), 12: (1.0, 0.3)})])
    transfer = read_curve([write_stage(tmp_path / "t", 6, 1.0, {0: (3.0, 0.1), 2: (1.0, 0.2), 4: (0.9, 0.4)})],
                          start_s=1.0)
    ablation = read_curve([write_stage(tmp_path / "a", 6, 1.0, {0: (9.0, 0.0), 6: (5.0, 0.0)})])
    result = compare({SCRATCH: scratch, TRANSFER: transfer, ABLATION: ablation})
    assert result["target"] == {"eval_loss": 1.0, "accuracy": 0.3, "scratch_steps": 12}
    t = result["runs"][TRANSFER]
    assert t["reach"]["loss"]["step"] == 2 and t["loss_step_ratio"] == 6.0
    assert t["loss_time_ratio"] == pytest.approx(12.0 / 3.0)  # 2 steps + 1 s of init
    # Scratch first reached 30% at step 8, the transfer at step 4.
    assert t["reach"]["accuracy"]["step"] == 4 and t["accuracy_step_ratio"] == 2.0
    assert result["runs"][ABLATION]["reach"] == {"loss": None, "accuracy": None}
    table = format_table(result)
    assert "| transfer | 2 (6.0x fewer) |" in table and "| no-converter | not reached |" in table
    plot({SCRATCH: scratch, TRANSFER: transfer}, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_a_scratch_accuracy_of_zero_sets_no_accuracy_target(tmp_path):
    scratch = read_curve([write_stage(tmp_path / "s", 4, 1.0, {0: (9.0, 0.0), 4: (2.0, 0.0)})])
    transfer = read_curve([write_stage(tmp_path / "t", 2, 1.0, {0: (3.0, 0.0), 2: (1.0, 0.1)})])
    result = compare({SCRATCH: scratch, TRANSFER: transfer})
    assert result["target"]["accuracy"] is None
    assert result["runs"][TRANSFER]["reach"]["accuracy"] is None and "accuracy_step_ratio" not in result["runs"][TRANSFER]
    assert "| transfer | 2 (2.0x fewer) | 0.0 min (2.0x) | - | - |" in format_table(result)


def test_control_run_has_the_transfer_schedule_on_a_fresh_projector():
    """scratch-5x-lr resolves to the warm-up `vregion transfer` would run (5x the projector lr, constant, no lr
    warmup, projector only), then the config's own training at its normal lr."""
    from vregion.config import load_config, resolve_config_path
    from vregion.transfer.demo import TARGET_CONFIG, control_stages
    from vregion.transfer.plan import transfer_config

    override = f"stages={json.dumps(control_stages(7))}"
    warmup, train = load_config(resolve_config_path(TARGET_CONFIG), [override, "train.max_steps=3"]).stage_configs()
    base = load_config(resolve_config_path(TARGET_CONFIG))
    transferred = transfer_config(base, "unused-init").stage_configs()[0]
    assert (warmup.optim.projector_lr, warmup.optim.schedule, warmup.optim.warmup_ratio) == (
        transferred.optim.projector_lr, transferred.optim.schedule, transferred.optim.warmup_ratio)
    assert (warmup.optim.schedule, warmup.optim.warmup_ratio, warmup.train.max_steps) == ("constant", 0.0, 7)
    assert warmup.optim.projector_lr == pytest.approx(5 * base.optim.projector_lr)
    assert warmup.region.strategy == train.region.strategy == "none"
    assert warmup.model.init_from is None  # a fresh projector: nothing is transferred
    assert (train.optim.projector_lr, train.optim.schedule, train.train.max_steps) == (
        base.optim.projector_lr, base.optim.schedule, 3)


def test_a_finished_run_keeps_its_final_weights_and_metrics_but_not_its_resumable_state(tmp_path):
    from vregion.transfer.demo import _run

    run = tmp_path / "transfer"
    for stage in ("warmup", "train"):
        (run / stage / "checkpoints" / "step-000010").mkdir(parents=True)
        (run / stage / "final").mkdir()
        (run / stage / "metrics.jsonl").write_text("{}\n")
    (run / "train" / "summary.json").write_text("{}")  # the last stage finished: no subprocess is started
    _run(run, ["transfer", "demo-transfer"], run / "train" / "summary.json")
    assert not list(run.rglob("checkpoints"))
    assert all((run / stage / "final").is_dir() and (run / stage / "metrics.jsonl").exists()
               for stage in ("warmup", "train"))

    unfinished = tmp_path / "scratch"  # no summary: a failed run keeps its state, so --resume can continue it
    (unfinished / "checkpoints").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="failed"):
        _run(unfinished, ["train", str(tmp_path / "no-such-config.yaml")], unfinished / "summary.json")
    assert (unfinished / "checkpoints").is_dir()
