"""LLM loading: tiny families, determinism, local HF folders, GGUF export and its cache, errors."""

import os

import gguf
import pytest
import torch

from vregion.config import LLMConfig
from vregion.data.tokenizer import BYTE_VOCAB_SIZE
from vregion.models import llm as llm_module
from vregion.models.llm import build_llm


@pytest.mark.parametrize(
    "family,cls,layers",
    [("llama", "LlamaForCausalLM", 2), ("qwen2", "Qwen2ForCausalLM", 2), ("gemma3", "Gemma3ForCausalLM", 4)],
)
def test_tiny_families(family, cls, layers):
    model, tokenizer = build_llm(LLMConfig(tiny={"family": family}))
    assert type(model).__name__ == cls
    assert len(model.model.layers) == layers
    assert model.config.vocab_size == 320 >= BYTE_VOCAB_SIZE == len(tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config._attn_implementation == "sdpa"


def test_tiny_gemma3_mixes_sliding_and_full_layers():
    model, _ = build_llm(LLMConfig(tiny={"family": "gemma3", "num_hidden_layers": 3}))
    assert model.config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    assert model.config.sliding_window == 4


def test_tiny_init_is_deterministic_given_seed():
    def weights(seed):
        torch.manual_seed(seed)
        return build_llm(LLMConfig(tiny={"family": "qwen2"}))[0].state_dict()

    a, b, c = weights(1), weights(1), weights(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], c["model.layers.0.mlp.up_proj.weight"])


def test_dtype_and_attn_implementation_passed():
    model, _ = build_llm(LLMConfig(tiny={"family": "llama"}, attn_implementation="eager"), dtype=torch.bfloat16)
    assert model.config._attn_implementation == "eager"
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16


def test_unknown_family():
    with pytest.raises(ValueError, match="unknown tiny LLM family 'gpt2'; valid: gemma3, llama, qwen2"):
        build_llm(LLMConfig(tiny={"family": "gpt2"}))


def test_missing_paths_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.llm.path does not exist"):
        build_llm(LLMConfig(path=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match="model.llm.path does not exist"):
        build_llm(LLMConfig(path=str(tmp_path / "nope.gguf")))
    with pytest.raises(FileNotFoundError, match="model.llm.gguf_file does not exist"):
        build_llm(LLMConfig(path=str(tmp_path), gguf_file="missing.gguf"))
    with pytest.raises(ValueError, match="either `path`"):
        build_llm(LLMConfig())


def test_local_hf_folder_round_trip(tmp_path):
    model, tokenizer = build_llm(LLMConfig(tiny={"family": "gemma3"}))
    model.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    loaded, loaded_tok = build_llm(LLMConfig(path=str(tmp_path / "lm")))
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert loaded_tok("a <s>b").input_ids == tokenizer("a <s>b").input_ids


# ---------------------------------------------------------------------------------------------- GGUF
def _permute(w, n_head):
    """llama.cpp's q/k row order for rotary (transformers undoes it when loading)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_llama_gguf(path, model, tokenizer):
    """An F32 llama GGUF (llama.cpp tensor names, byte-level vocab) holding `model`'s exact weights."""
    c = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    tokens += [f"<unused{i}>" for i in range(c.vocab_size - len(tokens))]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * 256 + [3] * (c.vocab_size - 256))  # 3 = control (special) tokens
    writer.add_token_scores([0.0] * c.vocab_size)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", sd["model.norm.weight"])
    writer.add_tensor("output.weight", sd["lm_head.weight"])
    names = {
        "attn_norm": "input_layernorm", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }  # fmt: skip
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        for ours, theirs in names.items():
            writer.add_tensor(f"blk.{i}.{ours}.weight", sd[f"{p}{theirs}.weight"])
        writer.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], c.num_attention_heads))
        writer.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], c.num_key_value_heads))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_exported_once_then_loaded_from_cache(tmp_path, monkeypatch):
    model, tokenizer = build_llm(LLMConfig(tiny={"family": "llama"}))
    gguf_path = tmp_path / "tiny.gguf"
    write_tiny_llama_gguf(gguf_path, model, tokenizer)
    cache = tmp_path / "cache"
    cfg = LLMConfig(path=str(gguf_path), cache_dir=str(cache))

    loaded, loaded_tok = build_llm(cfg)
    ids = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert loaded_tok("hi <s> wörld").input_ids == tokenizer("hi <s> wörld").input_ids
    (export,) = cache.iterdir()  # one folder, no temp leftovers
    assert export.name.startswith(f"tiny-{gguf_path.stat().st_size}-")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(export))

    # Later loads (also via folder + gguf_file) must come from the export, never converting again.
    monkeypatch.setattr(llm_module.tempfile, "mkdtemp", lambda *a, **k: pytest.fail("GGUF converted twice"))
    again, _ = build_llm(LLMConfig(path=str(tmp_path), gguf_file="tiny.gguf", cache_dir=str(cache)))
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)

    # A rewritten GGUF (new mtime) gets a fresh export instead of the stale one.
    os.utime(gguf_path, ns=(0, 10**9))
    monkeypatch.undo()
    build_llm(cfg)
    assert len(list(cache.iterdir())) == 2
