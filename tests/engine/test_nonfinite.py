"""A micro-batch whose loss is NaN is skipped (no update), counted, and too many abort the run."""

from collections import Counter

import pytest
import torch

from tests.engine.launch import REPO
from vregion.config import load_config
from vregion.data import make_synthetic_shards
from vregion.engine.trainer import NonFiniteLossError, StageTrainer


def test_nan_batch_is_skipped_and_counted_then_training_continues(tmp_path):
    make_synthetic_shards(tmp_path / "shards", num_samples=32, image_size=32, seed=0, samples_per_shard=16)
    cfg = load_config(REPO / "configs/tiny.yaml", [
        "stages=[]", f"run.output_dir={tmp_path}/run", f"data.train_shards={tmp_path}/shards",
        "data.synthetic.num_train=0", "data.synthetic.num_eval=0", "train.max_steps=4", "train.max_nonfinite=1",
        "deepspeed.zero_stage=2",
    ]).stage_configs()[0]
    trainer = StageTrainer(cfg, tmp_path / "run", resume=False)
    trainer._build()
    batches = iter(trainer.data.train_loader())
    batch = next(batches)
    poisoned = dict(batch, pixel_values=torch.full_like(batch["pixel_values"], float("nan")))
    before = {n: p.detach().clone() for n, p in trainer.engine.module.named_parameters() if p.requires_grad}
    skipped = Counter()
    assert trainer.micro_step(poisoned, torch.float32, skipped) is None
    assert skipped == {"nonfinite_loss": 1}
    after = dict(trainer.engine.module.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before), "a NaN batch must not update weights"
    loss = trainer.micro_step(next(batches), torch.float32, skipped)
    assert loss is not None and loss == loss
    assert any(not torch.equal(before[n], after[n]) for n in before)
    with pytest.raises(NonFiniteLossError, match="train.max_nonfinite=1"):
        trainer.micro_step(poisoned, torch.float32, skipped)
