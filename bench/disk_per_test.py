"""pytest plugin: storage writes per test, from this process's /proc/self/io (reaped children included).

    CALTECH101_ROOT=../shared/caltech101 PYTHONPATH=bench .venv/bin/python -m pytest -p disk_per_test -q

Prints the tests that wrote most (net of writes cancelled before write-back, e.g. deleted temporary files) and the
total at the end of the session. Fixtures set up inside a test are charged to the first test that uses them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_written: dict[str, int] = {}


def _net_write_bytes() -> int:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["write_bytes"]) - int(fields["cancelled_write_bytes"])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    before = _net_write_bytes()
    yield
    _written[item.nodeid] = _net_write_bytes() - before


def pytest_terminal_summary(terminalreporter) -> None:
    total = sum(_written.values())
    terminalreporter.section("storage writes per test (net)")
    for nodeid, size in sorted(_written.items(), key=lambda kv: -kv[1])[:40]:
        terminalreporter.write_line(f"{size / 1e6:9.1f} MB  {nodeid}")
    terminalreporter.write_line(f"{total / 1e9:9.2f} GB  all {len(_written)} tests")
