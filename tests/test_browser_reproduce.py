"""The Report page's "Reproduce the study" journey in a real Chromium: open the panel, plan the reduced
protocol with this machine's estimate and a budget, see the plan and its cut."""

from __future__ import annotations

import re

import pytest
from browser_kit import choose, open_expander, set_number, settle, shot

pytestmark = pytest.mark.browser


def test_plan_the_reduced_study_from_the_report_page(server, page) -> None:
    url, _ = server
    page.goto(f"{url}/report")
    page.get_by_text("Study report").first.wait_for()
    settle(page)
    open_expander(page, "Reproduce the study")
    choose(page, "Scale", "reduced")
    set_number(page, "Budget (minutes, 0 = none)", 1)
    page.get_by_role("button", name=re.compile("Plan")).click()
    settle(page)  # one AlexNet step timed on this machine, then the plan
    summary = page.get_by_text(re.compile(r"reduced scale, 1 repeat\(s\): 11 runs — 0 done")).inner_text()
    # One minute fits no 30-epoch AlexNet run, even at 64 px: everything is listed over the budget.
    assert "0 to run" in summary and "11 over the 1-minute budget" in summary, summary
    assert page.locator("[data-testid='stDataFrame']").count() >= 2  # the plan above the report's tables
    shot(page, "report_reproduce_plan")
