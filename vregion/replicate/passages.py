"""The replication's plain-text set for text perplexity: paragraphs of the licence texts every Debian system has.

Why these: `/usr/share/common-licenses` ships in Debian's `base-files` (an Essential package, so present on every
Debian/Ubuntu machine, offline), it is ordinary English prose, and none of it is in the demo's training data
(emoji names and "What item is this?"), so a rise in its perplexity measures language ability lost by tuning.
The LLM has very likely seen these texts in pre-training; that makes absolute perplexities low, but a change
between the stage-1 checkpoint (the untouched LLM) and a stage-2 checkpoint is still forgetting.
"""

from __future__ import annotations

import re
from pathlib import Path

LICENSE_DIR = Path("/usr/share/common-licenses")
# Fixed order, so every run of the replication scores the same passages; together ~290 paragraphs of >= 20 words.
LICENSE_FILES = ("GPL-3", "Apache-2.0", "MPL-2.0", "LGPL-2.1", "GFDL-1.3", "Artistic")
MIN_WORDS = 20  # headings, short clauses and the licence's address lines are not prose


def paragraphs(text: str, min_words: int = MIN_WORDS) -> list[str]:
    """Blank-line separated paragraphs, each joined into one line, keeping those of >= min_words words."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        line = " ".join(block.split())
        if len(line.split()) >= min_words:
            out.append(line)
    return out


def write_passages(out_file: str | Path, source_dir: str | Path = LICENSE_DIR,
                   files: tuple[str, ...] = LICENSE_FILES) -> Path:
    """Write one paragraph a line (the format `vregion eval --text` reads) from the licence texts found.

    Raises:
        FileNotFoundError: none of `files` exists in `source_dir` (not a Debian system: pass --text FILE).
    """
    source_dir = Path(source_dir)
    found = [source_dir / f for f in files if (source_dir / f).is_file()]
    if not found:
        raise FileNotFoundError(f"no licence texts in {source_dir} (Debian base-files); pass --text FILE, "
                                "one passage a line")
    lines = [p for f in found for p in paragraphs(f.read_text(encoding="utf-8", errors="replace"))]
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out_file
