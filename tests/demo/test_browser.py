"""The demo in a real browser: Debian's Chromium, driven by Playwright, against `longclip demo --tiny`."""

import os
import re
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
# Every non-space character of the highlighted text, in reading order, with the top of the line it sits on.
CHARACTER_TOPS = """(root) => {
    const characters = [];
    for (const span of root.querySelectorAll('.text')) {
        const walker = document.createTreeWalker(span, NodeFilter.SHOW_TEXT);
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
            for (let i = 0; i < node.length; i++) {
                const range = document.createRange();
                range.setStart(node, i);
                range.setEnd(node, i + 1);
                characters.push([node.data[i], range.getBoundingClientRect().top]);
            }
        }
    }
    return characters;
}"""


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
    counts = re.match(r"(\d+) tokens for vanilla CLIP, (\d+) for Long-CLIP", page.locator("#token-count").inner_text())
    assert counts and int(counts[1]) > 100 and int(counts[2]) > 100
    # the highlighted span is the text past the stock pipeline's cut: the boat, not the lighthouse
    highlighted = page.locator("#highlighted").inner_text()
    assert (
        "fishing boat with patched sails" in highlighted and "only Long-CLIP reads this".upper() in highlighted.upper()
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)
    page.close()


def test_another_base_reads_t5_and_says_what_it_leaves_out(server, browser):
    """Flux.1 (tiny): chosen in the page, generated on first use; its CLIP-L reads one window, T5 the prompt, and
    the negative prompt (the page's default) is left out, saying so."""
    page = open_page(browser, server)
    page.locator("#base").get_by_label("Flux.1").check()
    generate(page, PROMPT)
    expect(page.locator("#long img")).to_be_visible(timeout=120_000)
    count = page.locator("#token-count")
    expect(count).to_contain_text("Flux reads CLIP-L's pooled vector, of one window", timeout=30_000)
    expect(count).to_contain_text("T5 (in both pipelines) reads all")
    expect(count).to_contain_text("Flux.1 reads no negative prompt")
    page.close()


def test_the_highlighted_text_wraps_between_words_only(server, browser):
    page = open_page(browser, server)
    generate(page, PROMPT)
    expect(page.locator("#highlighted")).to_contain_text("fishing boat", timeout=120_000)
    for width in (1280, 1000, 800, 600):
        page.set_viewport_size({"width": width, "height": 1100})
        characters = page.locator("#highlighted").evaluate(CHARACTER_TOPS)
        assert "".join(character for character, _ in characters) == PROMPT  # the whole prompt, once, in order
        words, line_tops = [[]], set()
        for character, top in characters:
            if character.isspace():
                words.append([])
            else:
                words[-1].append((character, top))
                line_tops.add(round(top))
        assert len(line_tops) >= 3, f"the text should wrap at width {width}"
        split = ["".join(c for c, _ in word) for word in words if word and word[-1][1] - word[0][1] > 4]
        assert not split, f"words broken across lines at width {width}: {split}"
    page.close()


def test_invalid_input_shows_an_error_and_the_app_keeps_serving(server, browser):
    page = open_page(browser, server)
    generate(page, "   ")
    expect(page.get_by_text("Type a prompt first.")).to_be_visible(timeout=30_000)
    generate(page, "a (lighthouse:13) at dusk")  # a typo for 1.3: refused, saying why
    expect(page.get_by_text("weight 13 is outside the range 0 to 10")).to_be_visible(timeout=30_000)
    generate(page, "a lighthouse at dusk")
    expect(page.locator("#long img")).to_be_visible(timeout=120_000)
    expect(page.locator("#token-count")).to_contain_text("both encoders read the whole prompt")
    page.close()


def test_a_refused_request_shows_its_message_once_and_clears_the_last_result(server, browser):
    """No red "Error" pill over each output, no toast besides, no earlier result left beside the message."""
    page = open_page(browser, server)
    generate(page, "a lighthouse at dusk")
    expect(page.locator("#long img")).to_be_visible(timeout=120_000)
    expect(page.locator("#token-count")).to_contain_text("both encoders read the whole prompt")
    refused = [("a (cat:50)", "weight 50 is outside the range 0 to 10"), ("  ", "Type a prompt first.")]
    for number, (prompt, message) in enumerate(refused):
        generate(page, prompt)
        expect(page.locator("#message")).to_contain_text(message, timeout=30_000)
        expect(page.get_by_text(message)).to_have_count(1)  # once: in the message, not in a toast too
        expect(page.locator("#vanilla img")).to_have_count(0)
        expect(page.locator("#long img")).to_have_count(0)
        expect(page.locator("#token-count")).to_have_text("")
        expect(page.locator("#scores")).to_have_text("")
        expect(page.get_by_text("Error", exact=True)).to_have_count(0)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"demo-refused-{number}.png"), full_page=True)
    generate(page, "a lighthouse at dusk")  # the next good request clears the message
    expect(page.locator("#long img")).to_be_visible(timeout=120_000)
    expect(page.locator("#message")).to_have_text("")
    page.close()


def test_several_requests_at_once_all_complete(server, browser):
    pages = [open_page(browser, server) for _ in range(3)]
    for number, page in enumerate(pages):
        generate(page, f"request {number}: " + PROMPT)
    for page in pages:
        expect(page.locator("#long img")).to_be_visible(timeout=180_000)
        expect(page.locator("#vanilla img")).to_be_visible(timeout=180_000)
        page.close()
