"""What one node reports in a preflight check: software versions, accelerators, and what it sees of the run.

Every value is a short string, so that nodes compare by equality and a table shows them as they are. Nothing
here imports the training stack: versions come from package metadata (fast, and a broken install still
reports), and the vregion source is fingerprinted by a hash of its files, which catches a node that imports
another copy of the code even where there is no git checkout.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import vregion
from vregion.config import Config, to_dict

PACKAGES = ("torch", "deepspeed", "transformers")
# Keys every node must agree on; the others (node, hostname, executable) are shown to say who answered.
COMPARED = ("python", *PACKAGES, "vregion", "accelerators", "config", "shards", "output_dir")
SHOWN = ("hostname", "executable")


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def vregion_revision() -> str:
    """vregion's version, git revision (where the package is a checkout) and a hash of its source files."""
    package = Path(vregion.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    try:
        rev = subprocess.run(["git", "-C", str(package), "rev-parse", "--short=10", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip() or "no git"
    except (OSError, subprocess.SubprocessError):
        rev = "no git"
    return f"{vregion.__version__} {rev} src {digest.hexdigest()[:10]}"


def accelerators() -> str:
    """The GPUs this process can use (after CUDA_VISIBLE_DEVICES), as '<count> x <name>' or 'none (CPU)'."""
    import torch  # only here: importing torch takes a second or two

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return "none (CPU)"
    names = sorted({torch.cuda.get_device_name(i) for i in range(count)})
    return f"{count} x {', '.join(names)}"


def config_digest(cfg: Config) -> str:
    """A hash of the loaded config (file and overrides applied): equal exactly when every value is."""
    return hashlib.sha256(repr(to_dict(cfg)).encode()).hexdigest()[:12]


def _shard_specs(cfg: Config) -> dict[str, str]:
    specs = {"data.train_shards": cfg.data.train_shards, "data.eval_shards": cfg.data.eval_shards,
             "eval.vqa_shards": cfg.eval.vqa_shards, "eval.caption_shards": cfg.eval.caption_shards}
    return {key: str(value) for key, value in specs.items() if value}


def shards_summary(cfg: Config) -> str:
    """The shard files the config names, as this node sees them: count, bytes and a hash of names and sizes.

    Contents are not read (terabytes on a real run); a file of another size, a missing shard or an
    unmounted folder all change the summary.
    """
    from vregion.data.shards import resolve_shards

    specs = _shard_specs(cfg)
    if not specs:
        return "none named (synthetic data)"
    digest, files, size, problems = hashlib.sha256(), 0, 0, []
    for key, spec in sorted(specs.items()):
        if spec.startswith("asset:"):
            digest.update(spec.encode())  # prepared on first use by the ranks; the name is what nodes share
            continue
        try:
            paths = resolve_shards(spec)
        except (OSError, ValueError) as e:
            problems.append(f"{key}: {e}")
            continue
        for path in paths:
            if "://" in path or path.startswith("pipe:"):
                digest.update(path.encode())
                continue
            n = Path(path).stat().st_size
            digest.update(f"{path}\0{n}\0".encode())
            files, size = files + 1, size + n
    if problems:
        return "MISSING " + "; ".join(problems)
    return f"{files} files, {size} bytes, {digest.hexdigest()[:10]}"


def node_name() -> str:
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def node_facts(cfg: Config | None) -> dict[str, str]:
    """Everything this node reports except `output_dir`, which needs the other nodes (see preflight)."""
    facts = {
        "node": node_name(),
        "hostname": socket.gethostname(),
        "executable": sys.executable,
        "python": platform.python_version(),
        **{name: package_version(name) for name in PACKAGES},
        "vregion": vregion_revision(),
        "accelerators": accelerators(),
    }
    if cfg is not None:
        facts["config"] = config_digest(cfg)
        facts["shards"] = shards_summary(cfg)
    return facts
