"""A real VPG transfer between two tiny LLMs of different families and widths, under DeepSpeed on CPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.engine.launch import REPO, run_train, train_env
from vregion.config import load_config
from vregion.models.checkpoint import read_state_dict
from vregion.transfer import transfer_config

QUICK = ["stages=[]", "train.max_steps=2", "train.save_every=0", "data.synthetic.num_eval=0",
         "eval.before_after=false", "data.synthetic.num_train=64"]
TARGET_LLM = "model.llm.tiny={family: qwen2, num_hidden_layers: 2, hidden_size: 96, initializer_range: 0.15}"


def test_transfer_config_prepends_projector_warmup():
    cfg = load_config(REPO / "configs/tiny.yaml", ["optim.projector_lr=0.002", "transfer.warmup_steps=3"])
    stages = transfer_config(cfg, "/init").stage_configs()
    assert [s.stage_name for s in stages] == ["warmup", "align", "region"]
    warmup = stages[0]
    assert warmup.model.init_from == "/init"
    assert warmup.region.strategy == "none" and not warmup.region.train_vision
    assert warmup.optim.projector_lr == pytest.approx(0.01)  # 5 x 0.002
    assert warmup.optim.schedule == "constant" and warmup.optim.warmup_ratio == 0.0
    assert warmup.train.max_steps == 3
    assert stages[2].region.strategy == "uniform" and stages[2].optim.projector_lr == pytest.approx(0.002)


def test_transfer_llama_to_wider_qwen2_trains_only_projector_in_warmup(tmp_path):
    run_train("configs/tiny.yaml", QUICK + [f"run.output_dir={tmp_path}/src"])
    source = tmp_path / "src" / "final"
    cmd = [sys.executable, "-m", "vregion.cli", "transfer", "configs/tiny.yaml", *QUICK, TARGET_LLM,
           f"run.output_dir={tmp_path}/tgt", f"transfer.source={source}", "transfer.warmup_steps=2"]
    proc = subprocess.run(cmd, cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    run = tmp_path / "tgt"
    report = json.loads((run / "transfer-init" / "transfer.json").read_text())
    assert report["alignment"]["unique_pairs"] > 10 and report["converter"]["heldout_cosine"] is not None

    src, init = read_state_dict(source), read_state_dict(run / "transfer-init")
    warm, final = read_state_dict(run / "warmup" / "final"), read_state_dict(run / "train" / "final")
    assert init["llm.model.embed_tokens.weight"].shape[1] == 96
    assert init["projector.0.weight"].shape == (64, 32) and init["projector.2.weight"].shape == (96, 64)
    assert torch.equal(init["projector.0.weight"], src["projector.0.weight"])  # inherited VPG
    for name in (k for k in src if k.startswith("vision.")):
        assert torch.equal(init[name], src[name]), name
    assert set(warm) == set(init)
    for name, before in init.items():
        if name.startswith("projector."):
            if before.dim() > 1:
                assert not torch.equal(warm[name], before), f"{name} did not train in the warm-up"
        else:
            assert torch.equal(warm[name], before), f"{name} changed in the projector-only warm-up"
    # stage 2 (the config's own region training) starts from the warm-up and moves the LLM region
    assert any(not torch.equal(final[k], warm[k]) for k in warm if k.startswith("llm.model.layers."))
