"""The vision-language model: vision backbone -> projector -> visual features spliced into the LLM's input.

Submodule names are a contract (region selection, freezing, checkpoints and transfer rely on them):
`vision.*`, `projector.*`, `llm.model.embed_tokens.*`, `llm.model.layers.<i>.*`, `llm.model.norm.*`,
`llm.lm_head.*`. The decoder runs through `DecoderRunner` so later stages can act between layers.
`build_vlm` builds one from a config, `load_checkpoint` rebuilds one from a checkpoint folder (`models.checkpoint`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer

from vregion.config import ModelConfig, from_dict
from vregion.constants import IGNORE_INDEX
from vregion.models.backbones import VisionBackbone, build_vision_backbone
from vregion.models.checkpoint import (TOKENIZER_DIR, architecture_only, inside_checkpoint, load_weights,
                                      read_config)
from vregion.models.llm import build_llm
from vregion.models.projectors import build_projector
from vregion.models.runner import DecoderRunner
from vregion.models.sampling import next_token


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Next-token cross-entropy, mean over label tokens != -100.

    Args:
        logits: (B, T, V), position t predicts token t + 1.
        labels: (B, T), IGNORE_INDEX where no loss is taken.
    Returns:
        (loss, num_label_tokens); with no label tokens the loss is 0 but still in the graph.
    """
    shift_logits = logits[:, :-1].float()  # (B, T-1, V); fp32 so bf16 logits do not lose precision in softmax
    shift_labels = labels[:, 1:].to(logits.device)  # (B, T-1)
    count = int((shift_labels != IGNORE_INDEX).sum())
    total = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return total / max(count, 1), count


class VisionLanguageModel(nn.Module):
    """LLaVA-style VLM. `runner` is a plain attribute (not a submodule), so it adds no state-dict keys."""

    def __init__(
        self, vision: VisionBackbone, projector: nn.Module, llm: nn.Module, gradient_checkpointing: bool = False
    ):
        super().__init__()
        self.vision = vision
        self.projector = projector
        self.llm = llm
        self.runner = DecoderRunner(llm, gradient_checkpointing=gradient_checkpointing)

    @property
    def num_visual_tokens(self) -> int:
        """Visual tokens per image, i.e. the length every image span must have."""
        return self.vision.num_tokens

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (M, 3, H, W) -> projected features (M, N, D) in the LLM's embedding dtype."""
        features = self.projector(self.vision(pixel_values))  # (M, N, D)
        return features.to(self.llm.get_input_embeddings().weight.dtype)

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: Optional[torch.Tensor] = None,
        image_spans: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Token embeddings (B, T, D) with each image's features written over its placeholder span.

        Args:
            input_ids: (B, T); visual positions hold any placeholder id (their embeddings are replaced).
            pixel_values: (M, 3, H, W) or None for a pure-text batch.
            image_spans: (M, 3) long rows [sample_index, start, length]; sample_index -1 marks a dummy
                image (added by collate to text-only batches so the vision tower runs on every rank).
        """
        embeds = self.llm.get_input_embeddings()(input_ids)  # (B, T, D), Gemma's scaling included
        if pixel_values is None:
            return embeds
        features = self.encode_images(pixel_values)  # (M, N, D)
        M, N, D = features.shape
        if image_spans is None or image_spans.shape != (M, 3):
            raise ValueError(f"image_spans must be ({M}, 3) rows [sample, start, length] for {M} images")
        spans = image_spans.to(device=embeds.device, dtype=torch.long)
        real = spans[:, 0] >= 0
        if bool(real.any()):
            rows = spans[real]  # (R, 3)
            if bool((rows[:, 2] != N).any()):
                raise ValueError(f"every image span must be {N} tokens long, got lengths {rows[:, 2].tolist()}")
            positions = rows[:, 1:2] + torch.arange(N, device=embeds.device)  # (R, N)
            if bool((rows[:, 1] < 0).any()) or int(positions.max()) >= embeds.shape[1]:
                raise ValueError(f"image span outside the sequence of length {embeds.shape[1]}: {rows.tolist()}")
            samples = rows[:, 0:1].expand(-1, N)  # (R, N)
            # Out-of-place so autograd sees features flowing into the embeddings.
            embeds = embeds.index_put((samples.reshape(-1), positions.reshape(-1)), features[real].reshape(-1, D))
        # Dummy images (and every image, harmlessly) join the graph: projector and vision then get zero
        # gradients instead of None, so ZeRO's gradient hooks fire identically on every rank.
        return embeds + 0.0 * features.sum()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        pixel_values: Optional[torch.Tensor] = None,
        image_spans: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        segment_ids: Optional[torch.Tensor] = None,
        return_logits: bool = True,
        **ignored: Any,
    ) -> dict[str, Any]:
        """Returns dict(loss=scalar or None, logits=(B, T', V) or None, num_label_tokens=int).

        Packed rows (`data.packing`) pass `segment_ids` (B, T), the sample each token belongs to, and
        `position_ids` restarting per sample (see `vregion.data.packing`); every sample then computes exactly
        what it computes alone, and the loss is the mean over all supervised tokens of the rows.

        T' == T unless a `runner.between_layers` hook shortened the sequence; such a hook must keep
        `state.extras["labels"]` aligned, and the loss uses the labels it leaves there.
        With labels and `return_logits=False` (training), the output head runs only at supervised
        positions: the same loss without the (B, T, V) logits, the largest activation of a small LLM.
        """
        embeds = self.embed(input_ids, pixel_values, image_spans)  # (B, T, D)
        state = self.runner.prepare(embeds, attention_mask, position_ids, segment_ids)
        state.extras.update(labels=labels, image_spans=image_spans)
        state = self.runner.run_layers(state)
        labels = state.extras["labels"]
        if labels is not None and not return_logits:
            loss, count = self._supervised_loss(state.hidden, labels)
            return dict(loss=loss, logits=None, num_label_tokens=count)
        logits = self.runner.finish(state)  # (B, T', V)
        loss, count = None, 0
        if labels is not None:
            loss, count = causal_lm_loss(logits, labels)
        return dict(loss=loss, logits=logits, num_label_tokens=count)

    def _supervised_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """causal_lm_loss computed from the hidden states of positions whose next token is supervised."""
        targets = labels[:, 1:].to(hidden.device)  # (B, T-1): position t predicts token t + 1
        keep = targets != IGNORE_INDEX  # (B, T-1)
        logits = self.runner.head(hidden[:, :-1][keep]).float()  # (N, V)
        count = int(keep.sum())
        if count == 0:
            return logits.sum() * 0.0, 0
        return F.cross_entropy(logits, targets[keep], reduction="sum") / count, count

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: Optional[torch.Tensor] = None,
        image_spans: Optional[torch.Tensor] = None,
        max_new_tokens: int = 32,
        eos_token_id: Optional[int] = None,
        pad_token_id: Optional[int] = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        streamer: Any = None,
    ) -> torch.Tensor:
        """Greedy (or sampled) decoding from left-padded prompts with the LLM's KV cache.

        With a `runner.between_layers` hook installed (visual-token pooling), decoding runs through the runner
        without a cache instead, so every step sees the same pooled sequence training saw (a KV cache would
        hold different lengths below and above the pooling layer).

        Args:
            do_sample, temperature, top_p: sample each token (temperature, then nucleus top-p) instead of
                taking the argmax; torch's global RNG draws, so `torch.manual_seed` makes it repeatable.
            streamer: Hugging Face's streamer interface: `put(ids)` first with the (B, 0) prompt ids, then
                with each step's (B,) new tokens, and `end()` when decoding stops (answers can be shown as
                they come).
        Returns:
            (B, <= max_new_tokens) new token ids only; rows that stopped early are filled with pad_token_id.
        """
        embeds = self.embed(input_ids, pixel_values, image_spans)  # (B, T, D)
        if pad_token_id is None:
            pad_token_id = eos_token_id if eos_token_id is not None else 0
            if isinstance(pad_token_id, (list, tuple)):
                pad_token_id = pad_token_id[0]
        if self.runner.between_layers is not None:
            sampling = dict(do_sample=do_sample, temperature=temperature, top_p=top_p)
            return self._generate_through_runner(embeds, attention_mask, image_spans, max_new_tokens,
                                                 eos_token_id, pad_token_id, sampling, streamer)
        # HF warns about sampling settings passed to greedy decoding, so they go only with do_sample; top_k=0 turns
        # off HF's default top-50 cut, which the runner's sampler does not make.
        sampling = (dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if do_sample
                    else dict(do_sample=False))
        out = self.llm.generate(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            num_beams=1,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            streamer=streamer,
            **sampling,
        )
        # Generating from embeddings alone, HF starts from empty input_ids, so `out` holds only new tokens.
        return out

    def _generate_through_runner(self, embeds, attention_mask, image_spans, max_new_tokens, eos_token_id, pad_token_id,
                                 sampling: Optional[dict] = None, streamer: Any = None):
        """Decoding by re-running the full (hooked) runner each step; new tokens append on the right."""
        stop = torch.tensor([] if eos_token_id is None else
                            ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)),
                            device=embeds.device, dtype=torch.long)
        embed_tokens = self.llm.get_input_embeddings()
        finished = torch.zeros(embeds.shape[0], dtype=torch.bool, device=embeds.device)  # (B,)
        new_tokens = []
        if streamer is not None:
            streamer.put(torch.zeros((embeds.shape[0], 0), dtype=torch.long))  # the (empty) prompt, as HF does
        for _ in range(max_new_tokens):
            state = self.runner.prepare(embeds, attention_mask)
            state.extras.update(labels=None, image_spans=image_spans)
            state = self.runner.run_layers(state)
            # Prompts are left-padded and pooling keeps each row's padding side: the last row is the newest token.
            token = next_token(self.runner.head(state.hidden[:, -1]), **(sampling or {}))  # (B,)
            token = torch.where(finished, torch.full_like(token, pad_token_id), token)
            new_tokens.append(token)
            if streamer is not None:
                streamer.put(token.cpu())
            finished |= torch.isin(token, stop)
            if bool(finished.all()):
                break
            embeds = torch.cat([embeds, embed_tokens(token)[:, None].to(embeds.dtype)], dim=1)  # (B, T + 1, D)
            attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        if streamer is not None:
            streamer.end()
        return torch.stack(new_tokens, dim=1)  # (B, n)


def build_vlm(cfg: ModelConfig, dtype: torch.dtype = torch.float32,
              llm_weights: bool = True) -> tuple[VisionLanguageModel, Any]:
    """Build vision tower, LLM and projector (in that order, so random init depends only on the seed).

    A part whose folder holds an architecture only (an imported checkpoint's `vision/` and `llm/`) is built with
    random weights, which `init_from` (or the caller) must replace: without one it is refused.

    Args:
        cfg: the model section of the run config; `init_from` loads the weights of a vregion checkpoint, a Hugging
            Face LLaVA folder or an original LLaVA folder (`models.importer`), then `projector.init_from` the
            projector's (e.g. LLaVA's mm_projector.bin).
        dtype: parameter dtype of every part.
        llm_weights: False builds the LLM from its folder's config.json only (see `build_llm`): the caller loads
            every weight next.
    Returns:
        (model, tokenizer).
    """
    from vregion.models.importer import load_projector_weights, load_source_weights

    bare = [f"model.{part}.path ({path})" for part, path in (("vision", cfg.vision.path), ("llm", cfg.llm.path))
            if architecture_only(path)]
    if bare and llm_weights and not cfg.init_from:
        raise ValueError(f"{' and '.join(bare)}: a config.json without weights; set model.init_from to the checkpoint "
                         "that holds them (e.g. the folder `vregion import` wrote)")
    vision = build_vision_backbone(cfg.vision).to(dtype)
    llm, tokenizer = build_llm(cfg.llm, dtype, weights=llm_weights and not architecture_only(cfg.llm.path))
    llm_dim = llm.get_input_embeddings().embedding_dim
    projector = build_projector(cfg.projector, vision.hidden_size, llm_dim).to(dtype)
    model = VisionLanguageModel(vision, projector, llm, gradient_checkpointing=cfg.gradient_checkpointing)
    if cfg.init_from:
        load_source_weights(model, cfg.init_from)
    if cfg.projector.init_from:
        load_projector_weights(model.projector, cfg.projector.init_from)
    return model, tokenizer


def load_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any, dict]:
    """Rebuild the model from the checkpoint's config, load its weights strictly.

    Returns:
        (model, tokenizer, config_dict); without a saved tokenizer, the LLM source's own is returned.
    """
    path = Path(path)
    config_dict = read_config(path)
    model_cfg = from_dict(ModelConfig, config_dict.get("model") or {}, "model")
    # The weights come from this checkpoint; following init_from again would only load stale weights first.
    model_cfg.init_from = None
    # A pruned checkpoint's llm/ holds only the LLM's config and tokenizer: its weights are in MODEL_FILE.
    model_cfg.projector.init_from = None
    llm_dir = inside_checkpoint(path, model_cfg.llm.path)
    if llm_dir is not None:
        model_cfg.llm.path = str(llm_dir)
    # An imported checkpoint's vision/ holds the tower's architecture; its weights are in MODEL_FILE too.
    vision_dir = inside_checkpoint(path, model_cfg.vision.path)
    if vision_dir is not None:
        model_cfg.vision.path = str(vision_dir)
    model, tokenizer = build_vlm(model_cfg, dtype,
                                 llm_weights=llm_dir is None and not architecture_only(model_cfg.llm.path))
    load_weights(model, path, strict=True)
    if (path / TOKENIZER_DIR).exists():
        tokenizer = AutoTokenizer.from_pretrained(str(path / TOKENIZER_DIR))
    return model, tokenizer, config_dict
