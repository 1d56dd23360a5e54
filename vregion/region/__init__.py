"""Visual region: pick a sparse set of LLM decoder layers, make only them (and the projector) trainable."""

from vregion.region.apply import PLAN_COMPONENTS, RegionPlan, apply_region, set_trainable, trainable_names
from vregion.region.groups import build_param_groups
from vregion.region.lora import LORA_TARGETS, inject_lora, lora_layers, merge_lora
from vregion.region.metrics import LayerStats, layer_metrics, parameter_change
from vregion.region.names import component_of, is_lora_param, layer_index_of
from vregion.region.prune import prune_layers, save_pruned_checkpoint
from vregion.region.ranking import least_important_outside, rank_layers
from vregion.region.report import parameter_counts, parameter_table
from vregion.region.select import STRATEGIES, resolve_count, select_layers

__all__ = [
    "LORA_TARGETS",
    "LayerStats",
    "layer_metrics",
    "least_important_outside",
    "parameter_change",
    "prune_layers",
    "rank_layers",
    "save_pruned_checkpoint",
    "PLAN_COMPONENTS",
    "STRATEGIES",
    "RegionPlan",
    "apply_region",
    "build_param_groups",
    "component_of",
    "inject_lora",
    "is_lora_param",
    "layer_index_of",
    "lora_layers",
    "merge_lora",
    "parameter_counts",
    "parameter_table",
    "resolve_count",
    "select_layers",
    "set_trainable",
    "trainable_names",
]
