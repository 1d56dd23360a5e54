"""`hf-trainer` in `vregion bench`: transformers.Trainer (+ DeepSpeed) training the same model as Hugging Face
LLaVA, interleaved with vregion's variants on the tiny config; the batch conversion by hand; refused cases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vregion.bench.hf_trainer import image_token_id, to_llava_batch
from vregion.bench.run import run_bench
from vregion.bench.variant import parse_variant
from vregion.config import RegionConfig, load_config
from vregion.data.collate import collate
from vregion.engine.prepare import prepare_data

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def hf_bench(tmp_path_factory):
    """hf-trainer (first: the ratios' reference), full and region, 2 rounds of 1 step (~1 minute). No warm-up
    of the lr, so every step moves the weights by the full lr and a different optimizer would show in the loss."""
    root = tmp_path_factory.mktemp("hfbench")
    cfg = load_config(CONFIGS / "tiny.yaml", [f"run.output_dir={root / 'run'}", "optim.warmup_ratio=0"])
    cfg = prepare_data(cfg.stage_configs()[-1], root / "run")
    result = run_bench(cfg, ["hf-trainer", "full", "region"], rounds=2, steps_per_round=1, out_dir=root / "out")
    return result, root / "out"


def test_hf_trainer_first_step_loss_equals_full(hf_bench):
    result, _ = hf_bench
    hf, full, _ = result["rows"]
    assert hf["step_losses"][0] == pytest.approx(full["step_losses"][0], rel=1e-5)
    check = result["meta"]["loss_check"]
    assert check["variants"] == ["hf-trainer", "full"] and check["equal"] and check["relative_difference"] <= 1e-5


def test_hf_trainer_trains_the_same_parameters_on_the_same_batches(hf_bench):
    result, _ = hf_bench
    hf, full, region = result["rows"]
    assert hf["trainable_params"] == full["trainable_params"] == hf["plan_trainable_params"]
    assert hf["trainable_params"] > region["trainable_params"]
    state = hf["optimizer_state_bytes_per_rank"]
    assert state == full["optimizer_state_bytes_per_rank"] == 8 * full["trainable_params"]  # fp32 Adam moments
    # state step + warm-up step + 2 timed steps, each on the next batch of the same stream
    assert len(hf["step_losses"]) == len(full["step_losses"]) == 4
    for a, b in zip(hf["step_losses"], full["step_losses"]):
        assert a == pytest.approx(b, rel=1e-5)  # same batches, same updates (AdamW groups, lr, clipping)
    # the comparison can fail: region trains another parameter set, and its loss leaves full's after one update
    assert region["step_losses"][0] == pytest.approx(full["step_losses"][0], rel=1e-6)
    assert abs(region["step_losses"][1] - full["step_losses"][1]) > 1e-4 * full["step_losses"][1]
    assert hf["tokens_per_sample"] == full["tokens_per_sample"] and hf["padding_share"] == full["padding_share"]
    assert hf["flops_per_sample"] == full["flops_per_sample"]  # the same work counted for both


def test_ratios_are_against_hf_trainer_and_the_report_says_how_it_ran(hf_bench):
    result, out = hf_bench
    hf, full, region = result["rows"]
    assert hf["tokens_per_s_ratio"] == 1.0
    assert full["tokens_per_s_ratio"] == pytest.approx(full["tokens_per_s"] / hf["tokens_per_s"])
    assert region["gpu_hours_ratio"] == pytest.approx(region["projected_gpu_hours"] / hf["projected_gpu_hours"])
    md = (out / "bench.md").read_text()
    assert "| vs hf-trainer |" in md.splitlines()[0]
    assert "- hf-trainer: transformers.Trainer + DeepSpeed ZeRO-2 (fp32)" in md
    assert "- first-step loss (same weights, same batch): hf-trainer " in md and "): equal." in md
    assert full["note"] is None


def _sample(ids: list[int], spans: list[tuple[int, int]], image_value: float) -> dict:
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(ids),
            "pixel_values": torch.full((len(spans), 3, 2, 2), image_value), "image_spans": spans}


def test_llava_batch_by_hand():
    """Sample 0: text, a 3-token image at 1..3, text; sample 1: text only; sample 2: two images. LLaVA finds the
    images by the token id, in sequence order, and gets no dummy."""
    batch = collate([_sample([5, 0, 0, 0, 6], [(1, 3)], 1.0), _sample([7, 8], [], 0.0),
                     _sample([0, 0, 0, 9, 0, 0, 0], [(0, 3), (4, 3)], 2.0)], pad_token_id=0, image_size=2)
    out = to_llava_batch(batch, token_id=99, num_tokens=3)
    assert out["input_ids"].tolist() == [[5, 99, 99, 99, 6, 0, 0], [7, 8, 0, 0, 0, 0, 0],
                                         [99, 99, 99, 9, 99, 99, 99]]
    assert out["pixel_values"].shape == (3, 3, 2, 2) and out["pixel_values"][:, 0, 0, 0].tolist() == [1.0, 2.0, 2.0]
    assert torch.equal(out["labels"], batch["labels"]) and torch.equal(out["attention_mask"], batch["attention_mask"])
    text_only = collate([_sample([7, 8], [], 0.0)], pad_token_id=0, image_size=2)  # gets a dummy image
    assert "pixel_values" not in to_llava_batch(text_only, token_id=99, num_tokens=3)
    with pytest.raises(ValueError, match="image token id 8 chosen for LLaVA occurs in the batch's text"):
        to_llava_batch(text_only, token_id=8, num_tokens=3)


def test_image_token_id_is_a_row_no_text_uses():
    from vregion.models import build_vlm

    cfg = load_config(CONFIGS / "tiny.yaml").stage_configs()[-1]
    _, tokenizer = build_vlm(cfg.model)
    assert image_token_id(tokenizer, len(tokenizer) + 52) == len(tokenizer)  # a spare embedding row
    full = image_token_id(tokenizer, len(tokenizer))
    assert full not in tokenizer.all_special_ids and full >= len(tokenizer) - 1 - len(tokenizer.all_special_ids)


@pytest.mark.parametrize("spec, message", [
    ("hf-trainer@2/8", "no visual-token pooling (@K/S) and no packed rows (+packed)"),
    ("hf-trainer+packed", "variant 'hf-trainer+packed': hf-trainer trains Hugging Face's LlavaForConditional"),
])
def test_pooling_and_packing_are_refused_on_hf_trainer(spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        parse_variant(spec, RegionConfig())
    grouped = parse_variant("hf-trainer+grouped", RegionConfig())
    assert grouped.base == "hf-trainer" and grouped.data_overrides(0) == {"packing": False, "group_by_length": 8}
    assert parse_variant("hf-trainer", RegionConfig()).data_overrides(4) == {"packing": False}


def test_cli_refuses_hf_trainer_on_a_tower_llava_has_not(capsys):
    from vregion.cli import main

    assert main(["bench", "demo", "--variants", "hf-trainer,full", "--rounds", "1"]) == 2
    err = capsys.readouterr().err
    assert "hf-trainer: the model cannot be trained as Hugging Face LLaVA" in err
    assert "vision backbone 'efficientnet-lite0' has no LLaVA counterpart" in err
    assert main(["bench", "tiny", "--variants", "full,hf-trainer@2/8"]) == 2
    assert "--variants: variant 'hf-trainer@2/8'" in capsys.readouterr().err


def test_projectors_llava_would_pad_or_extend_are_refused(tmp_path):
    """A narrower mlp2x_gelu is exported zero-padded and `linear` with an extra identity layer: exact for inference,
    but trained they are other models (more parameters, padding rows that learn)."""
    from vregion.bench.hf_trainer import build_hf_trainer, check_config
    from vregion.bench.run import bench_shape

    narrow = load_config(CONFIGS / "tiny.yaml", ["model.projector.hidden_size=32"]).stage_configs()[-1]
    with pytest.raises(ValueError, match="LLaVA can hold this projector only padded or extended"):
        build_hf_trainer(narrow, parse_variant("hf-trainer", narrow.region), tmp_path, bench_shape)
    linear = load_config(CONFIGS / "tiny.yaml", ["model.projector.type=linear"]).stage_configs()[-1]
    with pytest.raises(ValueError, match="projector 'linear' has no one-to-one LLaVA form"):
        check_config(linear)
