"""parameter_table: per-component totals and trainable counts, computed independently from the config."""

import re

from vregion.config import LoraConfig, RegionConfig
from vregion.region import apply_region, parameter_table

from .tiny import DEPTH, HEAD_DIM, HEADS, HIDDEN, INTER, KV_HEADS, VISION_DIM, VOCAB

# Llama decoder layer: q, o (H x H), k, v (H x kv*hd), gate, up, down (H x I), two RMSNorm weights.
ATTN = 2 * HIDDEN * HEADS * HEAD_DIM + 2 * HIDDEN * KV_HEADS * HEAD_DIM
LAYER = ATTN + 3 * HIDDEN * INTER + 2 * HIDDEN
EMBED = VOCAB * HIDDEN
VISION = 12 * VISION_DIM + VISION_DIM + 2 * VISION_DIM
PROJECTOR = VISION_DIM * HIDDEN + HIDDEN + HIDDEN * HIDDEN + HIDDEN


def parse(table):
    """{row label: (params, trainable, share)} from the rendered table."""
    rows = {}
    for line in table.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == 4 and cells[1][0].isdigit():
            rows[cells[0]] = (int(cells[1].replace(",", "")), int(cells[2].replace(",", "")), cells[3])
    return rows


def test_full_mode_counts(build_vlm):
    model = build_vlm("llama")
    plan = apply_region(model, RegionConfig(strategy="uniform", count=2, mode="full"))
    table = parameter_table(model, plan)
    rows = parse(table)
    total = VISION + PROJECTOR + DEPTH * LAYER + 2 * EMBED + HIDDEN
    trained = PROJECTOR + 2 * LAYER
    assert rows["vision"] == (VISION, 0, "0.00")
    assert rows["projector"] == (PROJECTOR, PROJECTOR, "100.00")
    assert rows["llm region layers"] == (2 * LAYER, 2 * LAYER, "100.00")
    assert rows["other llm layers"] == ((DEPTH - 2) * LAYER, 0, "0.00")
    assert rows["embeddings"] == (EMBED, 0, "0.00")
    assert rows["final norm"] == (HIDDEN, 0, "0.00")
    assert rows["lm_head"] == (EMBED, 0, "0.00")
    assert rows["total"] == (total, trained, f"{100 * trained / total:.2f}")
    assert "other" not in rows
    assert "layers=[1, 7] (2 of 8)" in table and "strategy=uniform mode=full" in table


def test_lora_mode_and_tied_head_counted_once(build_vlm):
    model = build_vlm("llama", tied=True)
    plan = apply_region(model, RegionConfig(strategy="list", layers=[4], mode="lora",
                                            lora=LoraConfig(r=4, alpha=8)))
    rows = parse(parameter_table(model, plan))
    r = 4
    lora = r * (5 * HIDDEN + HEADS * HEAD_DIM + INTER)  # A (r x in): q k v gate up read H, o, down
    lora += r * (HEADS * HEAD_DIM + 2 * KV_HEADS * HEAD_DIM + HIDDEN + 2 * INTER + HIDDEN)  # B (out x r)
    assert rows["llm region layers"] == (LAYER + lora, lora, f"{100 * lora / (LAYER + lora):.2f}")
    assert rows["embeddings"] == (EMBED, 0, "0.00")
    assert rows["lm_head (tied to embeddings)"] == (0, 0, "-")  # the shared tensor counts under embeddings
    total = VISION + PROJECTOR + DEPTH * LAYER + lora + EMBED + HIDDEN
    assert rows["total"][:2] == (total, PROJECTOR + lora)
