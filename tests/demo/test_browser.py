"""The demo in a real browser: Debian's Chromium, driven by Playwright, against `longclip demo --tiny`."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
PROMPT = (
    "A highly detailed oil painting of an old stone lighthouse standing on a rugged cliff at dusk, waves crashing "
    "against the black rocks below, seagulls circling in a sky streaked with orange, violet and deep blue clouds, "
    "a warm yellow light glowing from the lantern room, moss and lichen on the weathered walls, a narrow wooden "
    "staircase winding down to a small pier. Beyond the harbour a red fishing boat with patched sails rocks at "
    "anchor, its crew hauling nets full of silver fish, lanterns swinging from the mast, a dog barking on deck."
)
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def server():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    process = subprocess.Popen(
        [sys.executable, "-m", "longclip_diffusers.demo", "--tiny", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if process.poll() is not None:
                pytest.fail(f"the demo exited:\n{process.stdout.read().decode()[-3000:]}")
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("the demo did not start within 180 s")
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is not installed: run `bash scripts/setup.sh` (it installs it with apt)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    page.goto(url)
    expect(page.locator("#tiny-banner")).to_contain_text("tiny random models")
    return page


def generate(page, prompt):
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#generate").click()


def test_a_long_prompt_gives_two_images_the_count_and_the_unseen_text(server, browser):
    page = open_page(browser, server)
    generate(page, PROMPT)
    expect(page.locator("#vanilla img")).to_be_visible(timeout=120_000)
    expect(page.locator("#long img")).to_be_visible(timeout=120_000)
    expect(page.locator("#token-count")).to_contain_text("vanilla CLIP reads the first 75", timeout=30_000)
    count = page.locator("#token-count").inner_text()
    assert count.split()[0].isdigit() and int(count.split()[0]) > 100
    # the highlighted span is the text past the stock pipeline's cut: the boat, not the lighthouse
    highlighted = page.locator("#highlighted").inner_text()
    assert (
        "fishing boat with patched sails" in highlighted and "only Long-CLIP reads this".upper() in highlighted.upper()
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)
    page.close()


def test_invalid_input_shows_an_error_and_the_app_keeps_serving(server, browser):
    page = open_page(browser, server)
    generate(page, "   ")
    expect(page.get_by_text("Type a prompt first.")).to_be_visible(timeout=30_000)
    generate(page, "a lighthouse at dusk")
    expect(page.locator("#long img")).to_be_visible(timeout=120_000)
    expect(page.locator("#token-count")).to_contain_text("both encoders read the whole prompt")
    page.close()


def test_several_requests_at_once_all_complete(server, browser):
    pages = [open_page(browser, server) for _ in range(3)]
    for number, page in enumerate(pages):
        generate(page, f"request {number}: " + PROMPT)
    for page in pages:
        expect(page.locator("#long img")).to_be_visible(timeout=180_000)
        expect(page.locator("#vanilla img")).to_be_visible(timeout=180_000)
        page.close()
