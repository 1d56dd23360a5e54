"""`vregion analyze|prune` on bad values: exit 2 with a clear message before any model loads; prune's stdout is JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.engine.launch import REPO, train_env
from vregion.cli import main
from vregion.config import LLMConfig, ModelConfig, ProjectorConfig, VisionConfig, to_dict
from vregion.data import make_synthetic_shards
from vregion.models import build_vlm, save_checkpoint
from vregion.region.ranking import METRICS


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A 4-layer tiny checkpoint whose region is layer 1 (3 layers outside it), and 8 VQA samples."""
    root = tmp_path_factory.mktemp("prune-cli")
    make_synthetic_shards(root / "vqa", 8, image_size=16, seed=1, samples_per_shard=8)
    torch.manual_seed(0)
    cfg = ModelConfig(vision=VisionConfig(type="clip", tiny={"image_size": 16, "patch_size": 8}),
                      projector=ProjectorConfig(type="mlp2x_gelu"),
                      llm=LLMConfig(tiny={"family": "llama", "num_hidden_layers": 4}))
    model, tokenizer = build_vlm(cfg)
    config = {"model": to_dict(cfg), "data": {"max_length": 256}, "region": {"strategy": "list", "layers": [1]}}
    save_checkpoint(model, config, tokenizer, root / "ckpt")
    (root / "half").mkdir()
    (root / "half" / "config.yaml").write_text((root / "ckpt" / "config.yaml").read_text())
    (root / "empty").mkdir()
    return root


def prune(root, *extra, folder="ckpt", out="out") -> list[str]:
    return ["prune", str(root / folder), "--data", str(root / "vqa"), "--out", str(root / out), "--max-samples",
            "4", *extra]


@pytest.mark.parametrize("extra, message", [
    (["--drop", "1", "--metric", "angle"], "unknown metric 'angle'; valid metrics: " + ", ".join(METRICS)),
    (["--drop", "1", "--metric", "param_l2"], "give --base"),
    (["--drop", "4"], "--drop 4 is out of range: 0..3 of the 4 layers can be dropped (3 lie outside the region [1]"),
    (["--drop", "-1"], "--drop -1 is out of range: 0..3"),
])
def test_prune_bad_value_exits_2_before_loading(root, no_model, capsys, extra, message):
    assert main(prune(root, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (root / "out").exists()


@pytest.mark.parametrize("folder, missing", [("empty", "has no config.yaml and no model.safetensors"),
                                             ("half", "has no model.safetensors"),
                                             ("nowhere", "is not a folder")])
def test_not_a_checkpoint_exits_2(root, no_model, capsys, folder, missing):
    assert main(prune(root, "--drop", "1", folder=folder)) == 2
    assert f"not a vregion checkpoint: {root / folder} {missing}" in capsys.readouterr().err
    out = root / "analysis"
    assert main(["analyze", str(root / folder), "--data", str(root / "vqa"), "--out", str(out)]) == 2
    assert f"{root / folder} {missing}" in capsys.readouterr().err
    assert not (root / "out").exists() and not out.exists()


def test_missing_data_exits_2(root, no_model, capsys):
    assert main(["analyze", str(root / "ckpt"), "--data", str(root / "typo")]) == 2
    assert f"--data: shard not found: {root / 'typo'}" in capsys.readouterr().err
    assert main(prune(root, "--drop", "1") + ["--captions", str(root / "typo.tar")]) == 2
    assert f"--captions: shard not found: {root / 'typo.tar'}" in capsys.readouterr().err


def test_prune_stdout_is_only_the_json_report(root):
    env = train_env()
    # Without DS_ACCELERATOR, DeepSpeed logs its accelerator choice on stdout when a CPU is all it finds.
    env.pop("DS_ACCELERATOR")
    command = [sys.executable, "-m", "vregion.cli", *prune(root, "--drop", "2", out="pruned")]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["before"]["layers"] == 4 and report["after"]["layers"] == 2
    assert len(report["dropped"]) == 2 and 1 not in report["dropped"]
    assert json.loads((root / "pruned" / "report.json").read_text())["dropped"] == report["dropped"]
