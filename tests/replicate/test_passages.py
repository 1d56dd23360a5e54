"""Text-perplexity passages: prose paragraphs of the Debian licence texts, one a line, in a fixed order."""

from __future__ import annotations

import pytest

from vregion.eval.text import read_passages
from vregion.replicate.passages import LICENSE_DIR, paragraphs, write_passages

LONG = " ".join(["word"] * 25)


def test_paragraphs_join_lines_and_drop_short_blocks():
    text = f"TITLE\n\n{LONG[:60]}\n{LONG[60:]}\n   \nshort clause here.\n\n\n{LONG} end"
    assert paragraphs(text) == [LONG, LONG + " end"]


def test_passage_file_is_read_by_vregion_eval(tmp_path):
    (tmp_path / "GPL-3").write_text(f"{LONG} a\n\nHow to apply\n\n{LONG} b\n")
    (tmp_path / "Artistic").write_text(f"{LONG} c\n")
    out = write_passages(tmp_path / "out" / "p.txt", tmp_path, files=("GPL-3", "Missing", "Artistic"))
    assert read_passages(out, 10) == [f"{LONG} a", f"{LONG} b", f"{LONG} c"]  # file order, then paragraph order


def test_no_licence_texts_is_an_error_naming_the_way_out(tmp_path):
    with pytest.raises(FileNotFoundError, match="--text"):
        write_passages(tmp_path / "p.txt", tmp_path / "nothing")


@pytest.mark.skipif(not (LICENSE_DIR / "GPL-3").exists(), reason="not a Debian system")
def test_debian_licences_give_enough_passages(tmp_path):
    passages = read_passages(write_passages(tmp_path / "p.txt"), 1000)
    assert len(passages) >= 200 and all(len(p.split()) >= 20 for p in passages)  # the demo scores up to 200
