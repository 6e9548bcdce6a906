"""A person's own images in a real Chromium: add a folder on the Data page, check it, train on it, classify with
that run (its own class names)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from browser_kit import set_number, settle, shot
from PIL import Image

from caltech_core.runs.store import RunStore

pytestmark = pytest.mark.browser


def _colour_folder(root: Path) -> Path:
    rng = np.random.default_rng(3)
    for name, colour in (("red things", (200, 30, 30)), ("blue things", (30, 30, 200))):
        for i in range(6):
            pixels = np.clip(np.array(colour) + rng.integers(-40, 40, (40, 48, 3)), 0, 255).astype(np.uint8)
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _menu(page, name: str) -> None:
    """Go to a page through the app's menu (the session, and so the chosen dataset, stays)."""
    page.get_by_role("link", name=name, exact=True).click()
    settle(page)


def test_add_check_train_and_classify_a_folder(server, page, tmp_path: Path, wait_until) -> None:
    url, home = server
    root = _colour_folder(tmp_path / "colours")
    page.goto(url)
    settle(page)
    page.get_by_label("Folder or CSV path").fill(str(root))
    page.get_by_label("Folder or CSV path").press("Enter")
    settle(page)
    page.get_by_role("button", name="Add dataset").click()
    settle(page)
    page.get_by_text("Added colours: 12 images").wait_for()
    page.get_by_role("button", name="Run the health check").click()
    settle(page)
    page.get_by_text("Exact duplicate pairs").wait_for()
    shot(page, "datasets-data-page")

    _menu(page, "Train")
    page.locator("[data-testid='stSelectbox']").filter(has_text="Architecture").click()
    page.get_by_role("option", name="MobileNetV3-Small").click()
    settle(page)
    for label, value in (("Image size (crop, px)", 32), ("Batch size", 4), ("Epochs", 1)):
        set_number(page, label, value)
    page.get_by_role("button", name=re.compile("Queue run")).click()
    settle(page)
    run_id = int(re.search(r"#(\d+)", page.get_by_text(re.compile(r"Queued run #\d+")).inner_text()).group(1))
    store = RunStore(home)
    wait_until(lambda: store.get_run(run_id).status in ("finished", "failed"), timeout=120)
    run = store.get_run(run_id)
    assert run.status == "finished", run.error
    # The Train form started on the dataset chosen on the Data page; the run keeps its classes.
    assert run.results["classes"] == ["blue things", "red things"] and run.config.dataset == "colours"

    _menu(page, "Classify")
    page.locator("[data-testid='stSelectbox']").filter(has_text="Model").click()
    page.get_by_role("option", name=re.compile(rf"#{run_id} .*2 classes")).first.click()
    settle(page)
    page.locator("input[type='file']").set_input_files([str(root / "red things" / "0.png")])
    page.get_by_text(re.compile(r"0\.png → (red|blue) things")).wait_for(timeout=60_000)
    shot(page, "datasets-classify")
