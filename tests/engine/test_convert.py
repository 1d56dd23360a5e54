"""`vregion convert`: a 2-rank ZeRO-3 DeepSpeed checkpoint -> one fp32 state dict -> a vregion checkpoint."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from tests.engine.launch import REPO, run_train
from vregion.cli import main
from vregion.config import load_config, save_config
from vregion.data import make_synthetic_shards
from vregion.engine import checkpoint
from vregion.engine.convert import convert_checkpoint
from vregion.models import load_checkpoint, read_state_dict


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory):
    """A 2-rank ZeRO-3 region run of 4 steps with checkpoints at steps 2 and 4 and the trainer's own final/."""
    run = tmp_path_factory.mktemp("zero3") / "run"
    run_train("configs/tiny.yaml", [
        "stages=[]", f"run.output_dir={run}", "data.synthetic.num_eval=0", "eval.before_after=false",
        "deepspeed.zero_stage=3", "train.max_steps=4", "train.save_every=2",
    ], nproc=2)
    return run


@pytest.mark.timeout(600)
def test_deepspeed_zero_to_fp32_merges_the_shards_into_the_trained_weights(zero3_run):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    final = read_state_dict(zero3_run / "final")  # gathered from the live engine by the trainer
    merged = get_fp32_state_dict_from_zero_checkpoint(str(zero3_run / "checkpoints"), tag=checkpoint.tag_for(4))
    assert set(merged) == set(final)
    for name, tensor in final.items():
        assert merged[name].dtype == torch.float32
        assert torch.equal(merged[name], tensor), name


@pytest.mark.timeout(600)
def test_vregion_convert_writes_a_loadable_checkpoint_equal_to_the_final_weights(zero3_run, tmp_path):
    final = read_state_dict(zero3_run / "final")
    out = tmp_path / "converted"
    assert main(["convert", str(zero3_run / "checkpoints" / checkpoint.tag_for(4)), str(out)]) == 0
    model, tokenizer, config = load_checkpoint(out)  # strict: every parameter present, none extra
    assert tokenizer is not None and config["deepspeed"]["zero_stage"] == 3
    state = model.state_dict()
    for name, tensor in final.items():
        assert torch.equal(state[name], tensor), name

    # The run folder means its newest complete checkpoint; bf16 rounds the same weights.
    half = convert_checkpoint(zero3_run, tmp_path / "bf16", dtype="bf16")
    for name, tensor in read_state_dict(half).items():
        assert torch.equal(tensor, final[name].to(tensor.dtype)), name
        assert tensor.dtype == (torch.bfloat16 if final[name].is_floating_point() else final[name].dtype)

    # The step-2 checkpoint holds other (earlier) weights in the trained projector, the same frozen ones.
    early = read_state_dict(convert_checkpoint(zero3_run / "checkpoints" / checkpoint.tag_for(2), tmp_path / "s2"))
    assert not torch.equal(early["projector.0.weight"], final["projector.0.weight"])
    assert torch.equal(early["vision.model.embeddings.patch_embedding.weight"],
                       final["vision.model.embeddings.patch_embedding.weight"])


def test_zero0_checkpoint_converts_from_its_model_states_file(tmp_path):
    """Without ZeRO there are no optimizer shards for zero_to_fp32: every weight is in the model-states file."""
    from vregion.engine.trainer import StageTrainer

    make_synthetic_shards(tmp_path / "shards", num_samples=16, image_size=32, seed=0, samples_per_shard=16)
    run = tmp_path / "run"
    cfg = load_config(REPO / "configs/tiny.yaml", [
        "stages=[]", f"run.output_dir={run}", f"data.train_shards={tmp_path}/shards", "data.synthetic.num_train=0",
        "data.synthetic.num_eval=0", "deepspeed.zero_stage=0", "region.mode=lora", "region.lora.r=4",
    ]).stage_configs()[0]
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    trainer = StageTrainer(cfg, run, resume=False)
    trainer._build()
    # A LoRA adapter that is not zero (peft starts B at zero), so folding it in changes the weights.
    for name, p in trainer.engine.module.named_parameters():
        if ".lora_B." in name:
            torch.nn.init.normal_(p.data, std=0.1)
    trainer._save(1, 0, Counter())
    live = {k: v.detach().clone() for k, v in trainer.engine.module.state_dict().items()}

    converted = read_state_dict(convert_checkpoint(run, tmp_path / "out"))
    assert not any("lora_" in k or "base_layer" in k for k in converted)
    folded = 0
    for key, value in live.items():
        if ".lora_" in key:
            continue
        plain = key.replace(".base_layer.", ".")
        if ".base_layer.weight" in key:
            prefix = key.split(".base_layer.")[0]
            a = next(v for k, v in live.items() if k.startswith(prefix + ".lora_A."))
            b = next(v for k, v in live.items() if k.startswith(prefix + ".lora_B."))
            value = value + (cfg.region.lora.alpha / cfg.region.lora.r) * b @ a
            assert not torch.equal(converted[plain], live[key]), plain
            folded += 1
        torch.testing.assert_close(converted[plain], value, rtol=0, atol=1e-6)
    assert folded == 7 * len(trainer.plan.layers) == 14  # q k v o gate up down in each of the 2 region layers


def test_half_written_checkpoint_is_refused(tmp_path):
    (tmp_path / "checkpoints" / "step-000002").mkdir(parents=True)
    with pytest.raises(ValueError, match="did not finish"):
        convert_checkpoint(tmp_path / "checkpoints" / "step-000002", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        convert_checkpoint(tmp_path, tmp_path / "out")
