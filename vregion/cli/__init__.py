"""`vregion` command line: parse, build, call. Every hyperparameter lives in the config, not here.

One module per verb family, each adding its parsers with `add_commands(sub)` and holding handlers that only
parse, build and call a function of the package that does the work: training.py (train, doctor, transfer,
transfer-demo, replicate, bench), data.py (data ...), checkpoints.py (eval, analyze, prune, convert, export,
import), chat.py (chat, serve); flags.py holds what several verbs share.
"""

from __future__ import annotations

import argparse
import sys

from vregion.config import ConfigError, resolve_config_path
from vregion.errors import RunDirectoryError

from . import chat, checkpoints, data, training
from .training import PREEMPTED_EXIT

__all__ = ["PREEMPTED_EXIT", "build_parser", "main", "parse_args", "resolve_config_path", "run"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vregion", description=__doc__.split("\n")[0])
    # The deepspeed launcher passes --local_rank before the sub-command; LOCAL_RANK in the env is what is used.
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    for family in (training, data, checkpoints, chat):  # the order `vregion --help` lists them in
        family.add_commands(sub)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with `key=value` overrides accepted anywhere after the config, also after flags
    (argparse alone ends the `overrides` positional at the first flag and rejects the rest)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "overrides") or any(a.startswith("-") or "=" not in a for a in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, RunDirectoryError) as e:
        print(f"vregion: config error: {e}", file=sys.stderr)
        return 2


def run() -> None:
    """The `vregion` program: `main`, then leave the process group before the interpreter exits.

    `main` itself leaves it alone, so code that calls it in-process (tests, notebooks) keeps its group.
    """
    code = main()
    # Only commands that set up torch.distributed imported this module; the others stay free of torch.
    distributed = sys.modules.get("vregion.distributed")
    if distributed is not None:
        distributed.shutdown(wait_for_peers=code == 0)  # a failed rank must not wait for the others
    sys.exit(code)
