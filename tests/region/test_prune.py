"""Layer pruning: logits equal skipping the layers, KV-cache decoding stays exact, checkpoints round-trip."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from vregion.models.vlm import load_checkpoint
from vregion.region.apply import region_layers
from vregion.region.prune import prune_layers, pruned_config, renumber, save_pruned_checkpoint

from .test_metrics import make_batch, tiny_vlm


def logits_skipping(model, batch, drop):
    """The ORIGINAL model's runner, running every layer except `drop` one by one."""
    runner = model.runner
    embeds = model.embed(batch["input_ids"], batch["pixel_values"], batch["image_spans"])
    state = runner.prepare(embeds, batch["attention_mask"])
    for i in range(runner.num_layers):
        if i not in drop:
            state = runner.run_layers(state, i, i + 1)
    return runner.finish(state)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_pruned_logits_equal_skipped_layers(family):
    model, _ = tiny_vlm(family, depth=6)
    batch = make_batch()
    drop = [1, 4]
    with torch.no_grad():
        expected = logits_skipping(model, batch, drop)
        types = list(model.runner.layer_types)
        kept = prune_layers(model, drop)
        got = model(**{k: v for k, v in batch.items() if k != "num_samples"})["logits"]
    assert kept == [0, 2, 3, 5]
    assert model.runner.num_layers == 4 == model.llm.config.num_hidden_layers
    assert model.runner.layer_types == [types[i] for i in kept]
    assert [layer.self_attn.layer_idx for layer in model.llm.model.layers] == [0, 1, 2, 3]
    torch.testing.assert_close(got, expected)


def greedy_no_cache(model, input_ids, attention_mask, pixel_values, image_spans, steps):
    """Greedy decoding by re-running the full forward each step (left-padded prompts)."""
    embed = model.embed(input_ids, pixel_values, image_spans)
    tokens = []
    for _ in range(steps):
        logits = model.runner(embed, attention_mask)
        token = logits[:, -1].argmax(-1)
        tokens.append(token)
        embed = torch.cat([embed, model.llm.get_input_embeddings()(token)[:, None]], dim=1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
    return torch.stack(tokens, 1)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_pruned_kv_cache_generation_matches_no_cache(family):
    model, _ = tiny_vlm(family, depth=6)
    prune_layers(model, [0, 3])
    batch = make_batch()
    mask = torch.ones_like(batch["attention_mask"])
    mask[1, :4] = 0  # left padding
    with torch.no_grad():
        cached = model.generate(batch["input_ids"], mask, batch["pixel_values"], batch["image_spans"],
                                max_new_tokens=6, eos_token_id=None, pad_token_id=0)
        expected = greedy_no_cache(model, batch["input_ids"], mask, batch["pixel_values"], batch["image_spans"], 6)
    assert cached.shape == expected.shape == (3, 6)
    assert torch.equal(cached, expected)


def test_renumber_and_pruned_region_config():
    assert renumber([1, 5, 7], drop=[0, 3], num_layers=8) == [0, 3, 5]
    with pytest.raises(ValueError):
        renumber([3], drop=[3], num_layers=8)
    cfg = {"model": {"llm": {"tiny": {"family": "llama"}}}, "region": {"strategy": "uniform", "fraction": 0.25}}
    out = pruned_config(cfg, drop=[0, 2], num_layers=8)
    # uniform 2 of 8 = [1, 7] -> renumbered after dropping 0 and 2
    assert out["region"]["strategy"] == "list" and out["region"]["layers"] == [0, 5]
    assert out["model"]["llm"] == {"tiny": None, "path": "llm", "gguf_file": None}  # inside the checkpoint
    assert cfg["region"]["strategy"] == "uniform"  # input untouched


def test_pruned_checkpoint_round_trip(tmp_path):
    model, tokenizer = tiny_vlm("gemma3", depth=6)
    cfg = {"model": {"vision": {"type": "clip", "tiny": {}}, "projector": {"type": "mlp2x_gelu"},
                     "llm": {"tiny": {"family": "gemma3", "num_hidden_layers": 6}}},
           "region": {"strategy": "list", "layers": [1, 4]}}
    drop = [0, 2]
    types = list(model.llm.config.layer_types)
    prune_layers(model, drop)
    path = save_pruned_checkpoint(model, tokenizer, cfg, drop, 6, tmp_path / "pruned")
    loaded, _, config_dict = load_checkpoint(path)
    batch = {k: v for k, v in make_batch().items() if k != "num_samples"}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch)["logits"], model(**batch)["logits"])
    assert loaded.runner.num_layers == 4
    assert region_layers(config_dict, 4) == [0, 2]  # old 1 and 4, renumbered
    assert json.loads((path / "prune.json").read_text())["dropped"] == drop
    hf = AutoConfig.from_pretrained(str(path / "llm"))
    assert hf.num_hidden_layers == 4 and hf.layer_types == [types[i] for i in (1, 3, 4, 5)]


def test_pruned_checkpoint_moves_and_stores_weights_once(tmp_path):
    model, tokenizer = tiny_vlm("llama", depth=5)
    cfg = {"model": {"vision": {"type": "clip", "tiny": {}}, "projector": {"type": "mlp2x_gelu"},
                     "llm": {"tiny": {"family": "llama", "num_hidden_layers": 5}}}}
    prune_layers(model, [1, 3])
    path = save_pruned_checkpoint(model, tokenizer, cfg, [1, 3], 5, tmp_path / "a" / "pruned")
    batch = {k: v for k, v in make_batch().items() if k != "num_samples"}
    with torch.no_grad():
        before = load_checkpoint(path)[0](**batch)["logits"]
    moved = Path(shutil.move(str(path), str(tmp_path / "b" / "elsewhere")))
    shutil.rmtree(tmp_path / "a")  # nothing may be read from the old place
    loaded, _, config_dict = load_checkpoint(moved)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch)["logits"], before, rtol=0, atol=0)
    assert loaded.runner.num_layers == 3 and config_dict["model"]["llm"]["path"] == "llm"
    # The decoder weights exist once on disk: in model.safetensors, not again in llm/.
    weight_files = sorted(p.relative_to(moved).as_posix() for p in moved.rglob("*")
                          if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    assert weight_files == ["model.safetensors"]
    decoder_bytes = sum(p.numel() * 4 for p in model.llm.model.layers.parameters())  # fp32
    llm_bytes = sum(p.stat().st_size for p in (moved / "llm").rglob("*") if p.is_file())
    assert llm_bytes < decoder_bytes / 4  # config + tokenizer only


def test_prune_rejects_bad_drop():
    model, _ = tiny_vlm("llama", depth=3)
    with pytest.raises(ValueError):
        prune_layers(model, [3])
    with pytest.raises(ValueError):
        prune_layers(model, [0, 1, 2])
    assert model.runner.num_layers == 3
