"""Training engine: DeepSpeed set-up, the training loop, checkpoints and metrics (process groups: vregion.distributed)."""
