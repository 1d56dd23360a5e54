"""`vregion bench`: the analytic cost model (`plan`, for `--plan`) and the measured benchmark (`run`), one Variant."""
