"""`vregion bench`: the analytic cost model (`plan`, `--plan`) and the measured benchmark (`run`), one `Variant` type."""
