"""`python -m vregion.cli` (what the deepspeed launcher and SLURM ranks run)."""

from . import run

run()
