"""Layer metrics against a hand computation, batch-split invariance, parameter change, and ranking."""

import math

import pytest
import torch

from vregion.config import LLMConfig, ModelConfig, ProjectorConfig, VisionConfig
from vregion.models.vlm import build_vlm as build_real_vlm
from vregion.region.metrics import layer_metrics, parameter_change, token_masks
from vregion.region.ranking import least_important_outside, rank_layers, scores_from_table

N_VIS = 16  # visual tokens per tiny image (32 px, patch 8)


def tiny_vlm(family: str = "llama", depth: int = 5):
    torch.manual_seed(0)
    cfg = ModelConfig(vision=VisionConfig(type="clip", tiny={}), projector=ProjectorConfig(type="mlp2x_gelu"),
                      llm=LLMConfig(tiny={"family": family, "num_hidden_layers": depth}))
    model, tokenizer = build_real_vlm(cfg)
    return model.eval(), tokenizer


def make_batch(seed: int = 1, B: int = 3, T: int = 30) -> dict:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, 256, (B, T), generator=g)
    attention_mask = torch.ones(B, T, dtype=torch.long)
    attention_mask[1, T - 5:] = 0  # right padding
    image_spans = torch.tensor([[0, 2, N_VIS], [2, 10, N_VIS], [-1, 0, N_VIS]])
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids.clone(),
                pixel_values=torch.randn(3, 3, 32, 32, generator=g), image_spans=image_spans, num_samples=B)


def split(batch: dict) -> list[dict]:
    """The same samples as one-sample batches (spans re-indexed)."""
    out = []
    for b in range(batch["input_ids"].shape[0]):
        rows = [m for m, s in enumerate(batch["image_spans"].tolist()) if s[0] == b]
        spans = torch.tensor([[0, *batch["image_spans"][m, 1:].tolist()] for m in rows] or [[-1, 0, N_VIS]])
        pixels = batch["pixel_values"][rows] if rows else batch["pixel_values"][:1]
        out.append(dict(input_ids=batch["input_ids"][b:b + 1], attention_mask=batch["attention_mask"][b:b + 1],
                        labels=batch["labels"][b:b + 1], pixel_values=pixels, image_spans=spans, num_samples=1))
    return out


def manual_hidden(model, batch) -> list[torch.Tensor]:
    """h_0 .. h_N from an explicit loop over the runner's layers (no hook)."""
    runner = model.runner
    embeds = model.embed(batch["input_ids"], batch["pixel_values"], batch["image_spans"])
    state = runner.prepare(embeds, batch["attention_mask"])
    hidden = [state.hidden]
    for i in range(runner.num_layers):
        state = runner.run_layers(state, i, i + 1)
        hidden.append(state.hidden)
    return hidden


def test_token_masks():
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    visual, text = token_masks(mask, torch.tensor([[0, 1, 2], [-1, 0, 0], [1, 3, 2]]))
    assert visual.tolist() == [[False, True, True, False, False], [False, False, False, True, True]]
    assert text.tolist() == [[True, False, False, True, False], [True, True, True, False, False]]


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_metrics_match_hand_computation(family):
    model, _ = tiny_vlm(family)
    batch = make_batch()
    table = layer_metrics(model, [batch], max_samples=10, block=2)
    with torch.no_grad():
        hidden = manual_hidden(model, batch)
    valid = batch["attention_mask"].bool()
    visual, text = token_masks(batch["attention_mask"], batch["image_spans"])
    assert int(visual.sum()) == 2 * N_VIS
    N = model.runner.num_layers
    assert len(table) == N
    for i, row in enumerate(table):
        cos = torch.nn.functional.cosine_similarity(hidden[i], hidden[i + 1], dim=-1).double()  # (B, T)
        bi_vis, bi_text = 1 - cos[visual].mean().item(), 1 - cos[text].mean().item()
        assert row.bi == pytest.approx(1 - cos[valid].mean().item(), abs=1e-5)
        assert row.bi_visual == pytest.approx(bi_vis, abs=1e-5)
        assert row.bi_text == pytest.approx(bi_text, abs=1e-5)
        assert row.bi_multimodal == pytest.approx((bi_vis + bi_text) / 2, abs=1e-5)
        assert row.angular == pytest.approx((torch.arccos(cos[valid].clamp(-1, 1)) / math.pi).mean().item(), abs=1e-4)
        if i + 2 <= N:
            c2 = torch.nn.functional.cosine_similarity(hidden[i], hidden[i + 2], dim=-1).double()
            assert row.angular_block == pytest.approx((torch.arccos(c2[valid].clamp(-1, 1)) / math.pi).mean().item(),
                                                      abs=1e-4)
        else:
            assert row.angular_block is None
    assert model.runner.between_layers is None  # the capture hook is removed


def test_batch_split_does_not_change_results():
    model, _ = tiny_vlm("llama")
    batch = make_batch()
    whole = layer_metrics(model, [batch], max_samples=10)
    parts = layer_metrics(model, split(batch), max_samples=10)
    for a, b in zip(whole, parts):
        for key in ("bi", "bi_visual", "bi_text", "angular", "angular_block"):
            if getattr(a, key) is not None:
                assert getattr(a, key) == pytest.approx(getattr(b, key), abs=1e-5), key


def test_max_samples_stops_early():
    model, _ = tiny_vlm("llama")
    one = layer_metrics(model, split(make_batch())[:1], max_samples=10)
    capped = layer_metrics(model, split(make_batch()), max_samples=1)
    assert [r.bi for r in one] == pytest.approx([r.bi for r in capped])


def test_parameter_change():
    base = {"llm.model.layers.0.self_attn.q_proj.weight": torch.tensor([[3.0, 0.0]]),
            "llm.model.layers.0.mlp.down_proj.weight": torch.tensor([[1.0, 1.0]]),
            "llm.model.layers.1.self_attn.q_proj.weight": torch.tensor([[1.0, 0.0]]),
            "llm.model.layers.0.input_layernorm.weight": torch.tensor([1.0, 1.0])}
    trained = dict(base)
    trained["llm.model.layers.0.self_attn.q_proj.weight"] = torch.tensor([[3.0, 4.0]])
    trained["llm.model.layers.0.input_layernorm.weight"] = torch.tensor([9.0, 9.0])  # not one of the 7 linears
    # HF names for the base work too.
    change = parameter_change(trained, {k.removeprefix("llm."): v for k, v in base.items()})
    assert change[0]["param_l2"] == pytest.approx(4.0)
    assert change[0]["param_relative"] == pytest.approx(4.0 / 3.0)
    assert change[0]["param_angular"] == pytest.approx(math.acos(3 / 5) / math.pi)
    assert change[1] == {"param_l2": 0.0, "param_angular": 0.0, "param_relative": 0.0}


def test_parameter_change_reads_only_the_llms_decoder_layers_of_a_clip_tower_model():
    """CLIP's `vision.model.encoder.layers.<i>.self_attn.q_proj` has the LLM's name tail: it must not count (it
    crashed against an HF LLM base, and silently replaced the LLM's weights between two vregion state dicts)."""
    model, _ = tiny_vlm(depth=3)
    # Sorted by name, as safetensors files give them: `vision.` comes after `llm.`.
    base = {k: v.clone() for k, v in sorted(model.state_dict().items())}
    g = torch.Generator().manual_seed(0)
    trained = {k: v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in base.items()}
    assert any(k.startswith("vision.") and k.endswith("self_attn.q_proj.weight") for k in trained)

    def by_hand(layer: int) -> float:
        return sum(float(torch.linalg.vector_norm((trained[f"llm.model.layers.{layer}.{lin}.weight"]
                                                   - base[f"llm.model.layers.{layer}.{lin}.weight"]).double()))
                   for lin in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))

    hf_base = {k.removeprefix("llm."): v for k, v in base.items() if k.startswith("llm.")}  # the LLM's own names
    llava_base = {"model.language_model." + k.removeprefix("llm.model."): v for k, v in base.items()
                  if k.startswith("llm.model.")}  # an HF LLaVA folder's names
    for reference in (base, hf_base, llava_base):
        change = parameter_change(trained, reference)
        assert sorted(change) == [0, 1, 2]
        for layer in range(3):
            assert change[layer]["param_l2"] == pytest.approx(by_hand(layer), rel=1e-9)


def test_rank_layers():
    scores = [0.1, 0.9, 0.8, 0.2, 0.7, None]
    assert rank_layers(scores, 2) == [1, 5]  # None counts as most important
    assert rank_layers([0.1, 0.9, 0.8, 0.2, 0.7], 3) == [1, 2, 4]
    picked = rank_layers([0.1, 0.9, 0.8, 0.2, 0.7, 0.6], 2, spread=True)
    assert picked == [1, 4]
    with pytest.raises(ValueError):
        rank_layers([0.1, 0.9, 0.8], 2, spread=True)  # only 0 and 2 are non-adjacent, greedy picks 1 first


def test_least_important_outside_never_picks_region():
    scores = [0.05, 0.01, 0.5, 0.02, 0.3, 0.04, None]
    assert least_important_outside(scores, region=[1, 3], n=2) == [0, 5]
    for n in range(6):
        assert not set(least_important_outside(scores, [1, 3], n)) & {1, 3}
    assert 6 not in least_important_outside(scores, [1, 3], 4)  # unscored layers go last
    with pytest.raises(ValueError):
        least_important_outside(scores, [1, 3], 6)


def test_scores_from_table_validates():
    rows = [{"layer": 1, "angular": 0.2}, {"layer": 0, "angular": 0.1}]
    assert scores_from_table(rows, "angular") == [0.1, 0.2]
    with pytest.raises(ValueError, match="valid"):
        scores_from_table(rows, "bogus")
    with pytest.raises(ValueError, match="base"):
        scores_from_table([{"layer": 0, "param_l2": None}], "param_l2")


def test_metric_strategy_picks_the_top_ranked_layers_from_an_analyze_table(tmp_path):
    """region.strategy=metric ranks layers by a column of layers.json; spread keeps them non-adjacent."""
    import json

    from vregion.config import RegionConfig
    from vregion.region.apply import region_layers_for

    angular = [0.9, 0.1, 0.8, 0.7, 0.2, 0.3, 0.6, 0.05]
    (tmp_path / "layers.json").write_text(json.dumps({"layers": [{"layer": i, "angular": a} for i, a in enumerate(angular)]}))
    cfg = RegionConfig(strategy="metric", scores=str(tmp_path / "layers.json"), metric="angular", count=3, spread=False)
    assert region_layers_for(cfg, 8) == [0, 2, 3]
    cfg.spread = True
    assert region_layers_for(cfg, 8) == [0, 2, 6]
    with pytest.raises(ValueError, match="has 10"):
        region_layers_for(cfg, 10)
