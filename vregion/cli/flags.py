"""Flags and checks more than one verb shares: inference compression and answer decoding."""

from __future__ import annotations

import argparse

from vregion.config import ConfigError


def check_compress(value: str) -> None:
    """A --compress value (auto | none | K/S), refused with exit 2 before any model loads."""
    from vregion.compress.from_config import inference_setting

    if value != "auto":
        try:
            inference_setting(value, "--compress")
        except ValueError as e:
            raise ConfigError(f"{e}; valid: auto (the checkpoint's own setting) | none | K/S") from None


def checked_sampling(args: argparse.Namespace):
    """The decoding flags as a checked Sampling (exit 2 on a bad value)."""
    from vregion.chat import ChatError, Sampling

    try:
        return Sampling(args.max_new_tokens, args.temperature, args.top_p).check()
    except ChatError as e:
        raise ConfigError(str(e)) from None


def add_decoding_flags(parser: argparse.ArgumentParser) -> None:
    """The flags `chat` and `serve` share: inference compression and how answers are decoded."""
    parser.add_argument("--compress", default="auto", help="visual-token pooling: auto (the checkpoint's "
                        "compress.inference) | none | K/S (K of 32 layers, scaled to the model), as in eval")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit in tokens")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the answers eval scores); "
                        "> 0: sample at this temperature")
    parser.add_argument("--top-p", type=float, default=1.0, help="sampling: nucleus probability mass kept")
    parser.add_argument("--seed", type=int, default=0, help="sampling: torch seed set once at start")
