"""The compared variants of `vregion bench` and `--plan`: a region setting by name, with optional pooling.

A variant string is `NAME[@K/S][+DATA]`: NAME one of VARIANT_REGIONS (full, region, region-lora, projector,
hf-trainer: `full` trained as Hugging Face LLaVA by transformers.Trainer, see `bench.hf_trainer`),
K/S a pooling setting in `vregion.compress.parse_pooling`'s form (K on the 32-layer reference scale, scaled
to the model's depth where it is applied), DATA how micro-batches are formed: `packed` (data.packing) or
`grouped` (data.group_by_length); without it, the config's own data settings. `region@2/8+packed` trains
the configured region, pools the visual tokens with stride 8 before layer 2 of 32, on packed rows.
(Not the replication's stage-2 `RegionVariant`s, uniform-8 etc.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from vregion.compress.schedule import parse_pooling
from vregion.config import RegionConfig, from_dict, to_dict

# Region overrides of each variant name, applied over the config's own region section.
VARIANT_REGIONS = {
    "full": {"strategy": "all", "mode": "full"},
    "region": {"strategy": "uniform", "mode": "full"},
    "region-lora": {"strategy": "uniform", "mode": "lora"},
    "projector": {"strategy": "none"},
    "hf-trainer": {"strategy": "all", "mode": "full"},  # full's trainable set, in transformers.Trainer
}
HF_TRAINER = "hf-trainer"
# How a variant's micro-batches are formed: data-section overrides (None: the config's own data settings).
DATA_MODES = {None: {}, "padded": {"packing": False, "group_by_length": 0}, "packed": {"packing": True},
              "grouped": {"packing": False}}
GROUP_WINDOW = 8  # micro-batches per length-grouping window for `+grouped` when the config sets none


@dataclass(frozen=True)
class Variant:
    """One compared setting: its name as written, a region config and optional pooling (K of 32, stride S)."""

    name: str
    region: RegionConfig
    pooling: Optional[tuple[int, int]] = None
    data: Optional[str] = None  # a DATA_MODES key

    @property
    def base(self) -> str:
        """The region setting's name without pooling or data mode (`region-lora@2/8+packed` -> `region-lora`):
        variants with the same base train the same parameters, so the bench runs them on one engine."""
        return self.name.partition("+")[0].partition("@")[0]

    def data_overrides(self, group_by_length: int) -> dict:
        """The data-section fields this variant sets (`group_by_length`: the config's own value); `hf-trainer`
        always trains on padded rows."""
        overrides = dict(DATA_MODES[self.data])
        if self.base == HF_TRAINER:
            overrides["packing"] = False
        if self.data == "grouped":
            overrides["group_by_length"] = group_by_length or GROUP_WINDOW
        return overrides


def parse_variant(spec: str, region: RegionConfig) -> Variant:
    """`region-lora@2/8+packed` -> `region` with VARIANT_REGIONS' overrides, pooling at K=2 of 32 with
    stride 8, packed rows.

    Raises:
        ValueError: an unknown NAME or DATA (listing the valid ones), a malformed / out-of-range K/S, or pooling
            or packed rows on `hf-trainer` (Hugging Face LLaVA has neither).
    """
    head, plus, data = spec.partition("+")
    if plus and data not in DATA_MODES:
        valid = ", ".join(m for m in DATA_MODES if m)
        raise ValueError(f"unknown data mode {data!r} in {spec!r}; valid: +{', +'.join(valid.split(', '))}")
    name, _, pooling = head.partition("@")
    if name not in VARIANT_REGIONS:
        raise ValueError(f"unknown variant {name!r} in {spec!r}; valid: {', '.join(VARIANT_REGIONS)} "
                         "(+ optional @K/S and +packed / +grouped)")
    if name == HF_TRAINER and (pooling or data == "packed"):
        raise ValueError(f"variant {spec!r}: {HF_TRAINER} trains Hugging Face's LlavaForConditionalGeneration, "
                         "which has no visual-token pooling (@K/S) and no packed rows (+packed); use plain "
                         f"{HF_TRAINER} (or {HF_TRAINER}+grouped) and compare with the vregion variants")
    overrides = {**to_dict(region), **VARIANT_REGIONS[name]}  # flat keys: a shallow merge is enough
    k, s = parse_pooling(pooling, f"variant {spec!r}") if pooling else (None, None)
    return Variant(spec, from_dict(RegionConfig, overrides, "region"), None if k is None else (k, s), data or None)
