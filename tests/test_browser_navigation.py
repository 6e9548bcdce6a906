"""Navigation in a real Chromium when sessions race: several tabs opening sub-pages of a freshly started server
at once, and a tab left open across a kill -9 and restart of the server beside a new one. Every tab must show the
app's own menu and its page, whichever session reaches the server first; each scenario repeats so a race
cannot pass by luck."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_kit import SHOTS, fresh_checkout, start_server, stop_server

pytestmark = pytest.mark.browser

REPEATS = 3
# The app's own menu (streamlit_app.py), in order; Streamlit's "pages folder" mode would list file names instead.
MENU = ["Data", "Train", "Monitor", "Errors", "Compare", "Sweeps", "Classify", "Report"]
TITLES = {"/": "Data", "/train": "Train a network", "/monitor": "Monitor", "/errors": "Errors",
          "/compare": "Compare runs", "/sweeps": "Sweeps", "/classify": "Classify images", "/report": "Study report"}
ERROR = "This app has encountered an error"

# Done when the tab is connected, its script run is over and the page shows its title or Streamlit's error notice.
_DONE_JS = """([title, error]) => {
    const app = document.querySelector("[data-testid='stApp']");
    if (!app || app.getAttribute("data-test-connection-state") !== "CONNECTED"
        || app.getAttribute("data-test-script-state") !== "notRunning") return false;
    const titles = [...document.querySelectorAll("h1")].map(h => h.innerText.trim());
    return titles.includes(title) || document.body.innerText.includes(error);
}"""
_CONNECTED_JS = """() => document.querySelector("[data-testid='stApp']")
    ?.getAttribute("data-test-connection-state") === 'CONNECTED'"""
_LOST_JS = f"() => !({_CONNECTED_JS})()"


def _open_at_once(tabs: list, url: str, paths: list[str]) -> None:
    """Point every tab at its path without waiting for any: their sessions reach the server together."""
    for tab, path in zip(tabs, paths, strict=True):
        tab.evaluate("(u) => { window.location.href = u; }", f"{url}{path}")


def _menu(tab) -> list[str]:
    """The labels of the sidebar menu (the icon's ligature text dropped)."""
    links = tab.locator("[data-testid='stSidebarNav'] [data-testid='stSidebarNavLink']")
    return [link.locator("span").last.inner_text().strip() for link in links.all()]


def _assert_pages_ok(tabs: list, paths: list[str], what: str) -> None:
    """Each tab shows the app's own menu and the page of its path, and no error. The tabs are waited for
    together: all done, half a second for any rerun queued by a finished run to start, then all done again."""
    titles = [TITLES[path] for path in paths]
    for tab, title in zip(tabs, titles, strict=True):
        tab.wait_for_function(_DONE_JS, arg=[title, ERROR], timeout=90_000)
    tabs[0].wait_for_timeout(500)  # a rerun queued by a finished run would start now
    for tab, path, title in zip(tabs, paths, titles, strict=True):
        tab.wait_for_function(_DONE_JS, arg=[title, ERROR], timeout=90_000)
        body = tab.inner_text("body")
        if ERROR in body or tab.locator("[data-testid='stException']").count():
            SHOTS.mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(SHOTS / f"navigation-error{path.replace('/', '-')}.png"), full_page=True)
        assert ERROR not in body, f"{what}: {path} shows Streamlit's error notice; menu {_menu(tab)}"
        assert _menu(tab) == MENU, f"{what}: {path} shows another menu"
        assert title in [h.strip() for h in tab.locator("h1").all_inner_texts()], f"{what}: {path} lacks its title"
        assert tab.url.rstrip("/").endswith(path.rstrip("/")), f"{what}: {path} ended on {tab.url}"


def _assert_clean_log(log: Path, since: int, what: str) -> None:
    text = log.read_text()[since:]
    assert "Traceback" not in text and "Error" not in text, f"{what}: the server logged\n{text}"


@pytest.mark.slow
def test_tabs_opening_sub_pages_at_once_on_a_fresh_server(browser, mini_root: Path, tmp_path: Path) -> None:
    home, log = tmp_path / "home", tmp_path / "streamlit.log"
    paths = list(TITLES)[1:] + ["/"]  # sub-pages first: they are what a fresh server used to get wrong
    # A first start after a checkout: nothing compiled yet, so the sessions' first imports take longest and overlap
    # most. With the checkout's bytecode cached, the import race put back was caught in 7 runs of 11, against every
    # run without it (docs/benchmarks.md, "Test suite time").
    app = fresh_checkout(tmp_path / "checkout")
    for attempt in range(1, REPEATS + 1):
        what = f"fresh server {attempt}"
        since = len(log.read_text()) if log.exists() else 0
        proc, url = start_server(mini_root, home, log, app=app, env={"PYTHONDONTWRITEBYTECODE": "1"})
        context = browser.new_context(viewport={"width": 1200, "height": 800})
        try:
            tabs = [context.new_page() for _ in paths]
            _open_at_once(tabs, url, paths)
            _assert_pages_ok(tabs, paths, what)
            if attempt == 1:
                SHOTS.mkdir(parents=True, exist_ok=True)
                tabs[1].screenshot(path=str(SHOTS / "navigation-fresh-server.png"))
        finally:
            context.close()
            stop_server(proc)
        _assert_clean_log(log, since, what)


@pytest.mark.slow
def test_a_tab_left_open_across_a_server_crash_and_a_new_tab_both_work(browser, mini_root: Path,
                                                                       tmp_path: Path) -> None:
    home, log = tmp_path / "home", tmp_path / "streamlit.log"
    proc, url = start_server(mini_root, home, log)
    port = int(url.rsplit(":", 1)[1])
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    # Per restart: where the user goes in the tab left open (a menu click), and which page a new tab opens.
    moves = [("Compare", "/compare", "/train"), ("Monitor", "/monitor", "/classify"), ("Data", "/", "/report")]
    try:
        left_open = context.new_page()
        left_open.goto(f"{url}/monitor")
        _assert_pages_ok([left_open], ["/monitor"], "before the crash")
        for attempt, (label, path, new_path) in enumerate(moves[:REPEATS], start=1):
            what = f"restart {attempt}"
            proc.kill()  # SIGKILL: no shutdown of any kind
            proc.wait()
            left_open.wait_for_function(_LOST_JS, timeout=30_000)  # the tab noticed
            since = len(log.read_text())
            proc, url = start_server(mini_root, home, log, port=port)
            left_open.wait_for_function(_CONNECTED_JS, timeout=90_000, polling=20)  # it reconnects on its own
            new_tab = context.new_page()
            _open_at_once([new_tab], url, [new_path])
            # The reconnected tab runs no script until the user acts: go on to another page at the same moment.
            left_open.locator("[data-testid='stSidebarNavLink']").filter(has_text=label).click()
            _assert_pages_ok([new_tab, left_open], [new_path, path], what)
            new_tab.close()
            _assert_clean_log(log, since, what)
    finally:
        context.close()
        stop_server(proc)
