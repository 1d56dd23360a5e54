"""All three methods in one run: VPG transfer, then a uniform region trained under a LLaVolta schedule."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.engine.launch import REPO, read_metrics, run_train, train_env
from vregion.compress.schedule import PRESETS
from vregion.config import load_config, resolve_config_path
from vregion.region.select import select_layers
from vregion.transfer import transfer_config

QUICK = ["stages=[]", "train.save_every=0", "data.synthetic.num_eval=0", "eval.before_after=false",
         "data.synthetic.num_train=64"]


def test_demo_all_resolves_to_warmup_then_region_under_a_schedule():
    cfg = load_config(resolve_config_path("demo-all"))
    assert cfg.model.llm.path == "asset:gemma3" and cfg.transfer.source.endswith("demo/align/final")
    warmup, train = transfer_config(cfg, "/init").stage_configs()
    assert (warmup.stage_name, train.stage_name) == ("warmup", "train")
    # VPGTrans warm-up: projector only, 5x its lr, constant, and no pooling (LLaVolta compresses tuning only)
    assert warmup.region.strategy == "none" and warmup.compress.schedule is None
    assert warmup.train.max_steps == 20 and warmup.optim.projector_lr == pytest.approx(5 * train.optim.projector_lr)
    assert warmup.optim.schedule == "constant"
    # then a uniform quarter of Gemma3-270M's 18 layers under LLaVolta's `two`
    assert train.region.strategy == "uniform" and train.region.mode == "full"
    assert select_layers(train.region.strategy, 18, train.region.count, train.region.fraction) == [1, 5, 9, 13, 17]
    assert train.compress.schedule == "two" and PRESETS["two"] == ("2/8", "none")
    # the demo's scene dialogues (~130 Gemma3 tokens) fit whole, packed beside one-question samples
    assert (train.data.max_length, train.data.packing) == (160, True) and warmup.data.packing


def test_tiny_combined_run_transfers_then_tunes_the_region_compressed_then_not(tmp_path):
    run_train("configs/tiny.yaml", QUICK + ["train.max_steps=2", f"run.output_dir={tmp_path}/src"])
    target = "model.llm.tiny={family: qwen2, num_hidden_layers: 4, hidden_size: 96}"
    cmd = [sys.executable, "-m", "vregion.cli", "transfer", "configs/tiny.yaml", *QUICK, target,
           "train.max_steps=4", "region.strategy=uniform", "region.count=2", "compress.schedule=two", "data.packing=true",
           f"run.output_dir={tmp_path}/all", f"transfer.source={tmp_path}/src/final", "transfer.warmup_steps=2"]
    proc = subprocess.run(cmd, cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    warm = [r for r in read_metrics(tmp_path / "all" / "warmup") if "loss" in r]
    tune = [r for r in read_metrics(tmp_path / "all" / "train") if "loss" in r]
    assert len(warm) == 2 and all("compress_stage" not in r for r in warm)
    assert [r["step"] for r in tune] == [1, 2, 3, 4]
    # `two`: pool after layer round(2 * 4 / 32) -> 1 with stride 8 for the first half, then uncompressed
    assert [(r["compress_layer"], r["compress_stride"]) for r in tune] == [(1, 8), (1, 8), (-1, 1), (-1, 1)]

    summary = json.loads((tmp_path / "all" / "train" / "summary.json").read_text())
    assert summary["region_layers"] == select_layers("uniform", 4, count=2)
    assert json.loads((tmp_path / "all" / "warmup" / "summary.json").read_text())["region_layers"] == []
