"""The real thing: JupyterLab in headless Chromium runs lesson 3, a slider moves, the plot changes.

Starts ``jupyter lab`` on 127.0.0.1 with a random token in a temporary folder holding a copy of
the lesson (JupyterLab saves notebooks; the committed one must stay output-free), drives Debian's
/usr/bin/chromium with Playwright (no browser download), runs all cells from the Run menu, presses
the arrow keys on the beta slider and measures, in the page, the time from each key press to the
new PNG in the widget's output area (the redraw latency a user sees; printed, run with -s). A
screenshot is saved next to the test's temporary files.
"""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from notebook_runner import LESSONS

CHROMIUM = Path("/usr/bin/chromium")
LESSON = "03_three_losses.ipynb"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed (scripts/install-browser.sh)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyter_lab(tmp_path):
    pytest.importorskip("jupyterlab")
    root = tmp_path / "notebooks"
    root.mkdir()
    shutil.copy(LESSONS / LESSON, root / LESSON)
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"), JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               MPLBACKEND="module://matplotlib_inline.backend_inline")
    log = open(tmp_path / "jupyter.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False", *(["--allow-root"] if os.geteuid() == 0 else []),
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail("jupyter lab did not start:\n" + (tmp_path / "jupyter.log").read_text()[-3000:])
            time.sleep(0.5)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _wait_for_idle_kernel(base: str, token: str, seconds: float = 120) -> None:
    """Until the server reports the notebook's kernel started and idle."""
    import json
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/api/kernels?token={token}", timeout=5) as response:
                kernels = json.load(response)
            if kernels and all(k.get("execution_state") == "idle" for k in kernels):
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail("the notebook's kernel did not start")


def _key_to_new_picture(page, key: str) -> float:
    """Press ``key`` on the focused slider; seconds until the widget's picture is a new PNG
    (both instants taken in the page: the keydown event and the DOM change that shows the image)."""
    page.evaluate("""() => {
        window.__picture = Array.from(document.querySelectorAll('.widget-output img')).map(i => i.src).join();
        window.__changed = null;
        window.__pressed = null;
        document.addEventListener('keydown', () => { window.__pressed = performance.now(); }, {capture: true, once: true});
        const observer = new MutationObserver(() => {
            const now = Array.from(document.querySelectorAll('.widget-output img')).map(i => i.src);
            if (now.length > 0 && now.join() !== window.__picture && window.__changed === null) {
                window.__changed = performance.now();
                observer.disconnect();
            }
        });
        observer.observe(document.body, {subtree: true, childList: true, attributes: true});
    }""")
    page.keyboard.press(key)
    page.wait_for_function("() => window.__changed !== null", timeout=120_000)
    return page.evaluate("() => (window.__changed - window.__pressed) / 1000")


def test_lesson_3_beta_slider_redraws_the_plot_in_chromium(jupyter_lab, tmp_path, record_property):
    sync_api = pytest.importorskip("playwright.sync_api")
    base, token = jupyter_lab
    screenshot = tmp_path / "lesson3_after_beta.png"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(f"{base}/lab/tree/{LESSON}?token={token}")
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", state="attached")
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", state="attached")

            _wait_for_idle_kernel(base, token)
            page.wait_for_function("() => document.querySelector('.jp-StatusBar-Item') !== null"
                                   " && document.body.innerText.includes('| Idle')", timeout=120_000)
            for attempt in range(3):  # the page may not be connected to the kernel yet: retry until a cell runs
                page.keyboard.press("Escape")  # close a menu left open by a previous attempt
                page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
                page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
                try:
                    page.wait_for_function(
                        "() => Array.from(document.querySelectorAll('.jp-InputPrompt'))"
                        ".some(p => /\\[[0-9*]+\\]/.test(p.innerText))", timeout=30_000)
                    break
                except sync_api.TimeoutError:
                    continue

            beta = page.locator(".widget-slider", has=page.locator(".widget-label", has_text="beta")).first
            beta.wait_for(state="visible", timeout=120_000)
            page.wait_for_function("() => document.querySelectorAll('.widget-output img').length > 0", timeout=120_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", state="attached", timeout=120_000)
            readout_before = beta.locator(".widget-readout").inner_text()

            handle = beta.locator(".noUi-handle").first
            handle.scroll_into_view_if_needed()
            handle.focus()
            latencies = []
            for key in ("ArrowRight", "ArrowRight", "ArrowLeft", "ArrowLeft", "ArrowRight"):
                latencies.append(_key_to_new_picture(page, key))
            readout_after = beta.locator(".widget-readout").inner_text()
            try:  # JupyterLab's "official news?" toast covers part of the picture
                page.get_by_role("button", name="No", exact=True).click(timeout=2_000)
            except sync_api.Error:
                pass
            page.locator(".widget-output img").last.scroll_into_view_if_needed()
            page.screenshot(path=str(screenshot), full_page=False)
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"))
            print(f"failure screenshot: {tmp_path / 'failure.png'}")
            raise
        finally:
            browser.close()
    assert readout_before != readout_after, (readout_before, readout_after)
    latencies.sort()
    # Reported, not asserted (timings belong to benchmarks): the run's summary lists it under
    # "measurements" (tests/conftest.py). The target is 0.3 s on a quiet machine; a re-train took 1.3 s+.
    record_property("lesson 3 beta slider, key press -> new picture in Chromium (s)",
                    f"median {latencies[len(latencies) // 2]:.3f}, max {latencies[-1]:.3f} over {len(latencies)} moves "
                    f"({', '.join(f'{x:.3f}' for x in latencies)})")
    assert screenshot.exists() and screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")
