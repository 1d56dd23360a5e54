"""Held-out loss (token-weighted) and VQA accuracy during training, identical in every rank's control flow."""

from __future__ import annotations

import torch

from vregion import distributed as dist
from vregion.engine.inputs import model_inputs


@torch.no_grad()
def held_out_loss(engine, data, max_batches: int, dtype: torch.dtype) -> float:
    """Mean next-token loss over up to `max_batches` held-out batches per rank.

    Under ZeRO-3 every rank must run the same number of forwards (each gathers parameters), so a rank
    whose shard split ran out repeats its last batch with weight zero until all ranks are done.
    """
    was_training = engine.module.training
    engine.eval()
    batches = iter(data.eval_loader())
    last = None
    loss_sum = token_sum = 0.0
    for _ in range(max_batches):
        batch = next(batches, None)
        exhausted = batch is None
        batch = last if exhausted else batch
        if batch is None:
            raise RuntimeError("a rank received no held-out sample: use more eval samples than ranks")
        out = engine(**model_inputs(batch, dist.device(), dtype))
        if not exhausted:
            n = float(out["num_label_tokens"])
            loss_sum += out["loss"].item() * n
            token_sum += n
        last = batch
        (done,) = dist.all_reduce_sum([1.0 if exhausted else 0.0])
        if done == dist.world_size():
            break
    loss_sum, token_sum = dist.all_reduce_sum([loss_sum, token_sum])
    engine.train(was_training)
    return loss_sum / max(token_sum, 1.0)


def held_out_accuracy(model, tokenizer, cfg) -> float:
    """VQA exact-match accuracy on eval.vqa_shards (the first eval.max_samples, greedy answers).

    Every rank answers the same samples (the loader is not split by rank), so under ZeRO-3 all ranks run the
    same forwards; the cost is generation repeated per rank, acceptable for a small held-out set.
    """
    from vregion.eval.generation import answer_accuracy
    from vregion.eval.report import eval_batches

    e = cfg.eval
    batches = eval_batches(model, tokenizer, e.vqa_shards, cfg.model.template, cfg.data.max_length, e.batch_size)
    return answer_accuracy(model, tokenizer, batches, e.max_samples, e.max_new_tokens, num_examples=0)["accuracy"]
