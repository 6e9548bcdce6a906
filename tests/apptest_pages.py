"""Driving dashboard pages with Streamlit's AppTest (shared by the page and hardening tests)."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")


def open_page(page: str, timeout: float = 120, **query: str) -> AppTest:
    """Run the app on `dashboard/<page>.py` with the given query parameters."""
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.query_params.update(query)
    at.switch_page(f"dashboard/{page}.py")
    return at.run()


def page_texts(at: AppTest) -> str:
    """Every text element's value (markdown, alerts, captions), one per line."""
    parts = [m.value for m in at.markdown] + [e.value for e in at.error] + [w.value for w in at.warning]
    parts += [s.value for s in at.success] + [i.value for i in at.info] + [c.value for c in at.caption]
    return "\n".join(str(p) for p in parts)


def until_background_done(at: AppTest, timeout: float = 120) -> AppTest:
    """Rerun `at` until no background work's progress bar is left on the page (dashboard._shared.background)."""
    import time

    deadline = time.monotonic() + timeout
    while at.get("progress"):
        if time.monotonic() > deadline:
            raise AssertionError(f"background work still running after {timeout:g} s")
        time.sleep(0.2)
        at.run()
    return at
