"""Closed-set scoring: rank a fixed list of candidate answers by their log-likelihood given each prompt.

A candidate's ids are what training's template makes of it as the assistant's answer, end-of-turn token included
(`data.templates` tokenises every piece on its own, so an answer's ids do not depend on the question: one
rendering per candidate serves every sample). Its score is the sum of those tokens' log-probabilities after the
sample's prompt (image included); the gold answer's rank is 1 + the number of candidates scoring strictly higher.
The prompt runs once per sample: without pooling its KV cache is shared by all candidates; with a pooling hook
(which a KV cache cannot follow, see `VisionLanguageModel.generate`) the prompt's embeddings (one vision pass)
are shared and prompt + candidate rows run batched through the runner.
"""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path
from typing import Iterable, Iterator, Optional

import torch
import torch.nn.functional as F

from vregion.config import ConfigError
from vregion.constants import IGNORE_INDEX
from vregion.data import SampleError, tokenize_conversation
from vregion.eval.answers import normalize_answer


def gold_answer(raw: dict) -> Optional[str]:
    """The first assistant answer of a raw tar sample (None when its json cannot be read)."""
    try:
        turns = json.loads(raw["json"])["conversations"]
        return next(t["value"] for t in turns if t.get("from") in ("gpt", "assistant"))
    except (KeyError, ValueError, TypeError, AttributeError, StopIteration):
        return None


def build_candidates(golds: list[Optional[str]], path: Optional[str] = None) -> list[str]:
    """The candidate answers: `path`'s lines (blank ones ignored), else the sorted distinct normalised golds.

    Raises:
        ConfigError: no such file, fewer than 2 candidates, two lines that normalise alike, or a gold answer
            (normalised) that no candidate matches.
    """
    golds = [g for g in golds if g is not None]
    if path is None:
        candidates = sorted({normalize_answer(g) for g in golds})
    else:
        if not Path(path).is_file():
            raise ConfigError(f"--candidates: no such file {path}")
        candidates = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    source = f"--candidates {path}" if path else "the gold answers"
    if len(candidates) < 2:
        raise ConfigError(f"--choices needs at least 2 candidate answers, got {len(candidates)} from {source}")
    index = candidate_index(candidates)
    if len(index) < len(candidates):
        raise ConfigError(f"{source}: some candidates are the same answer once normalised")
    missing = sorted({normalize_answer(g) for g in golds} - set(index))
    if missing:
        raise ConfigError(f"{source}: gold answer(s) not among the candidates: "
                          f"{', '.join(map(repr, missing[:10]))}" + (" ..." if len(missing) > 10 else ""))
    return candidates


def candidate_index(candidates: list[str]) -> dict[str, int]:
    """Normalised answer -> its candidate's position (how a gold answer finds its candidate)."""
    return {normalize_answer(c): i for i, c in enumerate(candidates)}


def candidate_ids(candidates: list[str], decoder) -> list[list[int]]:
    """Each candidate's supervised ids (answer + end-of-turn) as `decoder`'s template renders it as an answer."""
    out = []
    for text in candidates:
        turns = [{"from": "human", "value": "?"}, {"from": "gpt", "value": text}]
        try:
            tokens = tokenize_conversation(turns, decoder.tokenizer, decoder.template, decoder.num_image_tokens,
                                           max_length=1 << 30, image_token_id=decoder.image_token_id)
        except SampleError as e:
            raise ConfigError(f"candidate answer {text!r} cannot be tokenised: {e.reason}") from None
        out.append([t for t in tokens.labels if t != IGNORE_INDEX])
    return out


def decoded_prompts(raws: Iterable[dict], decoder) -> Iterator[dict]:
    """{"gold", "prompt" (P,), "pixels" (k, 3, S, S), "starts"} per decodable sample, prompt cut before its answer."""
    for raw in raws:
        gold, sample = gold_answer(raw), decoder(raw)
        if gold is None or "skip" in sample:
            continue
        cut = int((sample["labels"] != IGNORE_INDEX).nonzero()[0])
        starts = [start for start, _ in sample["image_spans"] if start < cut]
        yield {"gold": gold, "prompt": sample["input_ids"][:cut], "pixels": sample["pixel_values"][: len(starts)],
               "starts": starts}


def _padded(cands: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded candidate ids (C, L) and their bool mask (C, L)."""
    length = max(len(c) for c in cands)
    ids = torch.zeros((len(cands), length), dtype=torch.long)  # pad id 0: masked out, never scored
    for r, c in enumerate(cands):
        ids[r, : len(c)] = torch.tensor(c, dtype=torch.long)
    mask = torch.arange(length) < torch.tensor([len(c) for c in cands])[:, None]
    return ids.to(device), mask.to(device)


def _cache_name(llm) -> str:
    """The forward's KV-cache argument and output field: transformers 5.x renamed `past_key_values` to `cache`."""
    return "cache" if "cache" in inspect.signature(llm.forward).parameters else "past_key_values"


def _cached_scores(model, prompt_embeds: torch.Tensor, cands: list[list[int]], rows: int) -> torch.Tensor:
    """(C,) scores from the prompt's KV cache, extended by `rows` candidates at a time."""
    name = _cache_name(model.llm)
    out = model.llm(inputs_embeds=prompt_embeds, use_cache=True)
    last, prompt_cache = out.logits[:, -1:], out[name]  # (1, 1, V): predicts every first token
    scores = []
    for i in range(0, len(cands), rows):
        ids, mask = _padded(cands[i: i + rows], prompt_embeds.device)  # (C, L)
        C = ids.shape[0]
        cache = copy.deepcopy(prompt_cache)  # a forward appends to the cache it is given
        cache.batch_repeat_interleave(C)
        attention = torch.cat([mask.new_ones(C, prompt_embeds.shape[1]), mask], dim=1).long()  # (C, P + L)
        logits = model.llm(input_ids=ids, attention_mask=attention, **{name: cache}).logits  # (C, L, V)
        logits = torch.cat([last.expand(C, -1, -1), logits[:, :-1]], dim=1)  # position j predicts token j
        logp = F.log_softmax(logits.float(), dim=-1).gather(-1, ids[..., None])[..., 0]  # (C, L)
        scores.append((logp * mask).sum(-1))
    return torch.cat(scores)


def _runner_scores(model, prompt_embeds: torch.Tensor, starts: list[int], cands: list[list[int]],
                   rows: int) -> torch.Tensor:
    """(C,) scores of `rows` prompt + candidate rows at a time through the (hooked) runner."""
    P, embed_tokens, scores = prompt_embeds.shape[1], model.llm.get_input_embeddings(), []
    for i in range(0, len(cands), rows):
        ids, mask = _padded(cands[i: i + rows], prompt_embeds.device)  # (C, L)
        C = ids.shape[0]
        embeds = torch.cat([prompt_embeds.expand(C, -1, -1), embed_tokens(ids).to(prompt_embeds.dtype)], dim=1)
        attention = torch.cat([mask.new_ones(C, P), mask], dim=1).long()  # (C, P + L)
        labels = torch.cat([torch.full((C, P), IGNORE_INDEX, device=ids.device), ids.masked_fill(~mask, IGNORE_INDEX)],
                           dim=1)  # (C, P + L): only candidate tokens are scored
        spans = torch.tensor([[r, s, model.num_visual_tokens] for r in range(C) for s in starts],
                             dtype=torch.long, device=ids.device).reshape(-1, 3)
        state = model.runner.prepare(embeds, attention)
        # The hook pools visual rows and keeps the labels aligned, so after it they still mark the candidates.
        state.extras.update(labels=labels, image_spans=spans if starts else None)
        state = model.runner.run_layers(state)
        targets = state.extras["labels"][:, 1:]  # (C, T' - 1): position t predicts token t + 1
        keep = targets != IGNORE_INDEX
        logp = F.log_softmax(model.runner.head(state.hidden[:, :-1][keep]).float(), dim=-1)  # (N, V)
        picked = logp.gather(-1, targets[keep][:, None])[:, 0]  # (N,)
        scores.append(torch.zeros(C, device=picked.device).index_add_(0, keep.nonzero()[:, 0], picked))
    return torch.cat(scores)


def score_candidates(model, item: dict, cands: list[list[int]], rows: int = 16) -> torch.Tensor:
    """(C,) summed log-probabilities of each candidate's ids after `item`'s prompt (from `decoded_prompts`).

    Args:
        rows: candidates per forward (bounds memory; the prompt still runs once).
    """
    param = next(model.projector.parameters())
    prompt = item["prompt"].to(param.device)[None]  # (1, P)
    pixels, spans = None, None
    if item["starts"]:
        pixels = item["pixels"].to(param.device, param.dtype)  # (k, 3, S, S)
        spans = torch.tensor([[0, s, model.num_visual_tokens] for s in item["starts"]], device=param.device)
    embeds = model.embed(prompt, pixels, spans)  # (1, P, D): the vision tower runs once per sample
    if model.runner.between_layers is None:
        return _cached_scores(model, embeds, cands, rows)
    return _runner_scores(model, embeds, item["starts"], cands, rows)


def gold_rank(scores: torch.Tensor, gold: int) -> int:
    """1 + candidates scoring strictly higher than the gold one (ties do not hurt it)."""
    return 1 + int((scores > scores[gold]).sum())


def closed_set_counts(model, items: Iterable[dict], candidates: list[str], cands: list[list[int]],
                      rows: int, num_examples: int) -> dict:
    """This rank's {"rank_sum", "correct", "samples", "candidates", "examples" [{gold, best, rank}]}."""
    index = candidate_index(candidates)
    rank_sum = correct = samples = 0
    examples = []
    for item in items:
        scores = score_candidates(model, item, cands, rows)
        gold = index[normalize_answer(item["gold"])]
        rank = gold_rank(scores, gold)
        best = gold if rank == 1 else int(scores.argmax())
        rank_sum, correct, samples = rank_sum + rank, correct + (rank == 1), samples + 1
        if len(examples) < num_examples:
            examples.append({"gold": candidates[gold], "best": candidates[best], "rank": rank})
    return {"rank_sum": rank_sum, "correct": correct, "samples": samples, "candidates": len(candidates),
            "examples": examples}


def closed_set_result(rank_sum: float, correct: float, samples: float, candidates: int, examples: list) -> dict:
    """The "choices" section from its sums (also of sums over ranks); mean_rank is null without samples."""
    return {"accuracy": correct / max(samples, 1.0), "mean_rank": rank_sum / samples if samples else None,
            "samples": int(samples), "candidates": candidates, "correct": int(correct), "examples": examples}
