"""`vregion eval` on bad values: exit 2 with a clear message before any model loads."""

from __future__ import annotations

import pytest
import torch

from vregion.cli import main
from vregion.config import LLMConfig, ModelConfig, ProjectorConfig, VisionConfig, to_dict
from vregion.data import make_synthetic_shards
from vregion.models import build_vlm, save_checkpoint


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-args")
    make_synthetic_shards(root / "vqa", 4, image_size=16, seed=1, samples_per_shard=4)
    torch.manual_seed(0)
    cfg = ModelConfig(vision=VisionConfig(type="clip", tiny={"image_size": 16, "patch_size": 8}),
                      projector=ProjectorConfig(type="mlp2x_gelu"), llm=LLMConfig(tiny={"family": "llama"}))
    model, tokenizer = build_vlm(cfg)
    save_checkpoint(model, {"model": to_dict(cfg)}, tokenizer, root / "ckpt")
    (root / "weights-only").mkdir()
    (root / "weights-only" / "model.safetensors").write_bytes((root / "ckpt" / "model.safetensors").read_bytes())
    return root


@pytest.mark.parametrize("compress, message", [
    ("40/2", "--compress: K must be an int in [0, 32) (0 pools before the LLM), got 40"),
    ("2/0", "--compress: S must be an int >= 1, got 0"),
    ("fast", "--compress: expected 'K/S' or 'none', got 'fast'; valid: auto"),
])
def test_bad_compress_exits_2_before_loading(root, no_model, capsys, compress, message):
    out = root / "eval.json"
    argv = ["eval", str(root / "ckpt"), "--vqa", str(root / "vqa"), "--compress", compress, "--out", str(out)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("folder, missing", [("weights-only", "has no config.yaml"),
                                             ("nowhere", "is not a folder")])
def test_not_a_checkpoint_exits_2(root, no_model, capsys, folder, missing):
    assert main(["eval", str(root / folder), "--vqa", str(root / "vqa")]) == 2
    assert f"vregion: config error: not a vregion checkpoint: {root / folder} {missing}" in capsys.readouterr().err


def test_predictions_without_vqa_exits_2(root, no_model, capsys):
    argv = ["eval", str(root / "ckpt"), "--captions", str(root / "vqa"), "--predictions", str(root / "p.jsonl")]
    assert main(argv) == 2
    assert "--predictions lists the --vqa answers: give --vqa SHARDS too" in capsys.readouterr().err
    assert not (root / "p.jsonl").exists()
