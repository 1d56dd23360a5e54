"""Closed-set VQA (`vregion eval --choices`): scores equal a full forward per candidate; ranks, CLI, errors, 2 ranks."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest
import torch

from tests.engine.launch import REPO, free_port, train_env
from tests.eval.test_eval_cli import TEMPLATE, tiny_config
from vregion.cli import main
from vregion.config import to_dict
from vregion.constants import IGNORE_INDEX
from vregion.data import (ImageProcessor, build_loader, make_synthetic_shards, resolve_shards, tokenize_conversation,
                          write_shards)
from vregion.data.decode import SampleDecoder
from vregion.data.stream import rank_stream
from vregion.eval import normalize_answer
from vregion.eval.closed_set import candidate_ids, decoded_prompts, gold_rank, score_candidates
from vregion.eval.run import EvalOptions, evaluate_checkpoint, load_for_eval
from vregion.models import build_vlm, save_checkpoint

SAMPLES = 12  # of the 32 VQA positions: colours, shapes and a few text-only sums


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A briefly trained tiny checkpoint (some answers right, some wrong) and VQA shards (4 shards, for 2 ranks)."""
    root = tmp_path_factory.mktemp("closed-set")
    make_synthetic_shards(root / "train", 64, image_size=16, seed=0, samples_per_shard=64)
    make_synthetic_shards(root / "vqa", 32, image_size=16, seed=1, samples_per_shard=8)
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
    for _, batch in zip(range(25), loader):
        keys = ("input_ids", "attention_mask", "labels", "pixel_values", "image_spans")
        loss = model(**{k: batch[k] for k in keys}, return_logits=False)["loss"]
        optim.zero_grad()
        loss.backward()
        optim.step()
    save_checkpoint(model, {"model": to_dict(cfg), "data": {"max_length": 256}, "compress": {"schedule": None}},
                    tokenizer, root / "ckpt")
    return root


def raw_samples(shards, n: int) -> list[dict]:
    return list(itertools.islice(rank_stream(resolve_shards(str(shards)), seed=0, rank=0, world_size=1,
                                             shuffle_buffer=0, infinite=False), n))


def eval_decoder(model, tokenizer) -> SampleDecoder:
    vision = model.vision
    images = ImageProcessor(vision.image_size, vision.image_mean, vision.image_std, vision.image_aspect)
    return SampleDecoder(tokenizer, TEMPLATE, images, vision.num_tokens, tokenizer.pad_token_id, 256)


def hand_scores(model, decoder, raw: dict, candidates: list[str]) -> tuple[list[float], list[list[int]]]:
    """Per candidate: the sample's conversation with the candidate as its answer, rendered by the training template,
    one full forward (vision included), log_softmax summed over the answer + end-of-turn tokens."""
    meta = json.loads(raw["json"])
    scores, ids_seen = [], []
    for text in candidates:
        turns = [dict(t) for t in meta["conversations"]]
        turns[1]["value"] = text
        tokens = tokenize_conversation(turns, decoder.tokenizer, TEMPLATE, decoder.num_image_tokens, 256,
                                       decoder.image_token_id, num_images=meta["num_images"])
        supervised = [i for i, t in enumerate(tokens.labels) if t != IGNORE_INDEX]
        ids = torch.tensor(tokens.input_ids[: supervised[-1] + 1])[None]  # (1, P + L)
        answer = tokens.labels[supervised[0]: supervised[-1] + 1]
        pixels = [decoder.image_processor(raw[f"img{i}.png"]) for i in range(meta["num_images"])]
        spans = torch.tensor([[0, s, decoder.num_image_tokens] for s in tokens.image_starts]) if pixels else None
        logits = model(ids, torch.ones_like(ids), pixel_values=torch.stack(pixels) if pixels else None,
                       image_spans=spans)["logits"]  # (1, T', V); pooling shortens the prompt, not the answer
        logp = torch.log_softmax(logits[0, -len(answer) - 1: -1].float(), dim=-1)  # (L, V)
        scores.append(float(logp.gather(-1, torch.tensor(answer)[:, None]).sum()))
        ids_seen.append(answer)
    return scores, ids_seen


@pytest.fixture(scope="module", params=["none", "16/2"])
def hand(root, request):
    """(compress, candidates, per-sample hand scores, per-sample gold index, model, decoder, raws)."""
    model, tokenizer, _, _ = load_for_eval(root / "ckpt", request.param, torch.float32)
    decoder = eval_decoder(model, tokenizer)
    raws = raw_samples(root / "vqa", SAMPLES)
    golds = [normalize_answer(json.loads(r["json"])["conversations"][1]["value"]) for r in raws]
    candidates = sorted(set(golds))
    with torch.no_grad():
        scored = [hand_scores(model, decoder, raw, candidates) for raw in raws]
    return request.param, candidates, scored, [candidates.index(g) for g in golds], model, decoder, raws


def test_scores_equal_a_full_forward_per_candidate(hand):
    compress, candidates, scored, _, model, decoder, raws = hand
    assert (model.runner.between_layers is None) == (compress == "none")
    cands = candidate_ids(candidates, decoder)
    items = list(decoded_prompts(raws, decoder))
    assert len(items) == SAMPLES and sum(bool(it["starts"]) for it in items) not in (0, SAMPLES)
    with torch.no_grad():
        for item, (scores, ids) in zip(items, scored):
            assert cands == ids  # the template's answer ids, end-of-turn included, whatever the question
            assert cands[0][-1] == decoder.tokenizer.convert_tokens_to_ids("</s>")
            got = score_candidates(model, item, cands, rows=4)  # 4 a forward: several chunks, ragged last one
            assert got.tolist() == pytest.approx(scores, abs=1e-5)


def test_reported_accuracy_and_mean_rank_follow_the_hand_scores(root, hand):
    compress, candidates, scored, gold, *_ = hand
    ranks = [1 + sum(s > scores[g] for s in scores) for (scores, _), g in zip(scored, gold)]
    result = evaluate_checkpoint(root / "ckpt", EvalOptions(choices=str(root / "vqa"), compress=compress,
                                                            max_samples=SAMPLES, batch_size=5, num_examples=3))
    choices = result["choices"]
    assert choices["samples"] == SAMPLES and choices["candidates"] == len(candidates)
    assert 0 < choices["correct"] < SAMPLES  # some right, some wrong: accuracy and rank mean something
    assert choices["correct"] == sum(r == 1 for r in ranks)
    assert choices["accuracy"] == pytest.approx(choices["correct"] / SAMPLES)
    assert choices["mean_rank"] == pytest.approx(sum(ranks) / SAMPLES)
    best = [candidates[max(range(len(s)), key=s.__getitem__)] for s, _ in scored]
    assert choices["examples"] == [{"gold": candidates[g], "best": candidates[g] if r == 1 else b, "rank": r}
                                   for g, r, b in zip(gold[:3], ranks[:3], best[:3])]


def test_ties_do_not_hurt_the_gold_answer():
    scores = torch.tensor([-1.0, -2.0, -1.0, -0.5])
    assert gold_rank(scores, 0) == gold_rank(scores, 2) == 2
    assert gold_rank(scores, 3) == 1 and gold_rank(scores, 1) == 4


def test_cli_writes_the_choices_section_with_a_candidate_file(root, capsys):
    raws = raw_samples(root / "vqa", 8)
    golds = sorted({json.loads(r["json"])["conversations"][1]["value"] for r in raws})
    (root / "cands.txt").write_text("\n".join(["", "purple", *golds, "", "hexagon"]) + "\n")
    out = root / "choices.json"
    argv = ["eval", str(root / "ckpt"), "--choices", str(root / "vqa"), "--candidates", str(root / "cands.txt"),
            "--max-samples", "8", "--batch-size", "3", "--num-examples", "2", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    choices = result["choices"]
    assert set(choices) == {"accuracy", "mean_rank", "samples", "candidates", "correct", "examples"}
    assert choices["samples"] == 8 and choices["candidates"] == len(golds) + 2  # blank lines are not answers
    assert 1 <= choices["mean_rank"] <= len(golds) + 2 and choices["accuracy"] == choices["correct"] / 8
    assert len(choices["examples"]) == 2 and set(choices["examples"][0]) == {"gold", "best", "rank"}


def test_bad_candidate_lists_exit_2_before_the_model_loads(root, no_model, capsys, tmp_path):
    vqa = str(root / "vqa")
    ckpt = str(root / "ckpt")
    golds = {normalize_answer(json.loads(r["json"])["conversations"][1]["value"]) for r in raw_samples(vqa, 8)}
    kept = sorted(golds)[:2]
    (tmp_path / "short.txt").write_text("\n".join(kept) + "\n")
    assert main(["eval", ckpt, "--choices", vqa, "--candidates", str(tmp_path / "short.txt"),
                 "--max-samples", "8"]) == 2
    missing = ", ".join(map(repr, sorted(golds - set(kept))))
    assert f"gold answer(s) not among the candidates: {missing}" in capsys.readouterr().err

    (tmp_path / "one.txt").write_text("red\n\n")
    assert main(["eval", ckpt, "--choices", vqa, "--candidates", str(tmp_path / "one.txt")]) == 2
    assert "at least 2 candidate answers" in capsys.readouterr().err

    (tmp_path / "twice.txt").write_text("Red\nred.\nblue\n")
    assert main(["eval", ckpt, "--choices", vqa, "--candidates", str(tmp_path / "twice.txt")]) == 2
    assert "the same answer once normalised" in capsys.readouterr().err

    assert main(["eval", ckpt, "--choices", vqa, "--candidates", str(tmp_path / "nowhere.txt")]) == 2
    assert "--candidates: no such file" in capsys.readouterr().err

    assert main(["eval", ckpt, "--vqa", vqa, "--candidates", str(tmp_path / "short.txt")]) == 2
    assert "give --choices SHARDS too" in capsys.readouterr().err

    same = [{"id": f"s{i}", "images": [], "conversations": [{"from": "human", "value": "Say yes"},
                                                            {"from": "gpt", "value": "Yes."}]} for i in range(3)]
    write_shards(same, tmp_path / "same", samples_per_shard=8)
    assert main(["eval", ckpt, "--choices", str(tmp_path / "same")]) == 2
    assert "at least 2 candidate answers, got 1 from the gold answers" in capsys.readouterr().err


def test_two_cpu_ranks_give_one_rank_figures(root):
    """Ranks score positions r, r + 2, ... and all-reduce correct answers, rank sums and samples."""
    args = ["eval", str(root / "ckpt"), "--choices", str(root / "vqa"), "--max-samples", "13", "--batch-size", "4"]
    one = evaluate_checkpoint(root / "ckpt", EvalOptions(choices=str(root / "vqa"), max_samples=13, batch_size=4))
    out = root / "choices-2.json"
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port",
               str(free_port()), "--module", "vregion.cli", *args, "--out", str(out)]
    proc = subprocess.run(command, cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"eval failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    two = json.loads(out.read_text())
    assert two["world_size"] == 2 and two["choices"]["samples"] == one["choices"]["samples"] == 13  # 7 + 6
    for key in ("correct", "candidates"):  # examples come from rank 0's share, not the same samples
        assert two["choices"][key] == one["choices"][key], key
    assert two["choices"]["mean_rank"] == pytest.approx(one["choices"]["mean_rank"], rel=1e-12)
    assert two["choices"]["accuracy"] == pytest.approx(one["choices"]["accuracy"], rel=1e-12)


def test_training_evaluation_scores_the_same_closed_set(root):
    """`eval.choice_shards` (before/after a training run) gives `vregion eval --choices`' figures, and the table
    shows them."""
    from vregion.config import EvalConfig
    from vregion.eval import evaluate_model, format_report

    opts = EvalOptions(choices=str(root / "vqa"), max_samples=SAMPLES)
    expected = evaluate_checkpoint(root / "ckpt", opts)["choices"]
    model, tokenizer, _, _ = load_for_eval(root / "ckpt", "none", torch.float32)
    cfg = EvalConfig(choice_shards=str(root / "vqa"), max_samples=SAMPLES)
    got = evaluate_model(model, tokenizer, cfg, TEMPLATE, 256)["choices"]
    assert got["samples"] == expected["samples"] > 0
    assert got["correct"] == expected["correct"] and got["mean_rank"] == pytest.approx(expected["mean_rank"])
    assert got["candidates"] == expected["candidates"] >= 2 and got["examples"] == expected["examples"]
    table = format_report({}, {"choices": got})
    assert f"closed-set accuracy ({got['candidates']})" in table and f"{got['accuracy']:.1%}" in table


def test_before_after_sets_cover_the_first_max_samples_positions_whatever_the_batch_size(root):
    """A batch size that does not divide max_samples must not read past it: accuracy, answer loss and caption
    loss cover the same first positions as `vregion eval` with another batch size."""
    from vregion.config import EvalConfig
    from vregion.eval import evaluate_model

    shards = str(root / "vqa")
    model, tokenizer, _, _ = load_for_eval(root / "ckpt", "none", torch.float32)
    cfg = EvalConfig(vqa_shards=shards, caption_shards=shards, max_samples=10, batch_size=4, max_new_tokens=4)
    got = evaluate_model(model, tokenizer, cfg, TEMPLATE, 256)
    expected = evaluate_checkpoint(root / "ckpt", EvalOptions(vqa=shards, max_samples=10, batch_size=3,
                                                              max_new_tokens=4))
    assert got["vqa"]["samples"] == got["vqa_loss"]["samples"] == got["caption"]["samples"] == 10
    assert got["vqa_loss"]["tokens"] == expected["vqa_loss"]["tokens"] > 0
    assert got["vqa_loss"]["loss"] == pytest.approx(expected["vqa_loss"]["loss"], rel=1e-5)
    assert got["vqa"]["accuracy"] == pytest.approx(expected["vqa"]["accuracy"])
