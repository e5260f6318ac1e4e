"""A real-browser test of the notebooks: JupyterLab in Debian's chromium, driven by Playwright.

`make test-browser` runs it (after installing chromium when root and missing). It starts JupyterLab on a free
loopback port with a token, opens chapter 06 (a copy, so the repository's notebook is not rewritten), runs
all cells, checks that no cell raised, that the tuning panel renders as a widget (not as its text repr),
moves a slider and checks that the plot changes; screenshots go to build/browser/; the server it started is
stopped at the end.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "build" / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NOTEBOOK = "06_block_size_tuning.ipynb"


def _missing(msg):
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        _missing("chromium not found: install it with `sudo apt-get install chromium` (or `make test-browser` as root)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        _missing("playwright is not installed: pip install -e .[dev]")
    work = tmp_path_factory.mktemp("lab")
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, work / NOTEBOOK)
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(work / ".cfg"), "JUPYTER_RUNTIME_DIR": str(work / ".rt"),
           "JUPYTER_DATA_DIR": str(work / ".data"), "MPLBACKEND": "module://matplotlib_inline.backend_inline",
           "CHORDLAB_TUNE_CACHE": str(work / "autotune.json")}
    settings = work / ".settings"
    settings.mkdir()
    (settings / "overrides.json").write_text(json.dumps(
        {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False}}))
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip", "127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", "--LabApp.expose_app_in_browser=True",
           f"--LabApp.app_settings_dir={settings}", "--ServerApp.open_browser=False"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(work / "lab.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"jupyter lab exited: {(work / 'lab.log').read_text()[-2000:]}") from None
                time.sleep(0.5)
        else:
            raise RuntimeError(f"jupyter lab did not start: {(work / 'lab.log').read_text()[-2000:]}")
        yield url, token
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


ERRORS_JS = """() => {
  const nb = window.jupyterapp.shell.currentWidget.content;
  const errors = [];
  for (const cell of nb.widgets) {
    if (cell.model.type !== 'code') continue;
    for (const o of cell.model.outputs.toJSON()) if (o.output_type === 'error') errors.push(o.ename + ': ' + o.evalue);
  }
  return errors;
}"""

DONE_JS = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!w || !w.content || !w.sessionContext || !w.sessionContext.session) return false;
  const cells = w.content.widgets.filter(c => c.model.type === 'code');
  const busy = w.sessionContext.session.kernel && w.sessionContext.session.kernel.status !== 'idle';
  return !busy && cells.length > 0 && cells.every(c => c.model.executionCount !== null);
}"""


def test_chapter_06_in_a_real_browser(lab):
    from playwright.sync_api import sync_playwright

    url, token = lab
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/lab/tree/{NOTEBOOK}?token={token}")
            page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget "
                                   "&& window.jupyterapp.shell.currentWidget.sessionContext "
                                   "&& window.jupyterapp.shell.currentWidget.sessionContext.isReady",
                                   timeout=120_000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.wait_for_function(DONE_JS, timeout=300_000, polling=1000)
            page.screenshot(path=str(SHOTS / "chapter06_after_run_all.png"), full_page=True)

            assert page.evaluate(ERRORS_JS) == []

            panel = page.locator(".jp-OutputArea-output .widget-vbox").filter(has=page.locator(".widget-slider")).first
            panel.wait_for(timeout=60_000)
            assert panel.locator(".widget-slider").count() >= 4
            assert page.locator(".jp-OutputArea-output", has_text="VBox(children=").count() == 0  # not the text repr
            image = panel.locator(".widget-output img").first
            image.wait_for(timeout=60_000)
            panel.scroll_into_view_if_needed()
            wait_new_image = """([sel, before]) => { const img = document.querySelector(sel);
                return img && img.getAttribute('src') !== before; }"""
            img_sel = ".jp-OutputArea-output .widget-output img"

            before = image.get_attribute("src")
            panel.locator("button", has_text="run sweep").click()  # the heatmap replaces the prompt
            page.wait_for_function(wait_new_image, arg=[img_sel, before], timeout=120_000)
            page.wait_for_function("() => !document.body.innerText.includes('sweeping ...')", timeout=120_000)
            before = panel.locator(".widget-output img").first.get_attribute("src")
            label_before = panel.locator(".widget-html-content").first.inner_text()

            slider = panel.locator(".widget-slider", has_text="block_k").first
            slider.locator(".noUi-handle").first.focus()
            page.keyboard.press("ArrowRight")
            page.wait_for_function(wait_new_image, arg=[img_sel, before], timeout=120_000)
            after = panel.locator(".widget-output img").first.get_attribute("src")
            label_after = panel.locator(".widget-html-content").first.inner_text()
            assert after != before and label_after != label_before
            panel.screenshot(path=str(SHOTS / "tuning_panel.png"))
        finally:
            browser.close()
    assert (SHOTS / "tuning_panel.png").stat().st_size > 10_000
