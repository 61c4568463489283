"""The web app in a real browser: headless Chromium, driven by Playwright, clicks through a run.

Needs a Chromium binary: Debian's (`apt-get install chromium`, /usr/bin/chromium) or Playwright's own
(`playwright install chromium`); SUPPRESSEOT_CHROMIUM names another. Without one the test fails (no skip).
The screenshot it takes is the README's docs/app.png, taken with neutral paths: the app runs in a temporary
working directory, which the page leaves out of the paths it shows (the model, --out, the run folders).
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

gradio = pytest.importorskip("gradio", reason="the app extra: pip install 'suppresseot[app]'")

from suppresseot.api import SuppressEOT  # noqa: E402
from suppresseot.app import App, launch_options  # noqa: E402

pytestmark = pytest.mark.slow
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "app.png"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str | None:
    """Debian's Chromium (or $SUPPRESSEOT_CHROMIUM); None: Playwright's own download, if installed."""
    for path in (os.environ.get("SUPPRESSEOT_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser")):
        if path and Path(path).is_file():
            return path
    return None


def launch_browser(playwright):
    path = chromium_path()
    try:
        return playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
    except Exception as exc:  # no browser: fail with the reason, never skip
        pytest.fail(f"no Chromium to run the browser test ({exc}); install one: `apt-get install chromium` "
                    f"(Debian) or `playwright install chromium`, or point SUPPRESSEOT_CHROMIUM at one")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_click_a_word_run_and_see_both_images_and_the_maps(small_model_dir, tmp_path, monkeypatch):
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError as exc:
        pytest.fail(f"the browser test needs Playwright: pip install playwright ({exc})")
    monkeypatch.chdir(tmp_path)  # the page shows paths under the working directory relative to it
    (tmp_path / "tiny-random-sd").symlink_to(small_model_dir)
    out = tmp_path / "runs"
    model = SuppressEOT.from_pretrained(tmp_path / "tiny-random-sd", device="cpu", progress=False)
    app = App(model, out)
    demo = app.build()
    port = free_port()
    demo.launch(**launch_options(out, port=port), prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = launch_browser(playwright)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            prompt = page.locator("#gen_prompt textarea")
            prompt.fill("a man with a beard wearing glasses")
            chip = page.get_by_label("beard (5)")
            expect(chip).to_be_visible(timeout=30_000)
            chip.check()
            page.get_by_text("Advanced").first.click()
            page.get_by_label("DDIM steps").first.fill("3")
            page.get_by_label("ITO iterations per step").first.fill("1")
            page.locator("#generated_compare_with input").click()
            page.get_by_role("option", name="negative-prompt").click()
            page.locator("#gen_run").click()
            # both images (the slider's two layers) and the attention maps
            expect(page.locator("#pair img")).to_have_count(2, timeout=240_000)
            expect(page.locator("#maps img")).to_be_visible(timeout=30_000)
            expect(page.locator("#info").first).to_contain_text("Suppressed beard")
            expect(page.locator("#info").first).to_contain_text("Compared with negative-prompt")
            # the comparison: original | SuppressEOT | negative-prompt, labelled
            expect(page.locator("#generate_compare img")).to_have_count(3, timeout=30_000)
            expect(page.locator("#generate_compare")).to_contain_text("negative-prompt")
            runs = sorted(p.name for p in out.iterdir() if (p / "run.json").is_file())
            assert len(runs) == 2 and all("tok5" in r and "steps" not in r for r in runs)
            assert "negative-prompt" in runs[1] and "negative-prompt" not in runs[0]
            for selector in ("#pair img", "#maps img", "#generate_compare img"):  # loaded, not broken links
                widths = page.locator(selector).evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
                assert widths and all(w > 0 for w in widths), selector
            text = page.inner_text("body")
            assert "runs/generated-a-man" in text and "tiny-random-sd" in text
            assert str(tmp_path) not in text and tempfile.gettempdir() + "/" not in text  # neutral paths
            page.wait_for_timeout(500)
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            browser.close()
    finally:
        demo.close()
    assert SCREENSHOT.stat().st_size > 10_000
