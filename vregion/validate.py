"""Registry-aware config checks, run on every resolved stage before any run directory or model exists.

`vregion.config` (the bottom layer) checks types, fixed choices and ranges. The ids of vision backbones,
projectors, region strategies, compression schedules and chat templates belong to the registries above
it, so they are checked here against those registries: one source of truth, and a new registry entry is
valid in configs at once. The registries are imported inside the functions, so importing this module
stays as light as `vregion.config` and bad fixed values fail before torch loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from vregion.config import Config, ConfigError, load_config


def _valid(values: Iterable) -> str:
    return " | ".join(map(str, values))


def _model_errors(cfg: Config) -> list[str]:
    """model.*: backbone, projector, chat template and tiny LLM family ids (not overridable per stage)."""
    from vregion.data.templates import TEMPLATES
    from vregion.models.backbones import BACKBONES
    from vregion.models.llm import TINY_FAMILIES
    from vregion.models.projectors import PROJECTORS

    m, errors = cfg.model, []
    if m.vision.type not in BACKBONES:
        errors.append(f"model.vision.type: {m.vision.type!r} is not valid; valid: {_valid(BACKBONES)}")
    if m.projector.type not in PROJECTORS:
        errors.append(f"model.projector.type: {m.projector.type!r} is not valid; valid: {_valid(PROJECTORS)}")
    elif m.projector.hidden_size is not None and m.projector.type != "mlp2x_gelu":
        errors.append(f"model.projector.hidden_size: applies to mlp2x_gelu only, not {m.projector.type!r}")
    if m.template not in TEMPLATES:
        errors.append(f"model.template: {m.template!r} is not valid; valid: {_valid(TEMPLATES)}")
    family = (m.llm.tiny or {}).get("family", "llama")
    if family not in TINY_FAMILIES:
        errors.append(f"model.llm.tiny.family: {family!r} is not valid; valid: {_valid(TINY_FAMILIES)}")
    return errors


def _region_errors(cfg: Config, key: Callable[[str], str]) -> list[str]:
    """region.*: the strategy id, and what `list` and `metric` need."""
    from vregion.region.apply import REGION_STRATEGIES
    from vregion.region.ranking import METRICS

    r, errors = cfg.region, []
    if r.strategy not in REGION_STRATEGIES:
        errors.append(f"{key('region.strategy')}: {r.strategy!r} is not valid; valid: {_valid(REGION_STRATEGIES)}")
    elif r.strategy == "list" and not r.layers:
        errors.append(f"{key('region.layers')}: strategy 'list' needs a non-empty list of 0-based layer indices")
    elif r.strategy == "metric" and r.scores is None:
        errors.append(f"{key('region.scores')}: strategy 'metric' needs layers.json from `vregion analyze`")
    if r.metric not in METRICS:
        errors.append(f"{key('region.metric')}: {r.metric!r} is not valid; valid: {_valid(METRICS)}")
    return errors


def _compress_errors(cfg: Config, key: Callable[[str], str]) -> list[str]:
    """compress.*: schedule preset or custom phases, inference setting, pooling implementation."""
    from vregion.compress.dispatch import IMPLS
    from vregion.compress.from_config import build_schedule, inference_setting
    from vregion.compress.schedule import PRESETS

    c, errors = cfg.compress, []
    try:
        build_schedule(c)
    except (ValueError, TypeError) as e:  # TypeError: a phase that is not a sequence, e.g. [3]
        shown = "an unknown preset" if isinstance(c.schedule, str) else str(e)
        errors.append(f"{key('compress.schedule')}: {c.schedule!r} is not valid ({shown}); valid: none | "
                      f"{_valid(PRESETS)} | a list of [K, S, fraction] (K < 32, S >= 1, fractions sum to 1)")
    if c.inference not in ("auto", "none"):
        try:
            inference_setting(c.inference, key("compress.inference"))
        except ValueError as e:
            errors.append(f"{e}; valid: auto | none | K/S (K < 32, S >= 1)")
    if c.impl not in IMPLS:
        errors.append(f"{key('compress.impl')}: {c.impl!r} is not valid; valid: {_valid(IMPLS)}")
    return errors


def _packing_errors(cfg: Config, key: Callable[[str], str]) -> list[str]:
    """data.packing packs the samples of one micro-batch (train.micro_batch_size counts samples)."""
    if cfg.data.packing and cfg.train.micro_batch_size < 2:
        return [f"{key('data.packing')}: packs the samples of one micro-batch into rows, but "
                f"{key('train.micro_batch_size')} is {cfg.train.micro_batch_size}: nothing to pack; raise it "
                "(packed rows hold about max_length tokens, so larger micro-batches cost little more memory)"]
    return []


def validate_config(cfg: Config) -> list[Config]:
    """Check the registry ids of the top-level sections and of every resolved stage.

    Returns:
        The resolved stages (`cfg.stage_configs()`), so callers need not resolve them twice.
    Raises:
        ConfigError: every problem found, one a line, each naming its key (`stages.1.region.strategy` when
            the stage sets it), the bad value and the valid ones.
    """
    stages = cfg.stage_configs()
    errors = _model_errors(cfg)
    # The top level is every stage's default, so a bad default is reported even where each stage overrides it.
    checks = [(cfg, lambda k: k)] + [(s, lambda k, i=i: cfg.stage_key(i, k)) for i, s in enumerate(stages)]
    for stage, key in checks:
        errors += _region_errors(stage, key) + _compress_errors(stage, key) + _packing_errors(stage, key)
    errors = list(dict.fromkeys(errors))  # a top-level error repeats in every stage that inherits it
    if errors:
        raise ConfigError(errors[0] if len(errors) == 1 else "\n  " + "\n  ".join(errors))
    return stages


def load_and_validate(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """`load_config`, then `validate_config`: what every CLI verb that runs a config calls first."""
    cfg = load_config(path, overrides)
    validate_config(cfg)
    return cfg
