"""Held-out evaluation of a model on the configured sets, and a before/after table for the console."""

from __future__ import annotations

import itertools
from typing import Callable, Iterable

import torch

from vregion.config import EvalConfig
from vregion.data import ImageProcessor, build_loader
from vregion.data.decode import SampleDecoder
from vregion.eval.batches import positions, shard_batches
from vregion.eval.closed_set import (build_candidates, candidate_ids, closed_set_counts, closed_set_result,
                                     decoded_prompts, gold_answer)
from vregion.eval.generation import answer_accuracy
from vregion.eval.loss import mean_loss


def eval_batches(model, tokenizer, shards: str, template: str, max_length: int, batch_size: int):
    """One ordered pass over `shards`, tokenized for this model (single process)."""
    vision = model.vision
    return build_loader(
        shards,
        tokenizer=tokenizer,
        template=template,
        image_processor=ImageProcessor(vision.image_size, vision.image_mean, vision.image_std, vision.image_aspect),
        num_image_tokens=vision.num_tokens,
        image_token_id=tokenizer.pad_token_id,
        max_length=max_length,
        micro_batch_size=batch_size,
        seed=0,
        shuffle_buffer=0,
        infinite=False,
    )


def closed_set_accuracy(model, tokenizer, cfg: EvalConfig, template: str, max_length: int) -> dict:
    """The "choices" section (`eval.closed_set`) of `cfg.choice_shards`' first `max_samples` samples (one process)."""
    vision = model.vision
    images = ImageProcessor(vision.image_size, vision.image_mean, vision.image_std, vision.image_aspect)
    decoder = SampleDecoder(tokenizer, template, images, vision.num_tokens, tokenizer.pad_token_id, max_length)
    raws = list(itertools.islice(positions(cfg.choice_shards), cfg.max_samples))
    candidates = build_candidates([gold_answer(raw) for raw in raws], cfg.choice_candidates)
    counts = closed_set_counts(model, decoded_prompts(raws, decoder), candidates, candidate_ids(candidates, decoder),
                               cfg.batch_size, cfg.num_examples)
    return closed_set_result(counts["rank_sum"], counts["correct"], counts["samples"], counts["candidates"],
                             counts["examples"])


def evaluate_model(
    model, tokenizer, cfg: EvalConfig, template: str, max_length: int,
    batches: Callable[[str], Iterable[dict]] | None = None, keep_predictions: bool = False,
) -> dict:
    """{"vqa": {accuracy, samples, examples}, "caption": {loss, perplexity, ...}} for the configured sets.

    Args:
        batches: shards -> one ordered pass of batches; default the first `cfg.max_samples` positions (one
            process).
            `vregion eval` passes its per-rank share of the samples here.
        keep_predictions: the "vqa" section also lists every answer (`answer_accuracy`).
    """
    if batches is None:
        vision = model.vision
        images = ImageProcessor(vision.image_size, vision.image_mean, vision.image_std, vision.image_aspect)
        decoder = SampleDecoder(tokenizer, template, images, vision.num_tokens, tokenizer.pad_token_id, max_length)

        def batches(shards: str) -> Iterable[dict]:  # the first max_samples positions, never a batch past them
            return shard_batches(shards, decoder, vision.image_size, tokenizer.pad_token_id, cfg.batch_size,
                                 cfg.max_samples, rank=0, world_size=1)
    results: dict = {}
    if cfg.vqa_shards:
        results["vqa"] = answer_accuracy(
            model, tokenizer, batches(cfg.vqa_shards), cfg.max_samples, cfg.max_new_tokens, cfg.num_examples,
            keep_predictions=keep_predictions,
        )
        results["vqa_loss"] = mean_loss(model, batches(cfg.vqa_shards), cfg.max_samples)
    if cfg.caption_shards:
        results["caption"] = mean_loss(model, batches(cfg.caption_shards), cfg.max_samples)
    if cfg.choice_shards:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            results["choices"] = closed_set_accuracy(model, tokenizer, cfg, template, max_length)
        model.train(was_training)
    return results


def format_report(before: dict, after: dict) -> str:
    """A small before/after table plus example answers of the final model."""
    rows = []
    if "vqa" in after:
        rows.append(("VQA exact-match accuracy", before.get("vqa", {}).get("accuracy"), after["vqa"]["accuracy"], "{:.1%}"))
        rows.append(("VQA answer loss", before.get("vqa_loss", {}).get("loss"), after["vqa_loss"]["loss"], "{:.3f}"))
    if "choices" in after:
        ch = after["choices"]
        rows.append((f"closed-set accuracy ({ch['candidates']})", before.get("choices", {}).get("accuracy"),
                     ch["accuracy"], "{:.1%}"))
        rows.append(("closed-set mean rank", before.get("choices", {}).get("mean_rank"), ch["mean_rank"], "{:.1f}"))
    if "caption" in after:
        rows.append(("caption loss", before.get("caption", {}).get("loss"), after["caption"]["loss"], "{:.3f}"))
    lines = [f"{'held-out metric':<28}{'before':>10}{'after':>10}", "-" * 48]
    for name, b, a, fmt in rows:
        lines.append(f"{name:<28}{fmt.format(b) if b is not None else '-':>10}{fmt.format(a):>10}")
    for ex in after.get("vqa", {}).get("examples", []):
        mark = "ok" if ex["correct"] else "xx"
        lines.append(f"  [{mark}] gold: {ex['gold']!r:<22} answer: {ex['answer']!r}")
    return "\n".join(lines)
