"""How the suite runs itself: `make test`'s second step (`pytest -m timing`) collects only the files whose text
holds `pytest.mark.timing` (tests/conftest.py, `pytest_ignore_collect`), so a timing test marked any other way would
silently never run."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_every_timing_mark_is_spelled_the_way_the_timing_run_finds_it() -> None:
    files = [path for path in TESTS.glob("test_*.py") if path.name != Path(__file__).name]
    marked = {path.name for path in files if re.search(r"\bmark\s*\.\s*timing\b|[\"']timing[\"']", path.read_text())}
    spelled = {path.name for path in files if "pytest.mark.timing" in path.read_text()}
    assert marked == spelled, "spell the mark pytest.mark.timing in these files"
    assert {"test_browser_background.py", "test_estimate.py"} <= spelled
