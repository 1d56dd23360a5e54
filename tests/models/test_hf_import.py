"""`vregion import` / init_from from foreign checkpoints: logits equal transformers' own forward (max abs diff
<= 1e-5, fp32), export -> import -> export is bit-exact, and what cannot map is refused by name."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.models.llava_sources import hf_llava, original_llava, projector_bin, save_tower
from tests.models.test_hf_export import inputs, make_checkpoint
from tests.models.tiny import tiny_model_config
from vregion.cli import main
from vregion.config import ModelConfig, from_dict
from vregion.models import build_vlm, load_checkpoint
from vregion.models.checkpoint import read_config
from vregion.models.hf_export import export_checkpoint
from vregion.models.importer import ImportRefused, import_checkpoint


def max_logit_diff(model, tokenizer, hf) -> float:
    """Max |vregion - transformers| over the real positions of a padded two-image batch (fp32)."""
    ours, hf_ids = inputs(model, tokenizer, hf)
    with torch.no_grad():
        expected = model(**ours)["logits"]  # (B, T, V)
        got = hf(input_ids=hf_ids, attention_mask=ours["attention_mask"], pixel_values=ours["pixel_values"]).logits
    assert got.shape == expected.shape
    real = ours["attention_mask"].bool()
    assert expected[real].std() > 0.1  # logits that vary: a diff of 1e-5 is a real check
    return float((got[real] - expected[real]).abs().max())


@pytest.mark.parametrize("vision,text", [("clip", "llama"), ("siglip", "qwen2")])
def test_transformers_built_llava_imports_with_equal_logits(tmp_path, vision, text):
    hf = hf_llava(tmp_path / "src", vision, text)
    result = import_checkpoint(tmp_path / "src", tmp_path / "ckpt", template="vicuna-v1")
    assert result["kind"] == "hf-llava"
    model, tokenizer, config = load_checkpoint(tmp_path / "ckpt")
    m = config["model"]
    assert m["vision"] == m["vision"] | {"type": vision, "path": "vision", "feature_layer": -2, "image_aspect": "crop"}
    assert m["projector"]["type"] == "mlp2x_gelu" and m["llm"]["path"] == "llm" and m["template"] == "vicuna-v1"
    assert type(model.llm.config).__name__ == type(hf.config.text_config).__name__
    assert tokenizer.convert_tokens_to_ids("<image>") == hf.config.image_token_index
    assert max_logit_diff(model.eval(), tokenizer, hf) <= 1e-5


def test_export_import_export_is_bit_exact(tmp_path):
    _, _, ckpt = make_checkpoint(tmp_path, tiny_model_config("llama"))
    export_checkpoint(ckpt, tmp_path / "hf1", "hf")
    result = import_checkpoint(tmp_path / "hf1", tmp_path / "back")  # template inferred from the export's Jinja
    assert result["model"]["template"] == "vicuna-v1" and "inferred" in result["notes"][0]
    export_checkpoint(tmp_path / "back", tmp_path / "hf2", "hf")
    first, second = load_file(tmp_path / "hf1" / "model.safetensors"), load_file(tmp_path / "hf2" / "model.safetensors")
    assert sorted(first) == sorted(second)
    for name in first:
        assert first[name].dtype == second[name].dtype and torch.equal(first[name], second[name]), name
    for file in ("tokenizer_config.json", "tokenizer.json", "processor_config.json", "chat_template.jinja",
                 "generation_config.json"):
        assert (tmp_path / "hf1" / file).read_bytes() == (tmp_path / "hf2" / file).read_bytes(), file
    # The configs agree but for provenance: where the LLM was loaded from, and the dtype a loaded model records
    # (the first export's tiny model was built in memory, so it recorded none).
    configs = [json.loads((tmp_path / name / "config.json").read_text()) for name in ("hf1", "hf2")]
    for config in configs:
        for sub in ("text_config", "vision_config"):
            config[sub].pop("_name_or_path", None), config[sub].pop("dtype", None)
    assert configs[0] == configs[1]


@pytest.mark.parametrize("with_tower", [False, True])
def test_original_llava_checkpoint_imports_with_equal_logits(tmp_path, with_tower):
    hf = hf_llava(tmp_path / "hf")
    # With the tower in the checkpoint, the tower folder holds other (random) weights: the checkpoint's must win.
    tower = save_tower(hf, tmp_path / "tower", random_weights=with_tower)
    src = original_llava(hf, tmp_path / "llava", tower, with_tower=with_tower)
    result = import_checkpoint(src, tmp_path / "ckpt")
    assert result["kind"] == "llava" and result["model"]["template"] == "vicuna-v1"
    assert result["model"]["vision"]["image_aspect"] == "pad"  # image_aspect_ratio: pad
    assert any("no vision tower" in n for n in result["notes"]) == (not with_tower)
    model, tokenizer, _ = load_checkpoint(tmp_path / "ckpt")
    assert max_logit_diff(model.eval(), tokenizer, hf) <= 1e-5


def imported_model_config(ckpt, **changes) -> ModelConfig:
    """The model section of an imported checkpoint as a training config would name it (absolute paths)."""
    cfg = from_dict(ModelConfig, read_config(ckpt)["model"])
    cfg.vision.path, cfg.llm.path = str(ckpt / "vision"), str(ckpt / "llm")
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def test_init_from_reads_a_hf_llava_folder_directly_and_projector_init_from_an_mm_projector_bin(tmp_path):
    hf = hf_llava(tmp_path / "src", seed=0)
    other = hf_llava(tmp_path / "other", seed=1)  # its projector: a different stage-1 result
    import_checkpoint(tmp_path / "src", tmp_path / "ckpt", template="vicuna-v1")
    cfg = imported_model_config(tmp_path / "ckpt", init_from=str(tmp_path / "src"))  # the HF folder itself
    model, tokenizer = build_vlm(cfg)
    assert max_logit_diff(model.eval(), tokenizer, hf) <= 1e-5
    cfg.projector.init_from = str(projector_bin(other, tmp_path / "mm_projector.bin"))
    model, tokenizer = build_vlm(cfg)
    hf.model.multi_modal_projector.load_state_dict(other.model.multi_modal_projector.state_dict())
    assert max_logit_diff(model.eval(), tokenizer, hf) <= 1e-5


def test_architecture_only_folders_need_init_from(tmp_path):
    hf_llava(tmp_path / "src")
    import_checkpoint(tmp_path / "src", tmp_path / "ckpt", template="vicuna-v1")
    with pytest.raises(ValueError, match=r"model.vision.path .* and model.llm.path .*without weights; set "
                                         r"model.init_from"):
        build_vlm(imported_model_config(tmp_path / "ckpt"))


class WritesAMarker:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_a_projector_file_whose_pickle_runs_code_is_refused_and_nothing_runs(tmp_path):
    hf_llava(tmp_path / "src")
    import_checkpoint(tmp_path / "src", tmp_path / "ckpt", template="vicuna-v1")
    marker = tmp_path / "marker"
    torch.save({"model.mm_projector.0.weight": torch.zeros(2), "x": WritesAMarker(marker)}, tmp_path / "evil.bin")
    cfg = imported_model_config(tmp_path / "ckpt", init_from=str(tmp_path / "ckpt"))
    cfg.projector.init_from = str(tmp_path / "evil.bin")
    with pytest.raises(ImportRefused, match=r"refusing to load .*evil.bin.*GLOBAL exec"):
        build_vlm(cfg)
    assert not marker.exists()


def test_an_original_checkpoint_whose_pickle_runs_code_is_refused(tmp_path, capsys):
    hf = hf_llava(tmp_path / "hf")
    src = original_llava(hf, tmp_path / "llava", save_tower(hf, tmp_path / "tower"))
    marker = tmp_path / "marker"
    torch.save({"lm_head.weight": torch.zeros(2), "x": WritesAMarker(marker)}, src / "pytorch_model.bin")
    assert main(["import", str(src), str(tmp_path / "out")]) == 2
    assert "GLOBAL exec" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists()


def rewrite_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            config[key] = config.get(key, {}) | value
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("changes,message", [
    ({"mm_projector_type": "mlp3x_gelu"}, "mm_projector_type 'mlp3x_gelu' is not supported"),
    ({"mm_patch_merge_type": "spatial_unpad", "image_aspect_ratio": "anyres"}, "AnyRes"),
    ({"mm_vision_select_feature": "cls_patch"}, "'cls_patch' keeps the CLS"),
])
def test_original_llava_that_cannot_map_is_refused_by_name(tmp_path, capsys, changes, message):
    hf = hf_llava(tmp_path / "hf")
    src = original_llava(hf, tmp_path / "llava", save_tower(hf, tmp_path / "tower"), **changes)
    assert main(["import", str(src), str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("changes,message", [
    ({"model_type": "llava_next"}, "llava_next (AnyRes image tiling with an image_newline"),
    ({"vision_config": {"model_type": "dinov2"}}, "model_type 'dinov2' is not CLIP or SigLIP"),
    ({"projector_hidden_act": "relu"}, "projector activation 'relu'"),
])
def test_hf_llava_that_cannot_map_is_refused_by_name(tmp_path, capsys, changes, message):
    hf_llava(tmp_path / "src")
    rewrite_config(tmp_path / "src", **changes)
    assert main(["import", str(tmp_path / "src"), str(tmp_path / "out"), "--template", "vicuna-v1"]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_chat_template_is_inferred_or_asked_for(tmp_path, capsys):
    hf_llava(tmp_path / "src")  # the byte tokenizer has no chat template
    assert main(["import", str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    assert "no chat template" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "src"), str(tmp_path / "out"), "--template", "chatml"]) == 0
    printed = capsys.readouterr().out
    assert "template: chatml" in printed and f"init_from: {(tmp_path / 'out').resolve()}" in printed
