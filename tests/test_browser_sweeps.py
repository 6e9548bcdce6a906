"""Browser journey: build a sweep on the Train page (its Sweep panel over a tiny form), start it, land on the
Sweeps page with it selected, watch its trials arrive in the table and the parallel-coordinates chart appear."""

from __future__ import annotations

import pytest
from browser_kit import add_choice, choose, open_expander, set_number, settle, shot
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def test_build_a_sweep_on_the_train_page_and_watch_its_trials(server, page) -> None:
    url, _home = server
    page.goto(f"{url}/train")
    settle(page)
    choose(page, "Architecture", "MobileNetV3-Small")
    for label, value in (("Image size (crop, px)", 64), ("Max images per class (0 = all)", 4), ("Batch size", 8),
                         ("Epochs", 1)):
        set_number(page, label, value)
    open_expander(page, "Sweep: vary some of these settings")
    add_choice(page, "Settings to vary", "Learning rate")
    values = page.get_by_label("Values (comma-separated)")
    values.fill("0.001, 0.003")
    values.press("Enter")
    settle(page)
    expect(page.get_by_text("Will queue 2 trials.")).to_be_visible()
    page.get_by_role("button", name="Start sweep").scroll_into_view_if_needed()
    shot(page, "sweep_builder")
    page.get_by_role("button", name="Start sweep").click()
    settle(page)
    # The Sweeps page opens on the new sweep; its live fragment (picker included) refreshes every 2 s: both
    # trials end up "complete" in the table, the chart shows, and the picker reads finished with no Stop button.
    expect(page.get_by_role("heading", name="Sweeps")).to_be_visible(timeout=60_000)
    page.wait_for_selector("[data-testid='stDataFrame']", timeout=90_000)
    page.locator(".parcoords").first.wait_for(timeout=120_000)
    page.get_by_text("Best: trial").wait_for(timeout=30_000)
    expect(page.get_by_role("button", name="Retrain the best on train+val")).to_be_visible(timeout=30_000)
    expect(page.get_by_role("combobox", name="Sweep")).to_have_value("#1 grid over lr (finished)", timeout=10_000)
    expect(page.get_by_role("button", name="Stop after running trials")).to_have_count(0)
    shot(page, "sweeps")
