"""Model checkpoints: round trip, tied weights stored once, strict key checks, atomic replace, init_from."""

import dataclasses
import os

import pytest
import torch
from safetensors import safe_open

from vregion.config import Config, to_dict
from vregion.models.checkpoint import (
    MODEL_FILE,
    load_weights,
    read_state_dict,
    save_checkpoint,
    save_state_dict,
)
from vregion.models.vlm import build_vlm, load_checkpoint

from .tiny import tiny_model_config


def run_config(model_cfg):
    return to_dict(Config(model=model_cfg))


def inputs():
    ids = torch.randint(0, 256, (2, 24))
    mask = torch.ones(2, 24, dtype=torch.long)
    return dict(
        input_ids=ids,
        attention_mask=mask,
        pixel_values=torch.randn(2, 3, 32, 32),
        image_spans=torch.tensor([[0, 3, 16], [1, 5, 16]]),
    )


def logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch)["logits"]


def perturb(model):
    """Move weights away from the seed's initialisation so a reload from the seed alone cannot pass."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)


@pytest.mark.parametrize("llm", ["llama", "gemma3"])
def test_round_trip_identical_logits(tmp_path, llm):
    cfg = tiny_model_config(llm)
    model, tokenizer = build_vlm(cfg)
    perturb(model)
    save_checkpoint(model, run_config(cfg), tokenizer, tmp_path / "ckpt")
    torch.manual_seed(123)  # the rebuild must not depend on the seed
    loaded, loaded_tok, config_dict = load_checkpoint(tmp_path / "ckpt")
    batch = inputs()
    assert torch.equal(logits(loaded, batch), logits(model, batch))
    assert config_dict == run_config(cfg)
    assert loaded_tok("x<s>y").input_ids == tokenizer("x<s>y").input_ids
    assert set(os.listdir(tmp_path)) == {"ckpt"}  # no temp folders left beside it


def test_tied_weights_stored_once_and_still_tied(tmp_path):
    cfg = tiny_model_config("gemma3")
    model, tokenizer = build_vlm(cfg)
    assert model.llm.lm_head.weight is model.llm.model.embed_tokens.weight
    save_checkpoint(model, run_config(cfg), tokenizer, tmp_path / "ckpt")
    with safe_open(str(tmp_path / "ckpt" / MODEL_FILE), "pt") as f:
        stored = set(f.keys())
    assert "llm.model.embed_tokens.weight" in stored and "llm.lm_head.weight" not in stored
    assert set(read_state_dict(tmp_path / "ckpt")) == set(model.state_dict())
    loaded, _, _ = load_checkpoint(tmp_path / "ckpt")
    assert loaded.llm.lm_head.weight is loaded.llm.model.embed_tokens.weight


def test_save_state_dict_from_gathered_copies(tmp_path):
    """A gathered state dict holds independent (cloned) tensors, possibly without the tied head."""
    cfg = tiny_model_config("gemma3")
    model, tokenizer = build_vlm(cfg)
    perturb(model)
    gathered = {k: v.clone() for k, v in model.state_dict().items() if k != "llm.lm_head.weight"}
    save_state_dict(gathered, Config(model=cfg), tokenizer, tmp_path / "ckpt")
    loaded, _, config_dict = load_checkpoint(tmp_path / "ckpt")
    batch = inputs()
    assert torch.equal(logits(loaded, batch), logits(model, batch))
    assert config_dict["model"]["llm"]["tiny"]["family"] == "gemma3"


def test_wrong_keys_fail_strict_load(tmp_path):
    cfg = tiny_model_config("llama")
    model, tokenizer = build_vlm(cfg)
    save_checkpoint(model, run_config(cfg), tokenizer, tmp_path / "ckpt")
    other, _ = build_vlm(tiny_model_config("llama", projector="linear"))
    with pytest.raises(RuntimeError, match="projector"):
        load_weights(other, tmp_path / "ckpt")

    extra = dict(model.state_dict(), **{"projector.9.weight": torch.zeros(1)})
    save_state_dict(extra, run_config(cfg), None, tmp_path / "extra")
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*projector\.9\.weight"):
        load_weights(model, tmp_path / "extra")
    result = load_weights(model, tmp_path / "extra", strict=False)
    assert result.unexpected_keys == ["projector.9.weight"] and result.missing_keys == []


def test_overwrite_replaces_checkpoint(tmp_path):
    cfg = tiny_model_config("llama")
    model, tokenizer = build_vlm(cfg)
    save_checkpoint(model, run_config(cfg), tokenizer, tmp_path / "ckpt")
    perturb(model)
    save_checkpoint(model, run_config(cfg), tokenizer, tmp_path / "ckpt")
    assert torch.equal(read_state_dict(tmp_path / "ckpt")["projector.0.weight"], model.projector[0].weight)
    assert set(os.listdir(tmp_path)) == {"ckpt"}


def test_failed_save_leaves_old_checkpoint(tmp_path):
    cfg = tiny_model_config("llama")
    model, tokenizer = build_vlm(cfg)
    save_checkpoint(model, run_config(cfg), tokenizer, tmp_path / "ckpt")
    before = read_state_dict(tmp_path / "ckpt")["projector.0.weight"]

    class Broken:
        def save_pretrained(self, path):
            raise OSError("disk full")

    perturb(model)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, run_config(cfg), Broken(), tmp_path / "ckpt")
    assert torch.equal(read_state_dict(tmp_path / "ckpt")["projector.0.weight"], before)
    assert set(os.listdir(tmp_path)) == {"ckpt"}


def test_init_from_loads_weights(tmp_path):
    cfg = tiny_model_config("qwen2")
    model, tokenizer = build_vlm(cfg)
    perturb(model)
    save_checkpoint(model, run_config(cfg), tokenizer, tmp_path / "ckpt")
    fresh, _ = build_vlm(dataclasses.replace(cfg, init_from=str(tmp_path / "ckpt")))
    batch = inputs()
    assert torch.equal(logits(fresh, batch), logits(model, batch))


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a vregion checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        read_state_dict(tmp_path)
