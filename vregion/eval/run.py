"""`vregion eval`: score a checkpoint on held-out sets; launched on several ranks, each scores a share.

Sets: short-answer VQA (greedy answers, normalised exact match, plus the answer loss), closed-set VQA (the gold
answer's rank among candidate answers by log-likelihood, `eval.closed_set`), caption loss, held-out loss on any
conversation shards, and text-only perplexity (a passage file or text-only shards: how much language ability
tuning kept). Rank r of R scores positions r, r + R, ... of the first `max_samples` positions of the unshuffled
stream, so the ranks together score exactly the samples one process scores; the sums behind every figure (correct
answers and answers; gold ranks; loss x tokens, tokens and samples) are all-reduced, so the figures equal one
rank's up to float summation order. The model is a plain module on every rank (no ZeRO), so ranks
need not run the same number of forwards.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, Optional

import torch
from tqdm import tqdm

from vregion import distributed as dist
from vregion.config import ConfigError, EvalConfig
from vregion.constants import DTYPES
from vregion.data import ImageProcessor, count_samples, validate_template
from vregion.data.decode import SampleDecoder
from vregion.eval.closed_set import (build_candidates, candidate_ids, closed_set_counts, closed_set_result,
                                     decoded_prompts, gold_answer)
from vregion.eval.batches import count_image_samples, positions, shard_batches
from vregion.eval.loss import loss_result, mean_loss
from vregion.eval.report import evaluate_model
from vregion.eval.text import is_text_file, read_passages, text_batches


@dataclasses.dataclass
class EvalOptions:
    """What `vregion eval` scores and how (the CLI flags)."""

    vqa: Optional[str] = None  # short-answer VQA shards: generation accuracy + answer loss
    choices: Optional[str] = None  # VQA shards: rank of the gold answer among the candidates by log-likelihood
    candidates: Optional[str] = None  # file, one candidate answer a line (default: the shards' distinct golds)
    captions: Optional[str] = None  # caption shards: held-out loss
    loss: Optional[str] = None  # any conversation shards: held-out loss
    text: Optional[str] = None  # text file (one passage a line) or text-only shards: perplexity
    compress: str = "auto"  # auto (the checkpoint's compress.inference) | none | K/S (K of 32 layers)
    max_samples: int = 200  # per set, over all ranks
    batch_size: int = 16  # per rank
    max_new_tokens: int = 16
    num_examples: int = 4  # example answers (from rank 0's share)
    predictions: Optional[str] = None  # JSONL file: every --vqa answer (position, id, question, gold, answer)
    dtype: str = "fp32"


def _share(total: Optional[int], rank: int, world_size: int) -> Optional[int]:
    return None if total is None else len(range(rank, total, world_size))


def _progress(batches: Iterable[dict], desc: str, total: Optional[int]) -> Iterator[dict]:
    """Batches passed through, with a per-sample tqdm bar on rank 0 (stderr: stdout carries the JSON)."""
    bar = tqdm(total=total, desc=desc, unit="sample", file=sys.stderr, disable=not dist.is_main(), leave=False)
    try:
        for batch in batches:
            yield batch
            bar.update(batch["num_samples"])
    finally:
        bar.close()


def reduce_results(results: dict) -> dict:
    """Sum every section's counts over ranks and recompute its figures (every rank calls this, same order)."""
    merged = {}
    for name in sorted(results):
        r = results[name]
        if "rank_sum" in r:
            rank_sum, correct, samples = dist.all_reduce_sum([float(r["rank_sum"]), float(r["correct"]),
                                                              float(r["samples"])])
            merged[name] = closed_set_result(rank_sum, correct, samples, r["candidates"], r["examples"])
        elif "accuracy" in r:
            correct, samples = dist.all_reduce_sum([float(r["correct"]), float(r["samples"])])
            merged[name] = {"accuracy": correct / max(samples, 1.0), "correct": int(correct),
                            "samples": int(samples), "examples": r["examples"]}
            if "predictions" in r:  # every rank's answers, back in the set's order
                shares = dist.all_gather_objects(r["predictions"])
                merged[name]["predictions"] = sorted((p for share in shares for p in share),
                                                     key=lambda p: p["position"])
        else:
            loss_sum, tokens, samples = dist.all_reduce_sum([r["loss"] * r["tokens"], float(r["tokens"]),
                                                             float(r["samples"])])
            merged[name] = loss_result(loss_sum, tokens, samples)
    return merged


def _closed_set(model, decoder: SampleDecoder, candidates: list[str], opts: EvalOptions, rank: int,
                world: int) -> dict:
    """This rank's closed-set counts over its share of `opts.choices` (see `eval.closed_set`)."""
    raws = itertools.islice(positions(opts.choices), rank, opts.max_samples, world)
    total = count_samples(opts.choices)
    share = _share(None if total is None else min(total, opts.max_samples), rank, world)
    bar = tqdm(raws, total=share, desc=Path(opts.choices).name, unit="sample", file=sys.stderr,
               disable=not dist.is_main(), leave=False)
    return closed_set_counts(model, decoded_prompts(bar, decoder), candidates, candidate_ids(candidates, decoder),
                             opts.batch_size, opts.num_examples)


def load_for_eval(checkpoint: str | Path, compress: str, dtype: torch.dtype):
    """(model on this rank's device, tokenizer, config dict, compression stage applied to the model)."""
    from vregion.compress import CompressionController
    from vregion.models import load_checkpoint

    model, tokenizer, config = load_checkpoint(checkpoint, dtype)
    model.to(dist.device()).eval()
    # auto: the checkpoint's own compress.inference (its schedule's setting, or a K/S)
    compression = CompressionController.from_config_dict(config, model.runner.num_layers, inference=compress)
    stage = compression.inference
    compression.apply(model, stage)
    return model, tokenizer, config, stage


@torch.inference_mode()
def evaluate_checkpoint(checkpoint: str | Path, opts: EvalOptions) -> dict:
    """Scores of `checkpoint` on the sets in `opts`, identical on every rank (see the module docstring).

    Returns:
        {"checkpoint", "compression" (null or {"layer", "stride"}), "world_size", "max_samples", and per set
        present: "vqa" {accuracy, correct, samples, examples[, predictions: every answer, with --predictions]}, "choices" {accuracy, mean_rank, samples,
        candidates, correct, examples}, "vqa_loss" / "caption" / "loss" / "text"
        {loss, perplexity, samples, tokens}}.
    """
    if opts.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {opts.dtype!r}; valid: {', '.join(DTYPES)}")
    if opts.predictions and not opts.vqa:
        raise ConfigError("--predictions lists the --vqa answers: give --vqa SHARDS as well")
    text_skipped = 0
    if opts.text and not is_text_file(opts.text):  # checked before the model loads
        text_skipped, read = count_image_samples(opts.text, opts.max_samples)
        if text_skipped == read:
            raise ConfigError(  # exit 2, like any bad argument
                f"--text {opts.text}: none of its first {read} samples is text-only ({text_skipped} have images); "
                "--text measures language ability without images: give a passage file or text-only shards "
                "(score image conversations with --loss)")
    # Every rank builds the same list from all the first max_samples golds; bad lists exit 2 before the model loads.
    candidates = None
    if opts.choices:
        golds = [gold_answer(raw) for raw in itertools.islice(positions(opts.choices), opts.max_samples)]
        candidates = build_candidates(golds, opts.candidates)
    model, tokenizer, config, stage = load_for_eval(checkpoint, opts.compress, DTYPES[opts.dtype])
    template = (config.get("model") or {}).get("template", "vicuna-v1")
    max_length = int((config.get("data") or {}).get("max_length", 2048))
    rank, world = dist.rank(), dist.world_size()
    vision = model.vision
    validate_template(tokenizer, template)
    images = ImageProcessor(vision.image_size, vision.image_mean, vision.image_std, vision.image_aspect)
    decoder = SampleDecoder(tokenizer, template, images, vision.num_tokens, tokenizer.pad_token_id, max_length)

    def batches(shards: str, text_only: bool = False) -> Iterator[dict]:
        total = count_samples(shards)
        share = _share(None if total is None else min(total, opts.max_samples), rank, world)
        parts = shard_batches(shards, decoder, vision.image_size, tokenizer.pad_token_id, opts.batch_size,
                              opts.max_samples, rank, world, text_only=text_only)
        return _progress(parts, Path(shards).name, share)

    # evaluate_model's own sample cap must not cut a rank's share short: the share already holds <= max_samples.
    ecfg = EvalConfig(vqa_shards=opts.vqa, caption_shards=opts.captions, max_samples=opts.max_samples,
                      batch_size=opts.batch_size, max_new_tokens=opts.max_new_tokens, num_examples=opts.num_examples)
    results = evaluate_model(model, tokenizer, ecfg, template, max_length, batches=batches,
                             keep_predictions=bool(opts.predictions))
    if opts.choices:
        results["choices"] = _closed_set(model, decoder, candidates, opts, rank, world)
    if opts.loss:
        results["loss"] = mean_loss(model, batches(opts.loss), opts.max_samples)
    if opts.text:
        if is_text_file(opts.text):
            passages = read_passages(opts.text, opts.max_samples)[rank::world]
            parts = text_batches(passages, tokenizer, max_length, opts.batch_size, vision.image_size)
            text = _progress(parts, Path(opts.text).name, len(passages))
        else:
            text = batches(opts.text, text_only=True)
        results["text"] = mean_loss(model, text, opts.max_samples)
    compression = None if stage.layer is None else {"layer": stage.layer, "stride": stage.stride}
    merged = reduce_results(results)
    if "text" in merged:
        merged["text"]["skipped_image_samples"] = text_skipped
    return {"checkpoint": str(checkpoint), "compression": compression, "world_size": world,
            "max_samples": opts.max_samples, **merged}


def write_predictions(predictions: list[dict], path: str | Path) -> None:
    """One JSON object a line, in the set's order: what `--predictions` writes (a partial file is never left)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(p) + "\n" for p in predictions))
    partial.replace(path)


def run_eval(checkpoint: str | Path, opts: EvalOptions, out: str | Path | None = None) -> dict:
    """Evaluate (joining the launcher's process group when there is one); rank 0 prints the JSON and writes `out`."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_distributed()
    result = evaluate_checkpoint(checkpoint, opts)
    predictions = result.get("vqa", {}).pop("predictions", None)
    if dist.is_main():
        if predictions is not None:
            write_predictions(predictions, opts.predictions)
            result["vqa"]["predictions_file"] = str(opts.predictions)
        text = json.dumps(result, indent=2)
        if out is not None:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(text + "\n")
        print(text, flush=True)
    dist.barrier()
    return result
