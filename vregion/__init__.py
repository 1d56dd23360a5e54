"""vregion: train LLaVA-style vision-language models cheaply (visual region, compression, VPG transfer)."""

__version__ = "0.1.0"
