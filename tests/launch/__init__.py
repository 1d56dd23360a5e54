"""Launch scripts: local.sh, and train.sbatch on a real two-node SLURM cluster."""
