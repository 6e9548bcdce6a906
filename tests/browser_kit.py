"""What every browser test shares: start and stop a real `streamlit run` server, a Chromium, a fresh tab, wait
for a script run to finish, screenshots. The fixtures (`server`, `browser`, `page`) are in conftest.py."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from caltech_core import settings

REPO = Path(__file__).resolve().parent.parent
SHOTS = REPO / "test-output" / "screenshots"
DOC_SHOTS = REPO / "docs" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
# Playwright's `expect` waits 5 s by default; a page's rerun on a busy 2-core machine can take longer than that.
expect.set_options(timeout=60_000)
# One renderer process for all tabs: the navigation test's eight tabs at once cost 53-54 CPU-s instead of 66-67 (each
# tab's process start and script compilation are shared), and with the sessions' import race put back it still
# failed on its first fresh server in 4 runs of 4 (docs/benchmarks.md, "Test suite time").
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--renderer-process-limit=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, home: Path, log_path: Path, port: int | None = None, *,
                 address: str | None = "127.0.0.1", env: dict[str, str] | None = None,
                 app: Path = REPO) -> tuple[subprocess.Popen, str]:
    """`streamlit run streamlit_app.py` in `app` (default: this checkout; `fresh_checkout` makes another) on `port`
    (default: a free one) with `env` added to the environment; returns the process and its URL once it is healthy.
    `address` None: the checked-in .streamlit/config.toml decides where it listens."""
    port = port or free_port()
    # One torch thread: tiny batches gain nothing from more, and on a shared 2-core machine they lose a lot.
    # One malloc arena, as `make run` starts the dashboard.
    env = settings.with_one_malloc_arena({**os.environ, "CALTECH101_ROOT": str(root), "CALTECH_STUDIO_HOME": str(home),
                                          "OMP_NUM_THREADS": "1", **(env or {})})
    listen = [] if address is None else ["--server.address", address]
    with log_path.open("a") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port), *listen,
             "--server.headless", "true"],
            cwd=app, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while not healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"streamlit did not start (see {log_path})")
        time.sleep(0.1)
    return proc, url


def fresh_checkout(dest: Path) -> Path:
    """The app's sources copied into `dest` without their compiled bytecode, as a first start after a checkout finds
    them. A server started there with PYTHONDONTWRITEBYTECODE=1 compiles every project module while its first
    sessions import them, each time (its folder comes first on sys.path, before the editable install)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("streamlit_app.py", ".streamlit", "dashboard", "caltech_core"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, dest / name)
    return dest


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.read().strip() == b"ok"
    except OSError:
        return False


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def settle(page) -> None:
    """Wait until Streamlit has finished the current script run."""
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=120_000)
    page.wait_for_timeout(800)


def shot(page, name: str, docs: bool = False) -> None:
    """Screenshot into test-output/; README's copies in docs/ are refreshed only when asked
    (UPDATE_DOC_SCREENSHOTS=1), so a test run never changes tracked files."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if docs and os.environ.get("UPDATE_DOC_SCREENSHOTS") == "1":
        DOC_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOC_SHOTS / f"{name}.png")


def set_number(page, label: str, value: float) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    settle(page)


def open_expander(page, title: str) -> None:
    """Open the expander whose summary reads `title`, only if it is closed: a click toggles, and an expander can
    stay open across the page's reruns, so a blind click sometimes closed it."""
    details = page.locator("[data-testid='stExpander'] details").filter(
        has=page.locator("summary").filter(has_text=title)).first
    if details.get_attribute("open") is None:
        details.locator("summary").first.click()
    page.wait_for_function("(el) => el.open", arg=details.element_handle())


def tick(page, label) -> None:
    """Check the checkbox named by `label` (a string or pattern) and wait until the page has it checked: a click
    that lands during a rerun can be lost, so it is repeated until the box reads checked."""
    box = page.get_by_role("checkbox", name=label)
    for _ in range(5):
        if box.is_checked():
            break
        page.get_by_text(label).first.click()
        settle(page)
    expect(box).to_be_checked()


def choose(page, label: str, option: str) -> None:
    """Pick `option` in the selectbox labelled `label`: the dropdown is opened again when a rerun of the page
    (a background result arriving) closed it before the option could be clicked."""
    box = page.locator("[data-testid='stSelectbox']").filter(has_text=label)
    choice = page.get_by_role("option", name=option)
    for _ in range(5):
        settle(page)
        box.click()
        try:
            choice.click(timeout=10_000)
            break
        except PlaywrightTimeout:
            continue
    expect(box.get_by_role("combobox")).to_have_value(option)
    settle(page)


def click_until(page, click: Callable[[], None], done: Callable[[], bool], name: str, *, tries: int = 4,
                seconds: float = 20.0) -> None:
    """Call `click` until `done()` holds, up to `tries` times, waiting `seconds` after each: a click during a rerun
    can be lost, or its button detached (then `click` times out and is tried again). Each try that did not get
    there saves the screenshot `<name>-try-<n>` and prints a line; the caller asserts the result."""
    for attempt in range(tries):
        if done():
            return
        try:
            click()
        except PlaywrightTimeout as exc:
            print(f"{name}: try {attempt + 1} could not click: {str(exc).splitlines()[0]}")
            shot(page, f"{name}-try-{attempt}")
            settle(page)
            continue
        deadline = time.monotonic() + seconds
        while not done() and time.monotonic() < deadline:
            page.wait_for_timeout(250)
        if not done():
            print(f"{name}: nothing {seconds:g} s after try {attempt + 1}")
            shot(page, f"{name}-try-{attempt}")


def add_choice(page, label: str, option: str) -> None:
    """Add `option` to the multiselect labelled `label`, until its chip shows: a click on the dropdown's option
    can be lost when a rerun redraws the page in between (seen on a busy machine)."""
    box = page.locator("[data-testid='stMultiSelect']").filter(has_text=label)
    chip = box.get_by_text(option, exact=True)
    for _ in range(5):
        settle(page)
        if chip.count():
            break
        box.click()
        try:
            page.get_by_role("option", name=option).click(timeout=10_000)
        except PlaywrightTimeout:
            continue
        page.keyboard.press("Escape")
    expect(chip).to_be_visible()
    settle(page)
