"""The dashboard in a real Chromium: classify uploads, queue and watch a run, cancel one; screenshots of every page."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from caltech_core.store import RunStore

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
SHOTS = REPO / "test-output" / "screenshots"
DOC_SHOTS = REPO / "docs" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(mini_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`streamlit run streamlit_app.py` on a free port with the mini dataset and an empty store."""
    home = tmp_path_factory.mktemp("browser_home")
    port = _free_port()
    env = {**os.environ, "CALTECH101_ROOT": str(mini_root), "CALTECH_STUDIO_HOME": str(home)}
    log = (tmp_path_factory.mktemp("logs") / "streamlit.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"streamlit did not start (see {log.name})")
        time.sleep(0.5)
    yield url, home
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(60_000)
    yield tab
    context.close()


def _settle(page) -> None:
    """Wait until Streamlit has finished the current script run."""
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=120_000)
    page.wait_for_timeout(800)


def _shot(page, name: str, docs: bool = False) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if docs:
        DOC_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOC_SHOTS / f"{name}.png")


def _set_number(page, label: str, value: float) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    _settle(page)


def _queue(page, url: str, epochs: int) -> int:
    """Fill the Train form for a tiny ResNet-18 run and queue it; returns the run id."""
    page.goto(f"{url}/train")
    _settle(page)
    page.get_by_text("Train a network").wait_for()
    page.locator("[data-testid='stSelectbox']").filter(has_text="Architecture").click()
    page.get_by_role("option", name="ResNet-18").click()
    _settle(page)
    for label, value in (("Image size (crop, px)", 64), ("Classes (first K, 0 = all 101)", 2),
                         ("Max images per class (0 = all)", 4), ("Batch size", 4), ("Epochs", epochs),
                         ("StepLR step size (epochs)", 1)):
        _set_number(page, label, value)
    page.get_by_role("button", name=re.compile("Queue run")).click()
    _settle(page)
    found = page.get_by_text(re.compile(r"Queued run #\d+")).inner_text()
    return int(re.search(r"#(\d+)", found).group(1))


def _points(page) -> int:
    return page.locator(".js-plotly-plot .scatterlayer .trace .points path").count()


def test_classify_uploads_show_top5(server, page, mini_root: Path, tmp_path: Path) -> None:
    url, _ = server
    dog = sorted((mini_root / "101_ObjectCategories" / "dalmatian").glob("*.jpg"))[0]
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is not a photo\n" * 20)
    page.goto(f"{url}/classify")
    _settle(page)
    page.locator("input[type='file']").set_input_files([str(dog), str(fake)])
    page.get_by_text(re.compile(r"image_0001\.jpg → dalmatian")).wait_for(timeout=120_000)
    page.get_by_text(re.compile("notes.jpg: not an image")).wait_for()
    _settle(page)
    assert page.locator(".js-plotly-plot").count() >= 1  # the top-5 bar chart
    assert page.get_by_text("Grad-CAM", exact=False).count() >= 1
    _shot(page, "classify", docs=True)


def test_queue_watch_and_cancel_runs(server, page) -> None:
    url, home = server
    _shot_pages = {"data": "", "compare": "/compare"}
    run_id = _queue(page, url, epochs=3)
    _shot(page, "train")
    page.goto(f"{url}/monitor?run={run_id}")
    _settle(page)
    store = RunStore(home)
    # Live curves: the page refreshes in place while the run trains; points are added epoch by epoch.
    deadline = time.monotonic() + 300
    while len(store.epochs(run_id)) < 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 4", timeout=60_000)
    first = _points(page)
    while store.get_run(run_id).status in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert store.get_run(run_id).status == "finished"
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .scatterlayer .trace .points path').length"
                           f" > {first}", timeout=30_000)
    page.get_by_text("Test accuracy", exact=True).wait_for()
    _settle(page)
    _shot(page, "monitor", docs=True)

    # Cancel: a long run stops at its next batch and offers to resume.
    long_id = _queue(page, url, epochs=200)
    page.goto(f"{url}/monitor?run={long_id}")
    _settle(page)
    page.get_by_role("button", name=re.compile("Cancel run")).click()
    deadline = time.monotonic() + 120
    while store.get_run(long_id).status != "cancelled" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert store.get_run(long_id).status == "cancelled"
    page.get_by_role("button", name=re.compile("Resume run")).wait_for()

    for name, path in _shot_pages.items():
        page.goto(f"{url}{path}")
        _settle(page)
        _shot(page, name)
    if (Path(__file__).resolve().parent.parent / "pages" / "report.py").is_file():
        page.goto(f"{url}/report")
        _settle(page)
        _shot(page, "report")
