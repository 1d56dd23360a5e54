"""`python -m vregion.launch.paths CONFIG [key=value ...]` prints the run directory, absolute.

train.sbatch puts the batch output and per-rank logs under it (not in the submit folder, which is usually the
repository), so it needs the directory the ranks will use before any of them starts.
"""

from __future__ import annotations

import sys
from pathlib import Path

from vregion.config import ConfigError, load_config, resolve_config_path


def run_directory(config: str, overrides: list[str]) -> Path:
    """`run.output_dir` of CONFIG with OVERRIDES, resolved against the current folder as the ranks resolve it."""
    cfg = load_config(resolve_config_path(config), overrides)
    return Path(cfg.run.output_dir).expanduser().resolve()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m vregion.launch.paths CONFIG [key=value ...]", file=sys.stderr)
        return 2
    try:
        print(run_directory(argv[0], argv[1:]))
    except ConfigError as e:
        print(f"vregion: config error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
