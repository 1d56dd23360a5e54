"""Language-model loading: HF folders, hub ids, GGUF files (exported once to an HF folder), tiny random LMs.

Whatever the source, the result is a plain Hugging Face causal LM (decoder layers at `model.model.layers`)
and its tokenizer, so the rest of vregion never cares where the weights came from.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma3TextConfig,
    GenerationConfig,
    LlamaConfig,
    PreTrainedModel,
    Qwen2Config,
)

from vregion.config import LLMConfig
from vregion.data.tokenizer import BYTE_VOCAB_SIZE, build_byte_tokenizer

DEFAULT_GGUF_CACHE = "~/.cache/vregion/gguf"


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


# Tiny defaults shared by all families: small enough for CPU unit tests, with GQA (4 heads, 2 kv heads)
# so the key/value repetition path is exercised. The vocab is padded to a multiple of 64 like real LMs.
TINY_LLM_DEFAULTS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=_round_up(BYTE_VOCAB_SIZE, 64),
    max_position_embeddings=512,
)


def _tiny_gemma3_config(overrides: dict) -> Gemma3TextConfig:
    """Gemma3 text config whose sliding window (4) is shorter than test sequences, so both layer kinds differ."""
    params = TINY_LLM_DEFAULTS | dict(num_hidden_layers=4, head_dim=16, query_pre_attn_scalar=16, sliding_window=4)
    params |= overrides
    if "layer_types" not in params:
        # Alternate sliding / full so every test sees both masks and both rotary bases.
        params["layer_types"] = [
            "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(params["num_hidden_layers"])
        ]
    return Gemma3TextConfig(**params)


TINY_FAMILIES = {
    "llama": lambda overrides: LlamaConfig(**(TINY_LLM_DEFAULTS | overrides)),
    "qwen2": lambda overrides: Qwen2Config(**(TINY_LLM_DEFAULTS | overrides)),
    "gemma3": _tiny_gemma3_config,
}


def build_tiny_llm(
    tiny: dict, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32, tokenizer_path: str | None = None
) -> tuple[PreTrainedModel, Any]:
    """A random-weight LM of `tiny['family']` with the byte tokenizer (or the one at `tokenizer_path`, whose size
    sets the vocabulary unless `tiny` sets it); weights depend only on torch's seed."""
    overrides = dict(tiny)
    family = overrides.pop("family", "llama")
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny LLM family '{family}'; valid: {', '.join(sorted(TINY_FAMILIES))}")
    if tokenizer_path is None:
        tokenizer = build_byte_tokenizer()
    else:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        overrides.setdefault("vocab_size", _round_up(len(tokenizer), 64))
    ids = dict(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = TINY_FAMILIES[family](ids | overrides)
    if config.vocab_size < len(tokenizer):
        raise ValueError(f"tiny vocab_size {config.vocab_size} < tokenizer size {len(tokenizer)}")
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    return model.to(dtype), tokenizer


def _is_local(path: str) -> bool:
    """Hub ids look like `org/name`; anything absolute, relative-explicit, existing or .gguf is a local path."""
    return path.startswith(("/", ".", "~")) or path.endswith(".gguf") or os.path.exists(path)


def _gguf_cache_folder(gguf_path: Path, cache_dir: str | None) -> Path:
    """`<cache>/<name>-<size>-<hash of mtime>`: a rewritten GGUF gets a new export instead of a stale one."""
    stat = gguf_path.stat()
    stamp = hashlib.sha1(str(stat.st_mtime_ns).encode()).hexdigest()[:10]
    root = Path(os.path.expanduser(cache_dir or DEFAULT_GGUF_CACHE))
    return root / f"{gguf_path.stem}-{stat.st_size}-{stamp}"


STALE_EXPORT_S = 3600  # an export takes minutes; a temporary folder this old was left by a crash


def _remove_stale_exports(target: Path) -> None:
    for tmp in target.parent.glob(f".{target.name}.*"):
        if time.time() - tmp.stat().st_mtime > STALE_EXPORT_S:
            shutil.rmtree(tmp, ignore_errors=True)


def export_gguf_to_hf(gguf_path: str | Path, target: str | Path,
                      progress: Optional[Callable[[str], None]] = None) -> Path:
    """Dequantise a GGUF causal LM once and save it with its tokenizer as a plain HF folder at `target`.

    fp32 keeps the dequantised values exact (the requested dtype is applied when loading the export). The
    folder is written under a temporary name and renamed into place, so an interrupted export or a
    concurrent rank never leaves a half-written folder that later loads would trust; temporary folders a
    crash left over an hour ago are removed. `progress` (e.g. print) is told when the export starts and ends.
    """
    gguf_path, target = Path(gguf_path).expanduser().resolve(), Path(target).expanduser()
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_exports(target)
    if progress:
        progress(f"dequantising {gguf_path.name} with transformers (once; ~20-100 s)")
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # The weights are dense now, but the model still carries the GGUF quantizer, which makes
    # save_pretrained refuse ("quantized with gguf and is not serializable"): drop it and its config entry.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is readable like any other folder
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.exists():  # a real failure, not another process winning the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        progress(f"exported {target} in {time.perf_counter() - start:.0f} s")
    return target


def export_gguf(gguf_path: str | Path, cache_dir: str | None = None) -> Path:
    """The cached HF folder of a GGUF file (keyed by its name, size and mtime), exported on first use."""
    gguf_path = Path(gguf_path).expanduser().resolve()
    return export_gguf_to_hf(gguf_path, _gguf_cache_folder(gguf_path, cache_dir))


def _resolve_source(cfg: LLMConfig) -> tuple[str, dict]:
    """(folder or hub id to load from, extra from_pretrained kwargs), exporting local GGUF files first."""
    path = cfg.path
    if path is None:
        raise ValueError("model.llm needs either `path` (HF folder, hub id or .gguf file) or `tiny`")
    if _is_local(path):
        local = Path(path).expanduser()
        if not local.exists():
            raise FileNotFoundError(f"model.llm.path does not exist: {local}")
        if cfg.gguf_file is not None:
            local = local / cfg.gguf_file
            if not local.exists():
                raise FileNotFoundError(f"model.llm.gguf_file does not exist: {local}")
        if local.suffix == ".gguf":
            return str(export_gguf(local, cfg.cache_dir)), {}
        return str(local), {}
    # A hub GGUF is cached by the hub client itself; transformers dequantises it on every load.
    return path, ({"gguf_file": cfg.gguf_file} if cfg.gguf_file else {})


def _from_config_folder(source: str, attn_implementation: str, dtype: torch.dtype) -> PreTrainedModel:
    """The architecture of an HF folder's config.json with random weights, and its generation_config.json."""
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source), dtype=dtype,
                                             attn_implementation=attn_implementation)
    if (Path(source) / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(source)
    return model


def build_llm(cfg: LLMConfig, dtype: torch.dtype = torch.float32, weights: bool = True) -> tuple[PreTrainedModel, Any]:
    """Build the causal LM and tokenizer described by cfg.

    Args:
        cfg: path (HF folder, hub id, .gguf file, or folder + gguf_file) or tiny (random weights).
        dtype: parameter dtype of the returned model.
        weights: False builds a local folder's architecture from its config.json with random weights, for a
            caller that loads every weight next (a pruned checkpoint's `llm/` holds no weights).
    Returns:
        (model, tokenizer): an HF `*ForCausalLM` and its tokenizer (pad token set, falling back to unk/eos).
    """
    if cfg.tiny is not None:
        return build_tiny_llm(cfg.tiny, cfg.attn_implementation, dtype, cfg.tokenizer)
    source, extra = _resolve_source(cfg)
    if weights or extra:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, attn_implementation=cfg.attn_implementation, **extra
        )
    else:
        model = _from_config_folder(source, cfg.attn_implementation, dtype)
    tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    if tokenizer.pad_token is None:
        # Llama-family tokenizers ship without a pad token; batching needs one (labels mask it anyway).
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return model, tokenizer
