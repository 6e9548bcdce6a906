"""Safe by default: the dashboard listens on 127.0.0.1 only, and an optional password gates every page."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from apptest_pages import page_texts
from browser_kit import REPO, settle, shot, start_server, stop_server
from streamlit.testing.v1 import AppTest

PAGES = ("data", "train", "monitor", "errors", "compare", "classify", "report")


def _gated(page: str, *, secret: str | None = None) -> AppTest:
    """The page script itself as the app (every run goes through its own gate; the entry point's gate is the
    browser test's)."""
    at = AppTest.from_file(str(REPO / "dashboard" / f"{page}.py"), default_timeout=120)
    if secret is not None:
        at.secrets["password"] = secret
    return at.run()


def _sign_in(at: AppTest, password: str) -> AppTest:
    at.text_input(key="studio_password").input(password)
    at.button[0].click()  # the form's "Sign in"
    return at.run()


def test_config_binds_to_localhost() -> None:
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"


@pytest.mark.parametrize("page", PAGES)
def test_password_from_environment_gates_every_page(page: str, studio_home: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALTECH_STUDIO_PASSWORD", "correct horse")
    at = _gated(page)
    assert not at.exception
    assert [t.label for t in at.text_input] == ["Password"]  # nothing of the page itself
    assert [t.value for t in at.title] == ["Caltech-101 CNN Studio"]
    assert not at.selectbox and not at.number_input and not at.dataframe

    at = _sign_in(at, "correct horsE")
    assert "Wrong password." in page_texts(at)
    assert [t.label for t in at.text_input] == ["Password"]

    at = _sign_in(at, "correct horse")
    assert not at.exception
    assert "Wrong password." not in page_texts(at)
    assert at.title and at.title[0].value != "Caltech-101 CNN Studio"  # the page's own title
    at.run()  # the session stays signed in
    assert "Password" not in [t.label for t in at.text_input]


def test_password_from_secrets_wins_over_environment(studio_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALTECH_STUDIO_PASSWORD", "from-env")
    at = _gated("monitor", secret="from-secrets")
    assert _sign_in(at, "from-env").text_input[0].label == "Password"
    at = _sign_in(at, "from-secrets")
    assert [t.value for t in at.title] == ["Monitor"]


def test_no_password_no_gate(studio_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALTECH_STUDIO_PASSWORD", raising=False)
    at = _gated("monitor")
    assert not at.exception and "Password" not in [t.label for t in at.text_input]


def test_password_compare_is_constant_time_digest() -> None:
    from dashboard._auth import password_matches

    assert password_matches("pässword", "pässword")
    assert not password_matches("password", "pässword") and not password_matches("", "x")


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of sockets listening on `port`, from /proc/net/tcp{,6} (hex, as the kernel writes)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                found.add(address)
    return found


@pytest.mark.browser
def test_real_server_listens_on_localhost_and_asks_for_the_password(mini_root: Path, tmp_path: Path,
                                                                    page) -> None:
    # No --server.address: the checked-in .streamlit/config.toml decides.
    proc, url = start_server(mini_root, tmp_path / "home", tmp_path / "streamlit.log", address=None,
                             env={"CALTECH_STUDIO_PASSWORD": "open sesame"})
    port = int(url.rsplit(":", 1)[1])
    try:
        assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only; no 0.0.0.0 or :: socket
        page.goto(f"{url}/monitor")
        settle(page)
        box = page.get_by_label("Password", exact=True)
        box.wait_for()
        assert page.get_by_role("heading", name="Monitor").count() == 0
        box.fill("guess")
        page.get_by_role("button", name="Sign in").click()
        page.get_by_text("Wrong password.").wait_for()
        page.get_by_label("Password", exact=True).fill("open sesame")
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("heading", name="Monitor").wait_for()
        settle(page)
        assert page.get_by_label("Password", exact=True).count() == 0
        page.get_by_text("No runs yet", exact=False).or_(page.get_by_text("Nothing is training")).first.wait_for()
        shot(page, "signed-in")
    finally:
        stop_server(proc)
