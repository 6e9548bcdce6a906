"""Browser journey: write a sweep on the Sweeps page, start it, watch its trials arrive in the table and the
parallel-coordinates chart appear."""

from __future__ import annotations

import pytest
from browser_kit import settle, shot

pytestmark = pytest.mark.browser

SPEC = """method: grid
metric: {name: val_loss, goal: minimize}
parameters:
  lr: {values: [0.001, 0.003]}
base: {arch: mobilenet_v3_small, image_size: 64, epochs: 1, batch_size: 8, device: cpu}
"""


def test_start_a_sweep_and_watch_its_trials(server, page) -> None:
    url, _home = server
    page.goto(f"{url}/sweeps")
    settle(page)
    page.get_by_label("Sweep spec (YAML)").fill(SPEC)
    page.get_by_role("button", name="Start sweep").click()
    settle(page)
    # The live fragment refreshes every 2 s: both trials end up "complete" in the table, then the chart shows.
    page.wait_for_selector("[data-testid='stDataFrame']", timeout=90_000)
    page.locator(".parcoords").first.wait_for(timeout=120_000)
    page.get_by_text("Best: trial").wait_for(timeout=30_000)
    assert page.get_by_role("button", name="Retrain the best on train+val").is_visible()
    shot(page, "sweeps")
