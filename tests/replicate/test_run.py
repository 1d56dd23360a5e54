"""`vregion replicate`: the runs it starts, in order and with the right overrides, skipping finished ones; the
best-region choice; the settings guard; and one real tiny replication whose report matches its run files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine.launch import REPO, train_env
from tests.replicate.runs import SUMMARY_KEYS, write_run
from vregion.config import ConfigError, RegionConfig, from_dict
from vregion.region.apply import region_layers_for
from vregion.region.ranking import METRICS
from vregion import subprocess_runs
from vregion.replicate.run import run_replication

DEPTH = 30
ACCURACY = {"align": 0.30, "full": 0.80, "uniform-2": 0.60, "uniform-8": 0.79, "uniform-15": 0.85, "middle-8": 0.70,
            "metric-8": 0.75, "metric-param_relative-8": 0.76}
VARIANTS = ["full", "uniform-2", "metric-param_relative-8", "uniform-8", "uniform-15", "middle-8", "metric-8"]


class FakeVregion:
    """Stands in for the `vregion` subprocesses: records each command and writes what the real one would
    (run files in the real format, a checkpoint with DEPTH layer keys, layers.json)."""

    def __init__(self):
        self.commands: list[list[str]] = []

    def __call__(self, cmd, *args, **kwargs):
        assert cmd[:3] == [sys.executable, "-m", "vregion.cli"]
        argv = cmd[3:]
        self.commands.append(argv)
        getattr(self, argv[0])(argv[1:])
        return subprocess.CompletedProcess(cmd, 0)

    def train(self, argv):
        import torch
        from safetensors.torch import save_file

        opts = dict(a.split("=", 1) for a in argv if "=" in a)
        run_dir = Path(opts["run.output_dir"])
        seed, name = int(opts["run.seed"]), run_dir.name
        region = {k[len("region."):]: v for k, v in opts.items() if k.startswith("region.")}
        layers = []  # stage 1 (no region override: the align config's strategy none)
        if region:
            region.update(count=int(region["count"]) if "count" in region else None,
                          spread=region.get("spread") == "true")
            layers = region_layers_for(from_dict(RegionConfig, region), DEPTH)
        accuracy = ACCURACY[name.split("+")[0]] - 0.02 * seed - (0.01 if "+" in name else 0.0)
        time = 60.0 if "+" in name else 100.0 if name == "full" else 70.0
        write_run(run_dir, layers, accuracy, caption=2.0, ppl=10.0, step_time=time / 4)
        (run_dir / "eval.json").rename(run_dir / ".eval.json")  # handed out by `eval` below
        (run_dir / "final").mkdir()
        save_file({f"llm.model.layers.{i}.w": torch.zeros(1) for i in range(DEPTH)},
                  str(run_dir / "final" / "model.safetensors"))

    def eval(self, argv):
        (Path(argv[0]).parent / ".eval.json").rename(argv[argv.index("--out") + 1])

    def analyze(self, argv):
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True)
        param = "--base" in argv
        rows = [{"layer": i, **{m: (None if m.startswith("param_") and not param else float((7 * i) % DEPTH))
                                for m in METRICS}} for i in range(DEPTH)]
        (out / "layers.json").write_text(json.dumps({"region": [], "layers": rows}))


@pytest.fixture
def fake(monkeypatch):
    recorder = FakeVregion()
    monkeypatch.setattr(subprocess_runs.subprocess, "run", recorder)  # where replicate starts its `vregion` runs
    return recorder


def replicate(out, **kw):
    args = dict(config="tiny", seeds=(0, 1), variants=VARIANTS, schedules=["two", "last-stage-compression"],
                max_samples=8)
    args.update(kw)
    return run_replication(out, **args)


def _index(commands, *needles) -> int:
    return next(i for i, c in enumerate(commands) if all(any(n in a for a in c) for n in needles))


def test_runs_in_order_with_the_right_overrides_and_skip_when_done(tmp_path, fake):
    md = replicate(tmp_path)
    cmds = fake.commands
    seed0 = str(tmp_path / "seed-0")
    assert cmds[0][:2] == ["train", str(tmp_path / "configs" / "align.yaml")]
    assert f"run.output_dir={seed0}/align" in cmds[0] and "run.seed=0" in cmds[0] and cmds[0][-1] == "--resume"
    assert cmds[1][:2] == ["eval", f"{seed0}/align/final"]
    assert cmds[1][cmds[1].index("--text") + 1] == str(tmp_path / "text" / "passages.txt")
    trains = [c for c in cmds if c[0] == "train"]
    assert all(f"model.init_from={c[2].split('=')[1].rsplit('/', 1)[0]}/align/final" in c for c in trains[1:]
               if "align" not in c[2])
    # Hidden-state analysis of the stage-1 checkpoint before the metric run; parameter change after full.
    hidden = _index(cmds, "analyze", f"{seed0}/align/final")
    assert _index(cmds, "eval", f"{seed0}/align/final") < hidden < _index(cmds, f"{seed0}/metric-8")
    param = _index(cmds, "analyze", f"{seed0}/full/final")
    assert cmds[param][cmds[param].index("--base") + 1] == f"{seed0}/align/final"
    assert _index(cmds, "eval", f"{seed0}/full/final") < param < _index(cmds, f"{seed0}/metric-param_relative-8")
    metric = cmds[_index(cmds, "train", f"{seed0}/metric-8")]
    assert f"region.scores={seed0}/analysis/layers.json" in metric and "region.spread=false" in metric
    # Seed by seed, then the schedules on the best region no larger than 8 layers (uniform-15 scores higher).
    assert _index(cmds, "eval", f"{seed0}/middle-8") < _index(cmds, "train", "seed-1/align")
    assert "| stage 1 only (projector align) | 0 |" in md and "| metric-8 | 8: 4,8,12,16,17,21,25,29 |" in md
    assert json.loads((tmp_path / "best_region.json").read_text())["variant"] == "uniform-8"
    compress = [c for c in cmds if c[0] == "train" and "+" in c[2]]
    assert [(c[2].rsplit("/", 2)[1:], c[-2]) for c in compress] == [
        (["seed-0", "uniform-8+two"], "compress.schedule=two"),
        (["seed-0", "uniform-8+last-stage-compression"], "compress.schedule=last-stage-compression"),
        (["seed-1", "uniform-8+two"], "compress.schedule=two"),
        (["seed-1", "uniform-8+last-stage-compression"], "compress.schedule=last-stage-compression")]
    assert _index(cmds, "eval", "seed-1/middle-8") < _index(cmds, "seed-0/uniform-8+two")
    assert len(cmds) == 2 * (2 + 2 * len(VARIANTS) + 2 + 2 * 2)  # per seed: align, variants, 2 analyses, schedules
    # The report: uniform-8 at 79% and 77% vs full at 80% and 78%, paired by seed.
    row = next(x for x in md.splitlines() if x.startswith("| uniform-8 |"))
    assert "| 78.0 ± 1.4 |" in row and f"| {(79 / 80 + 77 / 78) * 50:.1f} ± " in row
    assert "## Compression schedules on the best region (uniform-8)" in md and "| two | 2 | 77.0 ± 1.4 | -1.0 ±" in md
    # A second run starts nothing and reports the same.
    fake.commands.clear()
    assert replicate(tmp_path) == md and fake.commands == []


def test_best_region_is_kept_across_reruns_and_can_be_forced(tmp_path, fake):
    replicate(tmp_path, seeds=(0,), variants=["full", "uniform-8", "middle-8"], schedules=["two"])
    assert json.loads((tmp_path / "best_region.json").read_text())["variant"] == "uniform-8"
    replicate(tmp_path, seeds=(0,), variants=["full", "uniform-8", "middle-8", "uniform-2"], schedules=["two"])
    assert json.loads((tmp_path / "best_region.json").read_text())["variant"] == "uniform-8"
    fake.commands.clear()
    replicate(tmp_path, seeds=(0,), variants=["full", "middle-8"], schedules=["two"], best="middle-8")
    assert [c[2].rsplit("/", 1)[1] for c in fake.commands if c[0] == "train"] == ["middle-8+two"]


def test_other_settings_in_the_same_folder_are_refused(tmp_path, fake):
    replicate(tmp_path, seeds=(0,), variants=["full"], schedules=[])
    with pytest.raises(ConfigError, match="max_samples differ"):
        replicate(tmp_path, seeds=(0,), variants=["full"], schedules=[], max_samples=16)
    with pytest.raises(ConfigError, match="unknown variant"):
        replicate(tmp_path, variants=["full", "uniform"])
    replicate(tmp_path, seeds=(0, 3), variants=["full"], schedules=[])  # more seeds: fine
    assert (tmp_path / "seed-3" / "full" / "eval.json").exists()


def test_drop_finals_keeps_the_models_later_runs_need(tmp_path, fake):
    replicate(tmp_path, seeds=(0,), variants=["full", "uniform-8", "metric-param_relative-8"], schedules=["two"],
              drop_finals=True)
    seed = tmp_path / "seed-0"
    assert (seed / "align" / "final").exists() and (seed / "full" / "final").exists()
    assert not (seed / "uniform-8" / "final").exists() and not (seed / "uniform-8+two" / "final").exists()
    assert (seed / "uniform-8" / "eval.json").exists()  # evaluated before its model went


def test_a_real_tiny_replication(tmp_path):
    """Real `vregion train`/`eval` subprocesses on configs/tiny.yaml (8 layers): the report's figures are the ones
    in the run files, and a re-run starts nothing."""
    out = tmp_path / "rep"
    cmd = [sys.executable, "-m", "vregion.cli", "replicate", "--config", "tiny", "--out", str(out), "--seeds", "0",
           "--steps", "2", "--align-steps", "2", "--variants", "full,uniform-2", "--schedules", "none",
           "--max-samples", "8", "data.synthetic.num_train=64", "data.synthetic.num_eval=8"]
    proc = subprocess.run(cmd, cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    seed = out / "seed-0"
    summaries = {n: json.loads((seed / n / "summary.json").read_text()) for n in ("align", "full", "uniform-2")}
    evals = {n: json.loads((seed / n / "eval.json").read_text()) for n in summaries}
    assert summaries["uniform-2"]["region_layers"] == [1, 7] and summaries["full"]["region_layers"] == list(range(8))
    assert summaries["align"]["region_layers"] == [] and {s["steps"] for s in summaries.values()} == {2}
    assert (seed / "full" / "final").exists() and not (seed / "full" / "checkpoints").exists()  # resume state gone
    # The real files carry every key the report tests write (tests/replicate/runs.py).
    assert set(SUMMARY_KEYS) <= set(summaries["full"])
    fake_eval = json.loads((write_run(tmp_path / "fmt", [], 0.5, 1.0, 1.0) / "eval.json").read_text())
    assert set(fake_eval) == set(evals["full"]) and set(fake_eval["text"]) == set(evals["full"]["text"])

    def step_time(name):
        return sum(json.loads(x)["step_time_s"] for x in (seed / name / "metrics.jsonl").read_text().splitlines()
                   if "step_time_s" in x)

    rows = {r["variant"]: r for r in json.loads((out / "replicate.json").read_text())["rows"]}
    u2 = rows["uniform-2"]
    assert u2["caption_pct"]["mean"] == pytest.approx(100 * evals["uniform-2"]["caption"]["loss"]
                                                      / evals["full"]["caption"]["loss"])
    assert u2["ppl_before"]["values"] == [pytest.approx(evals["align"]["text"]["perplexity"])]
    assert u2["ppl_after"]["values"] == [pytest.approx(evals["uniform-2"]["text"]["perplexity"])]
    assert u2["time_pct"]["mean"] == pytest.approx(100 * step_time("uniform-2") / step_time("full"))
    assert u2["trainable_params"] == summaries["uniform-2"]["trainable_params"] < rows["full"]["trainable_params"]
    assert evals["full"]["vqa"]["samples"] == 8 and u2["eval_samples"] == 8
    assert (out / "replicate.png").read_bytes()[:4] == b"\x89PNG" and "| uniform-2 | 2: 1,7 |" in proc.stdout
    again = subprocess.run(cmd, cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("done already") == 6 and "vregion train" not in again.stdout
