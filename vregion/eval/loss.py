"""Token-weighted held-out loss of a model over a finite loader (single process)."""

from __future__ import annotations

import math

import torch

from vregion.data.collate import batch_to


def to_model(batch: dict, model: torch.nn.Module) -> dict:
    """The forward's tensors on the model's device, images in its dtype."""
    param = next(model.projector.parameters())
    return batch_to(batch, param.device, param.dtype)


def loss_inputs(batch: dict, model: torch.nn.Module) -> dict:
    """to_model plus the flag that skips full logits."""
    return {**to_model(batch, model), "return_logits": False}


@torch.no_grad()
def mean_loss(model: torch.nn.Module, batches, max_samples: int) -> dict:
    """{"loss", "perplexity", "samples", "tokens"} over up to `max_samples` samples."""
    was_training = model.training
    model.eval()
    loss_sum = tokens = samples = 0.0
    for batch in batches:
        out = model(**loss_inputs(batch, model))
        n = float(out["num_label_tokens"])
        loss_sum += out["loss"].item() * n
        tokens += n
        samples += batch["num_samples"]
        if samples >= max_samples:
            break
    model.train(was_training)
    return loss_result(loss_sum, tokens, samples)


def loss_result(loss_sum: float, tokens: float, samples: float) -> dict:
    """{"loss", "perplexity", "samples", "tokens"} from a token-weighted sum (also of sums over ranks).

    The perplexity is exp(loss) with the exponent capped at 50, so a diverged model reports a large finite number.
    """
    loss = loss_sum / max(tokens, 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "samples": int(samples), "tokens": int(tokens)}
