"""Apply a RegionConfig to a VisionLanguageModel: freeze, pick the region, add LoRA, mark what trains.

Trainability is data: `trainable_names` decides from names and the config which parameters train, and
`set_trainable` applies exactly that set. `apply_region` runs both and returns a logged RegionPlan.
"""

from __future__ import annotations

import logging
import typing
from dataclasses import dataclass, field

from torch import nn

from vregion.config import RegionConfig, from_dict
from vregion.region.lora import ADAPTER_NAME, inject_lora, lora_layers, lora_module_names
from vregion.region.names import (
    component_of,
    is_lora_param,
    layer_index_of,
    norm_param_names,
    vlm_decoder_layers,
)
from vregion.region.select import STRATEGIES, select_layers

log = logging.getLogger(__name__)

MODES = typing.get_args(typing.get_type_hints(RegionConfig)["mode"])  # the config's Literal: one list of modes
# Plan groups: `region` = decoder layers in the region, `layers` = the other decoder layers.
PLAN_COMPONENTS = ("vision", "projector", "region", "layers", "embeddings", "norm", "lm_head", "other")


@dataclass
class RegionPlan:
    """What apply_region did: the region and the trainable parameter names per component.

    `trainable` always has every key of PLAN_COMPONENTS. A lm_head tied to the input embeddings is one
    tensor: it is listed once, under `embeddings` (as named by `model.named_parameters()`).
    """

    strategy: str
    mode: str
    num_layers: int
    layers: list[int]
    trainable: dict[str, list[str]] = field(default_factory=dict)
    tied_lm_head: bool = False
    lora_modules: list[str] = field(default_factory=list)

    @property
    def trainable_names(self) -> list[str]:
        return [n for c in PLAN_COMPONENTS for n in self.trainable.get(c, [])]


def plan_component(name: str, layers: set[int] | list[int]) -> str:
    """component_of, with decoder layers split into `region` (index in `layers`) and `layers` (the rest)."""
    comp = component_of(name)
    if comp == "layers":
        return "region" if layer_index_of(name) in set(layers) else "layers"
    return comp


def has_tied_lm_head(model: nn.Module) -> bool:
    """True when one tensor is both an input-embedding and an lm_head parameter."""
    comps: dict[int, set[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        comps.setdefault(id(p), set()).add(component_of(name))
    return any({"embeddings", "lm_head"} <= c for c in comps.values())


def trainable_names(model: nn.Module, cfg: RegionConfig, layers: list[int]) -> set[str]:
    """Names (as `model.named_parameters()` gives them) of the parameters that train under `cfg`.

    Args:
        model: the model, LoRA already injected when `cfg.mode == "lora"`.
        cfg: the region config.
        layers: the region's decoder-layer indices (from select_layers).
    """
    region = set(layers)
    whole_llm = cfg.strategy == "all" and cfg.mode == "full"  # full fine-tuning: every LLM parameter
    tied = has_tied_lm_head(model)
    norms = norm_param_names(model) if cfg.train_norms else set()
    names = set()
    for name, _ in model.named_parameters():  # a tied lm_head appears once, as embed_tokens
        comp = component_of(name)
        if comp == "vision":
            take = cfg.train_vision
        elif comp == "projector":
            take = cfg.train_projector
        elif whole_llm:
            take = True
        elif comp == "layers" and layer_index_of(name) in region:
            take = is_lora_param(name) if cfg.mode == "lora" else True
        elif comp == "embeddings":
            take = cfg.train_embeddings or (tied and cfg.train_lm_head)
        elif comp == "lm_head":
            take = cfg.train_lm_head
        else:
            take = False
        if take or name in norms:
            names.add(name)
    return names


def set_trainable(model: nn.Module, names: set[str]) -> None:
    """requires_grad = True for exactly the parameters in `names`, False for all others."""
    known = {n for n, _ in model.named_parameters()}
    unknown = sorted(names - known)
    if unknown:
        raise ValueError(f"not parameters of the model: {unknown[:5]}")
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)


# What region.strategy accepts: select_layers' rules, plus `metric` (ranked layers of an analysis table).
REGION_STRATEGIES = (*STRATEGIES, "metric")


def region_layers_for(cfg: RegionConfig, num_layers: int) -> list[int]:
    """The region of a config: a rule from select_layers, or (strategy `metric`) the top-ranked layers of a
    `vregion analyze` table, `spread` keeping chosen layers apart."""
    if cfg.strategy != "metric":
        return select_layers(cfg.strategy, num_layers, cfg.count, cfg.fraction, cfg.layers)
    if cfg.scores is None:
        raise ValueError("region.strategy=metric needs region.scores (layers.json from `vregion analyze`)")
    import json
    from pathlib import Path

    from vregion.region.ranking import rank_layers, scores_from_table
    from vregion.region.select import resolve_count

    table = json.loads(Path(cfg.scores).expanduser().read_text())
    scores = scores_from_table(table["layers"] if isinstance(table, dict) else table, cfg.metric)
    if len(scores) != num_layers:
        raise ValueError(f"{cfg.scores} scores {len(scores)} layers, the model has {num_layers}")
    return rank_layers(scores, resolve_count(num_layers, cfg.count, cfg.fraction), spread=cfg.spread)


def region_layers(config_dict: dict, num_layers: int) -> list[int]:
    """A saved checkpoint's region layers, from its config's `region` section ([] when it has none)."""
    region = config_dict.get("region") or {}
    if not region:
        return []
    return region_layers_for(from_dict(RegionConfig, region, "region"), num_layers)


def apply_region(model: nn.Module, cfg: RegionConfig) -> RegionPlan:
    """Freeze the model, then make the region (and the parts the config asks for) trainable.

    Strategy `none` trains the projector only (alignment); `all` with mode `full` trains every LLM
    parameter, with mode `lora` it puts LoRA on every layer. Mode `full` trains every parameter of the
    region layers; mode `lora` injects LoRA (B = 0, so the output is unchanged) on their 7 linears and
    trains only the adapters. Vision, projector, embeddings, norms and lm_head follow their flags.

    Args:
        model: a VisionLanguageModel with `vision`, `projector` and `llm` (`llm.model.layers`).
        cfg: the region config.

    Returns:
        The RegionPlan (layers, mode, trainable names per component).

    Raises:
        ValueError: bad strategy / mode / count, LoRA already present on other layers, nothing to train.
    """
    if cfg.mode not in MODES:
        raise ValueError(f"unknown region mode {cfg.mode!r}; valid modes: {', '.join(MODES)}")
    num_layers = len(vlm_decoder_layers(model))
    layers = region_layers_for(cfg, num_layers)
    existing = lora_layers(model)
    if existing:
        # A second stage in the same process: reuse matching adapters, refuse to mix regions silently.
        old = getattr(model.llm, "peft_config", {}).get(ADAPTER_NAME)
        same_rank = old is None or (old.r, old.lora_alpha) == (cfg.lora.r, cfg.lora.alpha)
        if cfg.mode != "lora" or existing != layers or not same_rank:
            raise ValueError(
                f"the model already has LoRA adapters on layers {existing}; call merge_lora(model) before "
                f"applying a {cfg.mode} region on layers {layers} "
                f"(LoRA r={cfg.lora.r}, alpha={cfg.lora.alpha})"
            )
        log.info("reusing the LoRA adapters already on layers %s", existing)
    elif cfg.mode == "lora" and layers:
        inject_lora(model, layers, cfg.lora)
    lora_modules = lora_module_names(model)

    names = trainable_names(model, cfg, layers)
    if not names:
        raise ValueError(f"region config trains nothing (strategy {cfg.strategy!r}, all train_* flags off)")
    set_trainable(model, names)  # freezes everything else

    plan = RegionPlan(
        strategy=cfg.strategy,
        mode=cfg.mode,
        num_layers=num_layers,
        layers=layers,
        trainable={c: [] for c in PLAN_COMPONENTS},
        tied_lm_head=has_tied_lm_head(model),
        lora_modules=lora_modules,
    )
    for name, _ in model.named_parameters():
        if name in names:
            plan.trainable[plan_component(name, layers)].append(name)
    _log_plan(model, cfg, plan)
    return plan


def _log_plan(model: nn.Module, cfg: RegionConfig, plan: RegionPlan) -> None:
    if plan.tied_lm_head and cfg.train_embeddings != cfg.train_lm_head and cfg.strategy != "all":
        log.warning(
            "lm_head is tied to the input embeddings: train_embeddings=%s and train_lm_head=%s act on one "
            "tensor, which trains",
            cfg.train_embeddings,
            cfg.train_lm_head,
        )
    counts = {n: p.numel() for n, p in model.named_parameters()}
    parts = ", ".join(
        f"{c} {sum(counts[n] for n in names):,}" for c, names in plan.trainable.items() if names
    )
    log.info(
        "region: strategy=%s mode=%s layers=%s (%d of %d)%s; trainable params: %s",
        plan.strategy,
        plan.mode,
        plan.layers,
        len(plan.layers),
        plan.num_layers,
        f", LoRA r={cfg.lora.r} alpha={cfg.lora.alpha} on {len(plan.lora_modules)} linears"
        if plan.lora_modules
        else "",
        parts,
    )
