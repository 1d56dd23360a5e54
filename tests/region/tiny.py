"""Tiny stand-in for VisionLanguageModel: `vision`, `projector` and a random HF causal LM as `llm`."""

from __future__ import annotations

from torch import nn
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

HIDDEN, INTER, HEADS, KV_HEADS, HEAD_DIM, VOCAB, DEPTH = 64, 128, 4, 2, 16, 300, 8
VISION_DIM = 16

_FAMILIES = {
    "llama": (LlamaForCausalLM, LlamaConfig),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config),
    "gemma3": (Gemma3ForCausalLM, Gemma3TextConfig),
}


class TinyVLM(nn.Module):
    """Only the attribute names matter to vregion.region: vision, projector, llm."""

    def __init__(self, family: str, tied: bool):
        super().__init__()
        model_cls, config_cls = _FAMILIES[family]
        config = config_cls(
            hidden_size=HIDDEN,
            intermediate_size=INTER,
            num_hidden_layers=DEPTH,
            num_attention_heads=HEADS,
            num_key_value_heads=KV_HEADS,
            head_dim=HEAD_DIM,
            vocab_size=VOCAB,
            tie_word_embeddings=tied,
        )
        self.vision = nn.Sequential(nn.Linear(12, VISION_DIM), nn.LayerNorm(VISION_DIM))
        self.projector = nn.Sequential(nn.Linear(VISION_DIM, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, HIDDEN))
        self.llm = model_cls(config)
