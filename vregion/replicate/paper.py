"""The published numbers the replication is compared against (METHODS.md sections 1 and 2), with their sources.

Only constants live here; `vregion.replicate.conclusions` turns them and the measured numbers into sentences.
"Score" is the paper's benchmark average; the replication compares it with held-out Fashion-MNIST accuracy,
so agreement means "the same direction and a similar size", not the same number.
"""

from __future__ import annotations

REGION_SOURCE = "Wang et al. 2024, arXiv 2412.12785"
REGION_MODEL = "Bunny-Llama-3-8B-V"
REGION_DEPTH = 32

# Share of full tuning's 8-benchmark average kept by a uniform region of N of the 32 layers (a secondary summary).
SWEEP_PCT = {1: 91.89, 2: 96.49, 4: 98.01, 6: 98.99, 8: 99.36, 16: 99.42}

# 8-benchmark averages: full tuning, uniform 8 layers, and the other 8-layer selection strategies.
SCORES = {"full": 62.18, "uniform": 61.82, "bottom": 60.24, "top": 57.26, "param_change": 61.45, "angular": 60.77}

# Stage-2 training time saved by the region vs full tuning (8x A100), in %.
TIME_SAVING_PCT = {"LLaVA-1.5-7B/13B": 23.0, "Bunny-Llama-3-8B-V": 13.0}

COMPRESS_SOURCE = "LLaVolta, Chen et al., NeurIPS 2024, LLaVA-1.5-7B"
# Preset -> (training time saved in %, change of the 13-benchmark average in points) vs no compression
# (baseline 15.3 h, average 61.8). Only the schedules the paper reports these two numbers for.
COMPRESS = {
    "four-wider-then-deeper": (100 * (1 - 12.9 / 15.3), 0.0),
    "last-stage-compression": (100 * (1 - 12.4 / 15.3), 0.3),
}


def paper_sweep_point(count: int, num_layers: int) -> tuple[int, float]:
    """The paper's sweep point (layers of 32, % of full) whose share of the depth is nearest count / num_layers."""
    share = count / num_layers
    layers = min(SWEEP_PCT, key=lambda n: (abs(n / REGION_DEPTH - share), n))
    return layers, SWEEP_PCT[layers]


def score_gap(a: str, b: str) -> float:
    """Published average-score difference a - b, in points."""
    return SCORES[a] - SCORES[b]
