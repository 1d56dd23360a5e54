"""`vregion serve` in headless Chromium: upload, ask, read the streamed answer; bad input shows an error."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket

import pytest

from tests.chat.browser import ask_on_page, browser_available, headless_chromium, running_server
from tests.chat.conftest import QUESTION
from vregion.chat import ChatModel, Sampling
from vregion.chat.server import MAX_PROMPT_CHARS, PortInUse, bind
from vregion.cli import main

MAX_NEW = 12
pytestmark = pytest.mark.skipif(not browser_available(), reason="needs Debian's chromium and chromium-driver")


@pytest.fixture(scope="module")
def page(checkpoint):
    """The page serving the checkpoint twice: as saved, and pooling visual tokens (16/2), in one browser."""
    pytest.importorskip("selenium")
    pytest.importorskip("flask")
    models = [ChatModel.load(checkpoint), ChatModel.load(checkpoint, "16/2")]
    with running_server(models, Sampling(max_new_tokens=MAX_NEW)) as url, headless_chromium() as driver:
        yield driver, url


def cli_answer(checkpoint, image, capsys, *flags) -> str:
    assert main(["chat", str(checkpoint), "--image", str(image), "--prompt", QUESTION,
                 "--max-new-tokens", str(MAX_NEW), *flags]) == 0
    return capsys.readouterr().out.removesuffix("\n")


def test_page_answers_as_the_cli_does(page, trained, checkpoint, capsys, tmp_path):
    driver, url = page
    result = ask_on_page(driver, url, trained / "red.png", QUESTION)
    assert result["states"] == ["done", "done"] and result["error"] is None
    assert result["answers"][0] == cli_answer(checkpoint, trained / "red.png", capsys)
    assert result["answers"][1] == cli_answer(checkpoint, trained / "red.png", capsys, "--compress", "16/2")
    assert result["answers"][0]  # a real answer, not two empty strings
    body = driver.find_element("tag name", "body").text
    # Config facts and the run's summary.json beside each answer.
    for fact in ("region 2 layers [0, 1] (full)", "training steps 40 (region stage)", "held-out loss 1.2345",
                 "held-out VQA accuracy 37.5%", "compression none",
                 "compression pool visual tokens before layer 1, stride 2"):
        assert fact in body, fact
    shot = tmp_path / "page.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("VREGION_SCREENSHOT"):  # keep the browser's picture of the page
        shutil.copy(shot, os.environ["VREGION_SCREENSHOT"])


def test_bad_input_shows_an_error_and_the_page_keeps_working(page, trained):
    driver, url = page
    corrupt = ask_on_page(driver, url, trained / "corrupt.png", QUESTION)
    assert corrupt["states"] == ["error", "error"] and corrupt["answers"] == ["", ""]
    assert "cannot decode image" in corrupt["error"]
    too_many_tokens = ask_on_page(driver, url, trained / "blue.png", "why? " * 60)  # 300 byte tokens > 256
    assert "the prompt is too long" in too_many_tokens["error"] and "data.max_length is 256" in too_many_tokens["error"]
    too_many_chars = ask_on_page(driver, url, None, "x" * (MAX_PROMPT_CHARS + 1), reload=False)
    assert f"the limit is {MAX_PROMPT_CHARS}" in too_many_chars["error"]
    again = ask_on_page(driver, url, trained / "blue.png", QUESTION)
    assert again["states"] == ["done", "done"] and again["error"] is None


def test_a_taken_port_is_refused_with_a_message(checkpoint, no_model, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse, match=f"port {port} on 127.0.0.1 is already in use"):
            bind("127.0.0.1", port)
        assert main(["serve", str(checkpoint), "--port", str(port)]) == 2  # before any model loads
    assert "already in use" in capsys.readouterr().err


def test_requests_the_page_cannot_send_are_refused_with_a_reason(checkpoint, trained, monkeypatch):
    from vregion.chat import server

    monkeypatch.setattr(server, "MAX_UPLOAD_BYTES", 1000)  # read when the app is built
    client = server.build_app([ChatModel.load(checkpoint)], Sampling(max_new_tokens=MAX_NEW)).test_client()
    image = (trained / "red.png").read_bytes()

    def post(path="/api/answer/0", **form):
        return client.post(path, data={"prompt": QUESTION, **form}, content_type="multipart/form-data")

    big = post(image=(io.BytesIO(b"\0" * 5000), "big.png"))
    assert big.status_code == 413 and big.get_json()["error"].startswith("the upload is larger than")
    bad_number = post(temperature="warm")
    assert bad_number.status_code == 400 and bad_number.get_json()["error"] == "temperature must be a number, got 'warm'"
    assert post("/api/answer/5").status_code == 404
    ok = post(image=(io.BytesIO(image), "red.png"), max_new_tokens="3")
    events = [json.loads(line) for line in ok.get_data(as_text=True).splitlines()]
    assert ok.status_code == 200 and events[-1]["done"] and events[-1]["tokens"] <= 3
    assert "".join(e.get("delta", "") for e in events) == events[-1]["answer"]
