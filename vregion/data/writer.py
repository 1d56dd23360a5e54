"""Write image-conversation samples to webdataset tar shards with an index.json of sample counts."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path
from typing import Iterable, Iterator

import webdataset as wds
from tqdm import tqdm

from .templates import IMAGE_TAG

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"

# Magic numbers of the formats PIL reads; the stored extension says what the bytes are.
_MAGIC = [
    (b"\xff\xd8\xff", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
]


def image_extension(data: bytes) -> str:
    """File extension of encoded image bytes from their magic number ("bin" when unknown)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    return "bin"


def png_bytes(image) -> bytes:
    """A PIL image as PNG bytes, without metadata: the same pixels always give the same bytes."""
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def dialogue_sample(sample_id: str, turns: list[tuple[str, str]], png: bytes) -> dict:
    """A sample for `write_shards`: the image, then (question, answer) turns about it; the image opens the
    first question."""
    conversations = []
    for k, (question, answer) in enumerate(turns):
        conversations.append({"from": "human", "value": f"{IMAGE_TAG}\n{question}" if k == 0 else question})
        conversations.append({"from": "gpt", "value": answer})
    return {"id": sample_id, "conversations": conversations, "images": [png]}


def question_sample(sample_id: str, question: str, answer: str, png: bytes) -> dict:
    """A one-turn sample for `write_shards`: the image, then `question`; `answer` is the assistant's turn."""
    return dialogue_sample(sample_id, [(question, answer)], png)


def _safe_key(sample_id: str) -> str:
    # webdataset splits a member name at its first dot and treats "/" as folders: keep keys plain
    return re.sub(r"[^A-Za-z0-9_-]", "_", sample_id) or "sample"


def write_shards(
    samples: Iterable[dict],
    out_dir: str | Path,
    samples_per_shard: int,
    prefix: str = "shard",
    total: int | None = None,
) -> dict:
    """Write samples to `out_dir/{prefix}-000000.tar`, ... and `out_dir/index.json`.

    Args:
        samples: dicts {"id": str, "conversations": [...], "images": [bytes, ...]} (images may be empty);
            an optional "image_exts": [str, ...] gives the images' original extensions, otherwise they
            are read from the bytes' magic numbers.
        samples_per_shard: samples per tar file.
        total: number of samples, for the progress bar when `samples` has no len().

    Returns:
        The index: {"shards": [{"name": "shard-000000.tar", "samples": n}, ...], "total": N}.
        Each tar member group holds `__key__` (the id made tar-safe and unique), `json`
        ({"id", "conversations", "num_images"}) and `img0.<ext>`, `img1.<ext>`, ... (original bytes).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    seen: set[str] = set()
    total = len(samples) if total is None and hasattr(samples, "__len__") else total
    pattern = str(out_dir / f"{prefix}-%06d.tar")
    # mtime fixed so the same samples give byte-identical shards
    with wds.ShardWriter(pattern, maxcount=samples_per_shard, verbose=0, encoder=False, mtime=0) as writer:
        for sample in tqdm(samples, total=total, desc=f"writing {out_dir.name}", unit="sample"):
            writer.write(_encode(sample, seen))
            name = Path(writer.fname).name
            counts[name] = counts.get(name, 0) + 1
    if not counts:  # ShardWriter opens its first file eagerly; do not leave an empty shard behind
        Path(pattern % 0).unlink(missing_ok=True)
    index = {"shards": [{"name": n, "samples": c} for n, c in counts.items()], "total": sum(counts.values())}
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=1))
    return index


def _encode(sample: dict, seen: set[str]) -> dict:
    """The tar members of one sample, all as bytes."""
    images = list(sample.get("images") or [])
    exts = sample.get("image_exts") or [image_extension(data) for data in images]
    key = base = _safe_key(str(sample["id"]))
    n = 1
    while key in seen:  # consecutive equal keys would merge two samples when read back
        key, n = f"{base}_{n}", n + 1
    seen.add(key)
    meta = {"id": sample["id"], "conversations": sample["conversations"], "num_images": len(images)}
    members = {"__key__": key, "json": json.dumps(meta).encode("utf-8")}
    for i, (data, ext) in enumerate(zip(images, exts)):
        members[f"img{i}.{ext.lower().lstrip('.')}"] = bytes(data)
    return members


def pack_llava_json(
    json_path: str | Path, image_folder: str | Path, out_dir: str | Path, samples_per_shard: int = 1000
) -> dict:
    """Convert a LLaVA-format JSON list ({"id", "image": path | [paths] | absent, "conversations"}) to shards.

    Samples whose image files are missing, whose `<image>` tags do not match their images in number (training
    would skip them every epoch), or whose entry is unusable are skipped and counted, never fatal.

    Returns:
        {"entries": read, "written": N, "missing_images": files not found, "skipped_missing": samples
        skipped for them, "skipped_image_mismatch": samples whose tag count is not their image count,
        "skipped_malformed": entries without a usable id/conversations, "missing_examples": first few
        missing paths, "mismatch_examples": first few such sample ids, "shards": [...], "out_dir": str}.
    """
    entries = json.loads(Path(json_path).read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{json_path}: expected a JSON list of samples")
    stats = {"missing_images": 0, "skipped_missing": 0, "skipped_image_mismatch": 0, "skipped_malformed": 0,
             "missing_examples": [], "mismatch_examples": []}
    samples = _llava_samples(entries, Path(image_folder), stats)
    index = write_shards(samples, out_dir, samples_per_shard, total=len(entries))
    summary = {"entries": len(entries), "written": index["total"], **stats, "shards": index["shards"]}
    summary["out_dir"] = str(out_dir)
    if stats["missing_images"]:
        log.warning(
            "pack_llava_json: %d image files missing, %d samples skipped (e.g. %s)",
            stats["missing_images"], stats["skipped_missing"], stats["missing_examples"][:3],
        )
    if stats["skipped_image_mismatch"]:
        log.warning("pack_llava_json: %d samples skipped: their %s tags do not match their images (e.g. ids %s)",
                    stats["skipped_image_mismatch"], IMAGE_TAG, stats["mismatch_examples"][:3])
    return summary


def _llava_samples(entries: list, image_folder: Path, stats: dict) -> Iterator[dict]:
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("conversations"), list):
            stats["skipped_malformed"] += 1
            continue
        paths = entry.get("image") or []
        paths = [paths] if isinstance(paths, str) else list(paths)
        tags = sum(t["value"].count(IMAGE_TAG) for t in entry["conversations"]
                   if isinstance(t, dict) and isinstance(t.get("value"), str))
        if tags != len(paths):
            stats["skipped_image_mismatch"] += 1
            if len(stats["mismatch_examples"]) < 10:
                stats["mismatch_examples"].append(str(entry.get("id", i)))
            continue
        missing = [p for p in paths if not (image_folder / p).is_file()]
        if missing:
            stats["missing_images"] += len(missing)
            stats["skipped_missing"] += 1
            stats["missing_examples"] += missing[: max(0, 10 - len(stats["missing_examples"]))]
            continue
        yield {
            "id": str(entry.get("id", i)),
            "conversations": entry["conversations"],
            "images": [(image_folder / p).read_bytes() for p in paths],
            "image_exts": [Path(p).suffix.lstrip(".").lower() or "bin" for p in paths],
        }
