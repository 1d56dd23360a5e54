"""Stage 2 from an imported checkpoint: a transformers-built LLaVA, imported, trains with DeepSpeed and exports."""

from __future__ import annotations

import torch
from safetensors.torch import load_file
from transformers import LlavaForConditionalGeneration

from tests.engine.launch import run_train, train_losses
from tests.models.llava_sources import hf_llava
from vregion.models.hf_export import export_checkpoint
from vregion.models.importer import import_checkpoint


def test_stage_two_from_an_imported_llava_trains_and_exports(tmp_path):
    hf_llava(tmp_path / "src")
    ckpt = tmp_path / "imported"
    import_checkpoint(tmp_path / "src", ckpt, template="vicuna-v1")
    run_dir = tmp_path / "run"
    run_train("configs/tiny.yaml", [
        f"run.output_dir={run_dir}", "stages=[]", "train.max_steps=3", "train.save_every=0",
        "data.synthetic.num_eval=0", "eval.before_after=false", "region.count=1",
        f"model.init_from={ckpt}", f"model.vision.path={ckpt / 'vision'}", "model.vision.tiny=null",
        f"model.llm.path={ckpt / 'llm'}", "model.llm.tiny=null", "model.vision.image_aspect=crop",
    ])
    losses = train_losses(run_dir)
    assert sorted(losses) == [1, 2, 3] and all(0 < v < 20 for v in losses.values())
    before, after = load_file(ckpt / "model.safetensors"), load_file(run_dir / "final" / "model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert any(n.startswith("projector.") for n in changed) and any(n.startswith("llm.model.layers.") for n in changed)
    assert not any(n.startswith(("vision.", "llm.model.embed_tokens", "llm.lm_head")) for n in changed)
    result = export_checkpoint(run_dir / "final", tmp_path / "hf", "hf")
    exported = LlavaForConditionalGeneration.from_pretrained(result["path"])
    assert torch.equal(exported.model.multi_modal_projector.linear_1.weight, after["projector.0.weight"])
