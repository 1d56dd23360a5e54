"""The visual-region replication (`vregion replicate`): stage 1, stage-2 region variants, compression schedules on
the best region, `vregion eval` of each, and a report comparing the results with the papers' claims."""

from vregion.replicate.run import run_replication
from vregion.replicate.variants import DEFAULT_VARIANTS, parse_variant

__all__ = ["DEFAULT_VARIANTS", "parse_variant", "run_replication"]
