"""Decoder runner: runs a Hugging Face causal LM's decoder layers in an explicit loop.

`llm.model(...)` is a black box that builds its attention masks and rotary embeddings once for a fixed
sequence length. Visual context compression pools visual tokens *between* layers, after which the masks
and position embeddings must be rebuilt for the shorter sequence. The runner therefore splits the forward
pass into `prepare` (embeddings -> state), `run_layers` (any slice of layers, with a hook before each),
`refresh` (rebuild masks and rotary embeddings after a hook changed the sequence) and `finish` (norm,
head, soft-capping). With no hook the logits equal the HF model's own forward (tested per family).

Masks come from transformers' own builders and rotary embeddings from the model's own `rotary_emb`, so
attention backends (sdpa, eager, flash) and sliding windows behave exactly as in Hugging Face.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask, packed_sequence_mask_function

FULL = "full_attention"
SLIDING = "sliding_attention"
MASK_BUILDERS = {FULL: create_causal_mask, SLIDING: create_sliding_window_causal_mask}

# transformers renamed `input_embeds` -> `inputs_embeds`, dropped `cache_position` and renamed `past_key_values`
# -> `cache` (a FutureWarning on every call from 5.2x, removed in 5.40) across 5.x releases.
_MASK_PARAMS = inspect.signature(create_causal_mask).parameters
_CACHE_PARAM = "cache" if "cache" in _MASK_PARAMS else "past_key_values"


@dataclass
class RunnerState:
    """Everything the decoder layers need, kept consistent with one sequence length T.

    A hook that changes T (e.g. pools visual tokens) must update hidden, attention_mask, position_ids and
    segment_ids together, then call `DecoderRunner.refresh(state)` to rebuild masks and position embeddings.
    """

    hidden: torch.Tensor  # (B, T, D)
    attention_mask: torch.Tensor  # (B, T) 1 = real token, 0 = padding
    position_ids: torch.Tensor  # (B, T) rotary positions
    # (B, T) packed rows: the index of the sample each token belongs to (padding continues its row's last sample);
    # tokens attend only within their sample. None: one sample per row.
    segment_ids: Optional[torch.Tensor] = None
    masks: dict[str, Any] = field(default_factory=dict)  # attention type -> mask in the backend's format
    position_embeddings: dict[str, Any] = field(default_factory=dict)  # layer type -> (cos, sin), each (B, T, hd)
    extras: dict[str, Any] = field(default_factory=dict)  # per-token data hooks keep aligned (e.g. labels)
    # flash-attention on packed rows: cu_seq_lens_q/k and max_length_q/k for its varlen kernel (masks are None)
    varlen: dict[str, Any] = field(default_factory=dict)


Hook = Callable[[int, RunnerState], RunnerState]


def unwrap_peft(llm: nn.Module) -> nn.Module:
    """The HF *ForCausalLM under a PEFT wrapper, or llm itself."""
    return llm.get_base_model() if hasattr(llm, "get_base_model") else llm


def decoder_layers(llm: nn.Module) -> nn.ModuleList:
    """The decoder layers of an HF causal LM (`llm.model.layers`)."""
    return unwrap_peft(llm).model.layers


def num_decoder_layers(llm: nn.Module) -> int:
    return len(decoder_layers(llm))


def varlen_kwargs(segment_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
    """Flash-attention varlen arguments for packed rows flattened to one sequence of B * T tokens.

    Every sample is one sequence, and so is each row's padding tail (its outputs are never used); the layer's
    attention reshapes (B, T) to (B * T,) and attends within [cu[i], cu[i + 1]) only.
    """
    key = segment_ids.long() * 2 + (attention_mask == 0).long()  # (B, T) changes at samples and padding
    new = torch.ones_like(key, dtype=torch.bool)
    new[:, 1:] = key[:, 1:] != key[:, :-1]
    starts = new.reshape(-1).nonzero().squeeze(1)
    cu = torch.cat([starts, starts.new_tensor([key.numel()])]).to(torch.int32)
    longest = int(cu.diff().max())
    return dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)


def default_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B, T) positions counting real tokens only, so left-padded rows start at 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class DecoderRunner:
    """Runs `llm`'s decoder in Python; not an nn.Module, so it adds no parameters or state-dict keys.

    Args:
        llm: an HF causal LM with `model.layers`, `model.norm`, `model.rotary_emb` and `lm_head`.
        gradient_checkpointing: recompute each layer in backward (only while `llm.training`).
        between_layers: optional hook `(layer_idx, state) -> state`, called before each layer runs.
    """

    def __init__(self, llm: nn.Module, gradient_checkpointing: bool = False, between_layers: Optional[Hook] = None):
        self.llm = llm
        self.gradient_checkpointing = gradient_checkpointing
        self.between_layers = between_layers
        config = self.config
        if getattr(config, "use_bidirectional_attention", False):
            raise NotImplementedError("bidirectional (encoder-style) attention is not supported by the runner")
        types = getattr(config, "layer_types", None)
        if not types:
            # No per-layer types (Llama, Mistral): Mistral-style configs window every layer when set.
            uniform = SLIDING if getattr(config, "sliding_window", None) is not None else FULL
            types = [uniform] * config.num_hidden_layers
        unknown = set(types) - set(MASK_BUILDERS)
        if unknown:
            raise NotImplementedError(
                f"attention types {sorted(unknown)} not supported; known: {sorted(MASK_BUILDERS)}"
            )
        self.layer_types: list[str] = list(types)
        if len(self.layer_types) != self.num_layers:
            # e.g. layers pruned without updating config.layer_types: masks would go to the wrong layers.
            raise ValueError(f"config has {len(self.layer_types)} layer types but the model has {self.num_layers} layers")
        # Gemma3's rotary module takes the layer type (one base per type); older Gemma3 code instead had a
        # second `rotary_emb_local` and took global and local embeddings as two separate layer arguments.
        self._rotary_per_type = "layer_type" in inspect.signature(self.base.rotary_emb.forward).parameters
        self._split_rope = "position_embeddings_global" in inspect.signature(self.layers[0].forward).parameters

    # -------------------------------------------------------------------------------------- structure
    @property
    def base(self) -> nn.Module:
        """The decoder model (`llm.model`): embeddings, layers, final norm, rotary embedding."""
        return unwrap_peft(self.llm).model

    @property
    def config(self):
        return unwrap_peft(self.llm).config

    @property
    def layers(self) -> nn.ModuleList:
        return self.base.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    # ---------------------------------------------------------------------------------------- phases
    def prepare(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        segment_ids: Optional[torch.Tensor] = None,
    ) -> RunnerState:
        """Embeddings (B, T, D) (already scaled, as the model's embedding module returns them) -> state.

        Packed rows (several samples per row) pass `segment_ids` (B, T) and `position_ids` restarting at 0 for
        each sample: attention stays within a sample, so every sample sees exactly what it would see alone.
        """
        B, T, _ = inputs_embeds.shape
        if attention_mask is None:
            attention_mask = torch.ones(B, T, dtype=torch.long, device=inputs_embeds.device)
        if segment_ids is not None and position_ids is None:
            raise ValueError("packed rows (segment_ids) need position_ids that restart for every sample")
        if position_ids is None:
            position_ids = default_position_ids(attention_mask)
        state = RunnerState(hidden=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                            segment_ids=segment_ids)
        return self.refresh(state)

    def refresh(self, state: RunnerState) -> RunnerState:
        """Rebuild masks and rotary embeddings from state's hidden, attention_mask and position_ids."""
        state.varlen = {}
        if state.segment_ids is not None and "flash" in (self.config._attn_implementation or ""):
            # flash's mask interface drops mask functions: packed rows go through its varlen kernel instead
            state.varlen = varlen_kwargs(state.segment_ids, state.attention_mask)
            state.masks = {t: None for t in set(self.layer_types)}
        else:
            state.masks = {t: self._build_mask(t, state) for t in sorted(set(self.layer_types))}
        state.position_embeddings = self._rotary(state.hidden, state.position_ids)
        return state

    def run_layers(self, state: RunnerState, start: int = 0, end: Optional[int] = None) -> RunnerState:
        """Run layers [start, end), calling the `between_layers` hook before each one."""
        end = self.num_layers if end is None else end
        for i in range(start, end):
            if self.between_layers is not None:
                state = self.between_layers(i, state)
            state.hidden = self._run_layer(i, state)
        return state

    def finish(self, state: RunnerState) -> torch.Tensor:
        """Final norm, output head and (Gemma) logit soft-capping: -> logits (B, T, V)."""
        return self.head(state.hidden)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm, output head and soft-capping of any hidden states (..., D) -> logits (..., V).

        Every step is per token, so training can apply it to the supervised positions only.
        """
        hidden = self.base.norm(hidden)
        logits = unwrap_peft(self.llm).lm_head(hidden)
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        segment_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """prepare -> all layers -> finish: embeddings (B, T, D) -> logits (B, T, V)."""
        return self.finish(self.run_layers(self.prepare(inputs_embeds, attention_mask, position_ids, segment_ids)))

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------------------------------- internals
    def _build_mask(self, attention_type: str, state: RunnerState) -> Any:
        hidden = state.hidden
        kwargs: dict[str, Any] = dict(
            config=self.config,
            attention_mask=state.attention_mask,
            position_ids=state.position_ids,
        )
        kwargs[_CACHE_PARAM] = None
        kwargs["inputs_embeds" if "inputs_embeds" in _MASK_PARAMS else "input_embeds"] = hidden
        if "cache_position" in _MASK_PARAMS:
            kwargs["cache_position"] = torch.arange(hidden.shape[1], device=hidden.device)
        if state.segment_ids is not None:
            # transformers' own packed-sequence rule (same segment), intersected with causality, padding and
            # sliding windows by its mask builders; positions cannot tell samples apart after pooling (gaps).
            kwargs["and_mask_function"] = packed_sequence_mask_function(state.segment_ids.to(hidden.device))
        return MASK_BUILDERS[attention_type](**kwargs)

    def _rotary(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> dict[str, Any]:
        """(cos, sin) per layer type; Gemma3 uses a different rotary base for its sliding layers."""
        rotary = self.base.rotary_emb
        types = sorted(set(self.layer_types))
        if self._rotary_per_type:
            return {t: rotary(hidden, position_ids, t) for t in types}
        shared = rotary(hidden, position_ids)
        out = {t: shared for t in types}
        local = getattr(self.base, "rotary_emb_local", None)  # older transformers' Gemma3
        if local is not None and SLIDING in out:
            out[SLIDING] = local(hidden, position_ids)
        return out

    def _run_layer(self, i: int, state: RunnerState) -> torch.Tensor:
        layer_type = self.layer_types[i]
        kwargs: dict[str, Any] = dict(attention_mask=state.masks[layer_type], position_ids=state.position_ids,
                                      **state.varlen)
        if self._split_rope:
            kwargs["position_embeddings_global"] = state.position_embeddings[FULL]
            local = state.position_embeddings.get(SLIDING, state.position_embeddings[FULL])
            kwargs["position_embeddings_local"] = local
        else:
            kwargs["position_embeddings"] = state.position_embeddings[layer_type]
        layer = self.layers[i]
        if self.gradient_checkpointing and self.llm.training and torch.is_grad_enabled():
            out = checkpoint(layer, state.hidden, use_reentrant=False, **kwargs)
        else:
            out = layer(state.hidden, **kwargs)
        # Older transformers returned (hidden_states, ...) tuples from decoder layers.
        return out[0] if isinstance(out, tuple) else out  # (B, T, D)
