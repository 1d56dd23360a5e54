"""Drive `vregion serve`'s page in Debian's headless Chromium (selenium + the system chromedriver; nothing downloads).

Used by test_serve.py, and on its own to take the screenshot in docs/try-your-model.md:
    python -m tests.chat.browser CKPT [CKPT ...] --image PNG --prompt TEXT --out PNG
"""

from __future__ import annotations

import argparse
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def browser_available() -> bool:
    return shutil.which(CHROMIUM) is not None and shutil.which(CHROMEDRIVER) is not None


@contextmanager
def headless_chromium(width: int = 1280, height: int = 860):
    """A selenium driver for the system Chromium; a given driver path keeps selenium from fetching one."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}"):
        options.add_argument(arg)  # no sandbox: CI runs as root
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@contextmanager
def running_server(models, sampling) -> Iterator[str]:
    """`vregion serve`'s server on a free port of 127.0.0.1, in a thread; yields its URL."""
    from vregion.chat.server import bind

    server = bind("127.0.0.1", 0)
    server.load(models, sampling)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def ask_on_page(driver, url: str, image: Path | None, prompt: str, timeout: float = 120.0,
                reload: bool = True) -> dict:
    """Upload `image`, type `prompt`, press Ask, wait for every checkpoint to finish or fail.

    Returns:
        {"answers": [text of #answer-I], "states": [#status-I data-state], "statuses": [its text],
         "error": the #error box's text when shown, else None}.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if reload:
        driver.get(url)
    if image is not None:
        driver.find_element(By.ID, "image").send_keys(str(Path(image).resolve()))
    box = driver.find_element(By.ID, "prompt")
    # Set through script: send_keys of long prompts types slowly, and maxlength would cut them.
    driver.execute_script("arguments[0].value = arguments[1];", box, prompt)
    driver.find_element(By.ID, "ask").click()
    statuses = driver.find_elements(By.CSS_SELECTOR, ".status")

    def finished(_):
        states = [s.get_attribute("data-state") for s in statuses]
        return all(state in ("done", "error") for state in states) and states

    states = WebDriverWait(driver, timeout).until(finished)
    error = driver.find_element(By.ID, "error")
    answers = [a.get_attribute("textContent") for a in driver.find_elements(By.CSS_SELECTOR, ".answer")]
    return {"answers": answers, "states": states, "statuses": [s.text for s in statuses],
            "error": error.text if error.is_displayed() else None}


def main() -> None:
    """Serve checkpoints, ask once in the browser, save a screenshot of the page."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--image", required=True)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--compress", default="auto", help="comma list, one per checkpoint (default: auto)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--out", required=True, help="PNG file of the screenshot")
    args = parser.parse_args()
    from vregion.chat import ChatModel, Sampling

    compress = args.compress.split(",")
    compress += compress[-1:] * (len(args.checkpoints) - len(compress))
    models = [ChatModel.load(path, c) for path, c in zip(args.checkpoints, compress)]
    with running_server(models, Sampling(max_new_tokens=args.max_new_tokens)) as url, headless_chromium() as driver:
        result = ask_on_page(driver, url, Path(args.image), args.prompt)
        driver.save_screenshot(args.out)
    print(result)


if __name__ == "__main__":
    main()
