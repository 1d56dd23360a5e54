"""`vregion eval`: VQA normalisation, text perplexity, inference compression, and two CPU ranks == one rank."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from tests.engine.launch import REPO, free_port, train_env
from vregion.cli import main
from vregion.config import LLMConfig, ModelConfig, ProjectorConfig, VisionConfig, to_dict
from vregion.data import ImageProcessor, build_loader, make_synthetic_shards
from vregion.eval import normalize_answer
from vregion.eval.batches import positions
from vregion.eval.run import EvalOptions, evaluate_checkpoint
from vregion.models import build_vlm, load_checkpoint, save_checkpoint

TEMPLATE = "vicuna-v1"
PASSAGES = [
    "The quick brown fox jumps over the lazy dog.",
    "",  # blank lines are not passages
    "A journey of a thousand miles begins with a single step.",
    "Colourless green ideas sleep furiously.",
    "To be, or not to be, that is the question.",
    "All happy families are alike; each unhappy family is unhappy in its own way.",
]


def tiny_config() -> ModelConfig:
    """configs/tiny.yaml's model at 16 px (4 visual tokens) and 2 layers: trains in a few seconds on one core."""
    return ModelConfig(
        vision=VisionConfig(type="clip", tiny={"image_size": 16, "patch_size": 8}),
        projector=ProjectorConfig(type="mlp2x_gelu"),
        llm=LLMConfig(tiny={"family": "llama", "num_hidden_layers": 2, "initializer_range": 0.15}),
        template=TEMPLATE,
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A briefly trained tiny checkpoint (so some answers are right), VQA shards and a passage file."""
    root = tmp_path_factory.mktemp("eval")
    make_synthetic_shards(root / "train", 96, image_size=16, seed=0, samples_per_shard=96)
    make_synthetic_shards(root / "vqa", 32, image_size=16, seed=1, samples_per_shard=8)  # 4 shards >= 2 ranks
    (root / "passages.txt").write_text("\n".join(PASSAGES) + "\n")
    torch.manual_seed(0)
    cfg = tiny_config()
    model, tokenizer = build_vlm(cfg)
    loader = build_loader(
        str(root / "train"), tokenizer=tokenizer, template=TEMPLATE,
        image_processor=ImageProcessor(16, model.vision.image_mean, model.vision.image_std),
        num_image_tokens=model.num_visual_tokens, image_token_id=tokenizer.pad_token_id, max_length=256,
        micro_batch_size=8, seed=0, shuffle_buffer=0, infinite=True,
    )
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _, batch in zip(range(40), loader):
        keys = ("input_ids", "attention_mask", "labels", "pixel_values", "image_spans")
        loss = model(**{k: batch[k] for k in keys}, return_logits=False)["loss"]
        optim.zero_grad()
        loss.backward()
        optim.step()
    config = {"model": to_dict(cfg), "data": {"max_length": 256}, "compress": {"schedule": None}}
    save_checkpoint(model, config, tokenizer, root / "ckpt")
    return root


def eval_args(root, out) -> list[str]:
    return ["eval", str(root / "ckpt"), "--vqa", str(root / "vqa"), "--text", str(root / "passages.txt"),
            "--max-samples", "29", "--batch-size", "4", "--max-new-tokens", "10", "--out", str(out),
            "--predictions", str(out.with_suffix(".jsonl"))]


def run_two_ranks(root) -> dict:
    out = root / "eval-2.json"
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port",
               str(free_port()), "--module", "vregion.cli", *eval_args(root, out)]
    proc = subprocess.run(command, cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"eval failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(out.read_text())


def test_normalize_answer_follows_vqa_rules():
    # The cases tests/eval/test_generation_eval.py does not cover.
    assert normalize_answer("Ten") == "10" and normalize_answer("none") == "0"
    assert normalize_answer("1.5") == "1.5" != normalize_answer("15")  # a decimal point is not punctuation
    assert normalize_answer("2.") == "2"  # a sentence's full stop is
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer("Yes, it is.") == "yes it is"
    assert normalize_answer("red/blue") == "red/blue"


def test_two_cpu_ranks_give_one_rank_figures(setup, capsys):
    assert main(eval_args(setup, setup / "eval-1.json")) == 0  # one rank, in this process (no process group)
    one = json.loads((setup / "eval-1.json").read_text())
    assert json.loads(capsys.readouterr().out) == one  # stdout carries the same JSON, and nothing else
    two = run_two_ranks(setup)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    # 29 of the 32 positions, split 15 / 14 across ranks: the same samples, each scored once.
    assert one["vqa"]["samples"] == two["vqa"]["samples"] == 29
    assert 0 < one["vqa"]["correct"] < 29  # some answers right, some wrong: the sum means something
    assert one["vqa"]["correct"] == two["vqa"]["correct"]
    assert one["vqa"]["accuracy"] == pytest.approx(one["vqa"]["correct"] / 29)
    for name in ("vqa_loss", "text"):
        assert one[name]["samples"] == two[name]["samples"] and one[name]["tokens"] == two[name]["tokens"], name
        assert two[name]["loss"] == pytest.approx(one[name]["loss"], rel=1e-6, abs=1e-6), name
        assert two[name]["perplexity"] == pytest.approx(one[name]["perplexity"], rel=1e-6), name
    assert one["text"]["samples"] == 5
    # --predictions: every answer once, in the set's order, whichever rank gave it; it adds up to the figures.
    rows = [json.loads(line) for line in (setup / "eval-1.jsonl").read_text().splitlines()]
    assert (setup / "eval-2.jsonl").read_text() == (setup / "eval-1.jsonl").read_text()
    assert one["vqa"]["predictions_file"] == str(setup / "eval-1.jsonl") and "predictions" not in one["vqa"]
    assert [r["position"] for r in rows] == list(range(29))
    assert sum(r["correct"] for r in rows) == one["vqa"]["correct"]
    assert all(r["correct"] == (normalize_answer(r["answer"]) == normalize_answer(r["gold"])) for r in rows)
    raws = list(positions(str(setup / "vqa")))[:29]
    sources = [json.loads(raw["json"]) for raw in raws]
    assert [r["id"] for r in rows] == [str(meta["id"]) for meta in sources]
    assert [r["gold"] for r in rows] == [meta["conversations"][1]["value"] for meta in sources]
    assert [r["question"] for r in rows] == [meta["conversations"][0]["value"].replace("<image>", "").strip()
                                             for meta in sources]


def test_text_perplexity_is_the_token_weighted_loss_of_each_passage(setup):
    result = evaluate_checkpoint(setup / "ckpt", EvalOptions(text=str(setup / "passages.txt"), batch_size=3))
    text = result["text"]
    model, tokenizer, _ = load_checkpoint(setup / "ckpt")
    loss_sum = tokens = 0.0
    with torch.no_grad():
        for passage in filter(None, PASSAGES):  # one at a time: no padding, no batching
            ids = torch.tensor([tokenizer(passage)["input_ids"]])
            logits = model.llm(input_ids=ids).logits  # (1, T, V): the LLM alone, no image
            loss_sum += torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").item()
            tokens += ids.shape[1] - 1
    assert text["samples"] == 5 and text["tokens"] == tokens
    assert text["loss"] == pytest.approx(loss_sum / tokens, rel=1e-5)
    assert math.isfinite(text["perplexity"]) and text["perplexity"] == pytest.approx(math.exp(text["loss"]))


def test_text_on_shards_scores_only_their_text_only_samples(setup, capsys):
    """`--text` measures language ability: image samples in its shards are left out (and counted), and shards
    with no text-only sample are refused before the model loads (they used to give --loss's number)."""
    import io

    from PIL import Image

    from vregion.data import write_shards

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, format="PNG")
    talk = [{"id": f"t{i}", "images": [], "conversations": [
        {"from": "human", "value": f"Say {p}"}, {"from": "gpt", "value": p}]} for i, p in enumerate(PASSAGES[2:5])]
    seen = [{"id": f"i{i}", "images": [buf.getvalue()], "conversations": [
        {"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "red"}]} for i in range(2)]
    write_shards([seen[0], talk[0], talk[1], seen[1], talk[2]], setup / "mixed", samples_per_shard=8)
    write_shards(talk, setup / "talk", samples_per_shard=8)
    mixed = evaluate_checkpoint(setup / "ckpt", EvalOptions(text=str(setup / "mixed"), batch_size=2))["text"]
    only = evaluate_checkpoint(setup / "ckpt", EvalOptions(text=str(setup / "talk"), batch_size=2))["text"]
    assert mixed["samples"] == only["samples"] == 3 and mixed["tokens"] == only["tokens"]
    assert mixed["loss"] == pytest.approx(only["loss"], rel=1e-6)
    assert mixed["skipped_image_samples"] == 2 and only["skipped_image_samples"] == 0

    write_shards(seen, setup / "seen", samples_per_shard=8)
    assert main(["eval", str(setup / "ckpt"), "--text", str(setup / "seen")]) == 2
    assert "none of its first 2 samples is text-only" in capsys.readouterr().err


def test_compression_at_inference_pools_visual_tokens(setup):
    opts = dict(vqa=str(setup / "vqa"), max_samples=8, batch_size=4, max_new_tokens=3)
    plain = evaluate_checkpoint(setup / "ckpt", EvalOptions(**opts))
    pooled = evaluate_checkpoint(setup / "ckpt", EvalOptions(compress="16/2", **opts))
    assert plain["compression"] is None  # "auto" with no schedule in the checkpoint
    assert pooled["compression"] == {"layer": 1, "stride": 2}  # K=16 of 32 on a 2-layer LLM
    assert pooled["vqa"]["samples"] == plain["vqa"]["samples"] == 8
    assert pooled["vqa_loss"]["tokens"] == plain["vqa_loss"]["tokens"]  # pooling drops visual, not answer, tokens
    assert pooled["vqa_loss"]["loss"] != pytest.approx(plain["vqa_loss"]["loss"], rel=1e-4)


def test_auto_compression_follows_an_explicit_inference_setting_in_the_checkpoint(setup):
    """A checkpoint whose config says `compress.inference: 16/2` pools at 16/2 under `--compress auto` (auto
    used to mean "the schedule's setting" and dropped an explicit one)."""
    import shutil

    import yaml

    ckpt = setup / "ckpt-16-2"
    shutil.copytree(setup / "ckpt", ckpt)
    config = yaml.safe_load((ckpt / "config.yaml").read_text())
    config["compress"] = {"schedule": None, "inference": "16/2"}
    (ckpt / "config.yaml").write_text(yaml.safe_dump(config))
    opts = dict(vqa=str(setup / "vqa"), max_samples=4, batch_size=4, max_new_tokens=2)
    assert evaluate_checkpoint(ckpt, EvalOptions(**opts))["compression"] == {"layer": 1, "stride": 2}
    assert evaluate_checkpoint(ckpt, EvalOptions(compress="none", **opts))["compression"] is None
