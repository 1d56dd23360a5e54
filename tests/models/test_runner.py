"""Decoder runner: parity with the HF forward per family, padding side, hooks, refresh, checkpointing."""

import pytest
import torch
from transformers import AutoModelForCausalLM, MistralConfig

from vregion.config import LLMConfig
from vregion.models.llm import TINY_LLM_DEFAULTS, build_llm
from vregion.models.runner import DecoderRunner, decoder_layers, default_position_ids, num_decoder_layers

from .tiny import LLM_VARIANTS, padded_mask

B, T = 3, 12  # T > sliding window (4), so sliding and full layers attend differently


def tiny_llm(name: str, attn: str = "sdpa"):
    llm, _ = build_llm(LLMConfig(tiny=dict(LLM_VARIANTS[name]), attn_implementation=attn))
    return llm.eval()


@pytest.mark.parametrize("padding", ["none", "right", "left"])
@pytest.mark.parametrize("name,attn", [("llama", "sdpa"), ("qwen2", "sdpa"), ("gemma3", "sdpa"), ("gemma3", "eager")])
def test_logits_match_hf_forward(name, attn, padding):
    llm = tiny_llm(name, attn)
    embeds = torch.randn(B, T, llm.config.hidden_size)  # (B, T, D)
    mask = padded_mask(B, T, padding)
    positions = default_position_ids(mask)
    with torch.no_grad():
        expected = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
        got = DecoderRunner(llm).forward(embeds, mask)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_mistral_windows_every_layer(padding):
    """Mistral has no layer_types: a set sliding_window applies to all layers (Llama-family recipe)."""
    config = MistralConfig(**(TINY_LLM_DEFAULTS | {"sliding_window": 4}))
    llm = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    runner = DecoderRunner(llm)
    assert runner.layer_types == ["sliding_attention"] * 2
    embeds = torch.randn(B, T, config.hidden_size)
    mask = padded_mask(B, T, padding)
    with torch.no_grad():
        expected = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=default_position_ids(mask)).logits
        got = runner.forward(embeds, mask)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["qwen2", "gemma3"])
def test_tiny_configs_make_sliding_layers_matter(name):
    """Guards the parity test: if every layer attended fully, a broken sliding path would go unnoticed."""
    llm = tiny_llm(name)
    runner = DecoderRunner(llm)
    assert set(runner.layer_types) == {"full_attention", "sliding_attention"}
    embeds = torch.randn(B, T, llm.config.hidden_size)
    with torch.no_grad():
        logits = runner.forward(embeds)
        runner.layer_types = ["full_attention"] * runner.num_layers
        all_full = runner.forward(embeds)
    assert (logits - all_full).abs().max() > 1e-4


def test_gemma3_softcapping_bounds_logits():
    llm = tiny_llm("gemma3")
    with torch.no_grad():
        logits = DecoderRunner(llm).forward(torch.randn(B, T, llm.config.hidden_size) * 50)
    assert logits.abs().max() <= llm.config.final_logit_softcapping


def test_default_position_ids_count_real_tokens():
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]])
    assert default_position_ids(mask).tolist() == [[0, 1, 2, 3, 3, 3], [0, 0, 0, 0, 1, 2]]


def test_layer_helpers():
    llm = tiny_llm("gemma3")
    assert decoder_layers(llm) is llm.model.layers
    assert num_decoder_layers(llm) == llm.config.num_hidden_layers == 4


def test_hook_called_before_every_layer_in_order():
    llm = tiny_llm("llama")
    seen = []
    runner = DecoderRunner(llm, between_layers=lambda i, state: seen.append((i, state.hidden.shape)) or state)
    embeds = torch.randn(B, T, llm.config.hidden_size)
    with torch.no_grad():
        state = runner.prepare(embeds, padded_mask(B, T, "right"))
        runner.run_layers(state, 0, 1)
        runner.run_layers(state, 1, 2)
    assert seen == [(0, (B, T, 64)), (1, (B, T, 64))]


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_hook_shortening_sequence_with_refresh(name):
    """A hook that drops the last 3 tokens before layer 1 (then refreshes masks and rotary embeddings) must
    give the HF logits of the shorter sequence: causal attention means earlier tokens never saw them."""
    llm = tiny_llm(name)
    embeds = torch.randn(B, T, llm.config.hidden_size)
    keep = T - 3

    def drop_tail(i, state):
        if i == 1:
            state.hidden = state.hidden[:, :keep]
            state.attention_mask = state.attention_mask[:, :keep]
            state.position_ids = state.position_ids[:, :keep]
            runner.refresh(state)
        return state

    runner = DecoderRunner(llm, between_layers=drop_tail)
    with torch.no_grad():
        got = runner.forward(embeds)
        expected = llm(inputs_embeds=embeds[:, :keep]).logits
    assert got.shape == (B, keep, llm.config.vocab_size)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_gradient_checkpointing_same_loss_and_grads_and_recomputes():
    llm = tiny_llm("gemma3").train()
    embeds = torch.randn(B, T, llm.config.hidden_size)
    mask = padded_mask(B, T, "left")
    calls = []
    llm.model.layers[0].register_forward_pre_hook(lambda *args: calls.append(1))

    def loss_and_grads(checkpointing):
        llm.zero_grad()
        calls.clear()
        loss = DecoderRunner(llm, gradient_checkpointing=checkpointing).forward(embeds, mask).logsumexp(-1).mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in llm.named_parameters()}, len(calls)

    loss_plain, grads_plain, calls_plain = loss_and_grads(False)
    loss_ckpt, grads_ckpt, calls_ckpt = loss_and_grads(True)
    torch.testing.assert_close(loss_ckpt, loss_plain, rtol=1e-6, atol=1e-6)
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert grads_plain["model.layers.0.self_attn.q_proj.weight"].abs().sum() > 0
    assert (calls_plain, calls_ckpt) == (1, 2)  # the checkpointed layer ran again in backward
