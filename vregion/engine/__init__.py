"""Training engine: DeepSpeed set-up, the training loop, checkpoints and metrics (owns all distribution)."""
