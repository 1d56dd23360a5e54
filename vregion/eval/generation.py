"""Generation-based exact-match accuracy: answer held-out questions greedily and compare normalised answers."""

from __future__ import annotations

import torch

from vregion.constants import IGNORE_INDEX
from vregion.eval.answers import normalize_answer
from vregion.eval.loss import to_model


def split_prompts(batch: dict, tokenizer) -> list[dict]:
    """Cut each right-padded training-format sample at its first supervised token.

    Returns per sample: prompt ids, its image rows (pixel index, start), the gold answer text, the
    template's end-of-turn id (the last supervised token), which stops generation, and the batch's "meta"
    for the sample ({} when the batch has none).
    """
    metas = batch.get("meta") or [{}] * batch["input_ids"].shape[0]
    items = []
    for b in range(batch["input_ids"].shape[0]):
        labels = batch["labels"][b]
        supervised = (labels != IGNORE_INDEX).nonzero().flatten()
        if supervised.numel() == 0:
            continue
        cut = int(supervised[0])
        answer_ids = labels[supervised].tolist()
        # The first answer ends where the supervised run ends.
        run_end = next((i for i in range(1, len(supervised)) if supervised[i] != supervised[i - 1] + 1), None)
        answer_ids = answer_ids[:run_end]
        images = [
            (m, int(start))
            for m, (sample, start, _) in enumerate(batch["image_spans"].tolist())
            if sample == b and start < cut
        ]
        items.append({
            "prompt": batch["input_ids"][b, :cut].tolist(),
            "images": images,
            "gold": tokenizer.decode(answer_ids[:-1], skip_special_tokens=True).strip(),
            "end_id": answer_ids[-1],
            "meta": metas[b],
        })
    return items


def left_padded(items: list[dict], pixel_values: torch.Tensor, pad_id: int, num_tokens: int) -> dict:
    """Left-pad prompts for batched generation, shifting each image's span by its row's padding."""
    length = max(len(it["prompt"]) for it in items)
    input_ids = torch.full((len(items), length), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(items), length), dtype=torch.long)  # (B, T)
    spans, pixels = [], []
    for b, it in enumerate(items):
        pad = length - len(it["prompt"])
        input_ids[b, pad:] = torch.tensor(it["prompt"])
        attention_mask[b, pad:] = 1
        for m, start in it["images"]:
            spans.append([b, start + pad, num_tokens])
            pixels.append(pixel_values[m])
    if not pixels:  # the vision tower still runs on one dummy image
        spans.append([-1, 0, 0])
        pixels.append(torch.zeros_like(pixel_values[0]))
    image_spans = torch.tensor(spans, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": input_ids.clone(),
            "pixel_values": torch.stack(pixels), "image_spans": image_spans}


@torch.no_grad()
def answer_accuracy(model, tokenizer, batches, max_samples: int, max_new_tokens: int, num_examples: int = 4,
                    keep_predictions: bool = False) -> dict:
    """{"accuracy", "correct", "samples", "examples"}: greedy answers scored by normalised exact match.

    With `keep_predictions`, also "predictions": per scored sample its meta (position, id, question when the
    batches carry them), "gold", "answer" and "correct"."""
    was_training = model.training
    model.eval()
    correct = total = 0
    examples, predictions = [], []
    for batch in batches:
        items = split_prompts(batch, tokenizer)[: max_samples - total]
        if not items:
            continue
        padded = left_padded(items, batch["pixel_values"], tokenizer.pad_token_id, model.num_visual_tokens)
        inputs = to_model(padded, model)
        stop_ids = sorted({it["end_id"] for it in items} | {tokenizer.eos_token_id} - {None})
        new = model.generate(
            inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], inputs["image_spans"],
            max_new_tokens=max_new_tokens, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id,
        )
        for it, row in zip(items, new.tolist()):
            cut = next((i for i, t in enumerate(row) if t in stop_ids), len(row))
            answer = tokenizer.decode(row[:cut], skip_special_tokens=True).strip()
            hit = normalize_answer(answer) == normalize_answer(it["gold"])
            correct += hit
            total += 1
            if len(examples) < num_examples:
                examples.append({"gold": it["gold"], "answer": answer, "correct": bool(hit)})
            if keep_predictions:
                predictions.append({**it["meta"], "gold": it["gold"], "answer": answer, "correct": bool(hit)})
        if total >= max_samples:
            break
    model.train(was_training)
    result = {"accuracy": correct / max(total, 1), "correct": correct, "samples": total, "examples": examples}
    if keep_predictions:
        result["predictions"] = predictions
    return result
