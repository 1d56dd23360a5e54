"""Connects the data pipeline to a built model: loaders for a stage and batches moved onto the device."""

from __future__ import annotations

import torch

from vregion import distributed as dist
from vregion.config import Config
from vregion.constants import IGNORE_INDEX
from vregion.data import ImageProcessor, build_loader, count_samples
from vregion.data.collate import batch_to

def model_inputs(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """The forward's arguments for a batch on `device`; the loss is all training needs, not the logits."""
    return {**batch_to(batch, device, dtype), "return_logits": False}


def supervised_tokens(batch: dict) -> int:
    """Tokens of `batch` the loss is taken on (a label after the shift), before any pooling (which keeps them)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


class StageData:
    """Train and held-out loaders of one stage, shaped by the model's vision tower and tokenizer."""

    def __init__(self, cfg: Config, model, tokenizer):
        self.cfg = cfg
        self.tokenizer = tokenizer
        vision = model.vision
        self.image_processor = ImageProcessor(vision.image_size, vision.image_mean, vision.image_std, vision.image_aspect)
        self.num_image_tokens = vision.num_tokens
        llm_config = model.llm.config
        # Packed rows' width (data.packing.choose_rows): flash's varlen kernel skips other samples' tokens, dense
        # attention (sdpa, eager) computes the whole row, at ~4 x hidden FLOPs a token pair vs ~24 x hidden^2 a token.
        flash = "flash" in (getattr(llm_config, "_attn_implementation", None) or "")
        full_rows = flash or cfg.data.packing_rows == "full"
        self.packing_attention_cost = 0.0 if full_rows else 1.0 / (6 * llm_config.hidden_size)
        # Visual positions hold the pad id: its embedding is replaced by projected features anyway.
        self.image_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        if cfg.data.train_shards is None:
            raise ValueError("data.train_shards is unset (or set data.synthetic.num_train for generated data)")

    @property
    def has_eval(self) -> bool:
        return self.cfg.data.eval_shards is not None

    def train_sample_count(self) -> int | None:
        return count_samples(self.cfg.data.train_shards)

    def _loader(self, shards: str, seed: int, skip_samples: int, infinite: bool, shuffle_buffer: int,
                training: bool = False):
        cfg = self.cfg
        return build_loader(
            shards,
            tokenizer=self.tokenizer,
            template=cfg.model.template,
            image_processor=self.image_processor,
            num_image_tokens=self.num_image_tokens,
            image_token_id=self.image_token_id,
            max_length=cfg.data.max_length,
            micro_batch_size=cfg.train.micro_batch_size,
            seed=seed,
            rank=dist.rank(),
            world_size=dist.world_size(),
            num_workers=cfg.data.num_workers,
            shuffle_buffer=shuffle_buffer,
            skip_samples=skip_samples,
            infinite=infinite,
            # held-out batches stay padded: their loss is token-weighted either way, and they are few
            packing=training and cfg.data.packing,
            group_by_length=cfg.data.group_by_length if training else 0,
            packing_attention_cost=self.packing_attention_cost,
        )

    def train_loader(self, skip_samples: int = 0):
        return self._loader(
            self.cfg.data.train_shards, self.cfg.run.seed, skip_samples, True, self.cfg.data.shuffle_buffer,
            training=True,
        )

    def eval_loader(self):
        return self._loader(self.cfg.data.eval_shards, 0, 0, False, 0)
