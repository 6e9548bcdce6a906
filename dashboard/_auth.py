"""The optional dashboard password: when one is set, every page asks for it first.

The password comes from Streamlit secrets (`password = "..."` in `.streamlit/secrets.toml`) or the environment
variable `CALTECH_STUDIO_PASSWORD` (the secret wins). It is compared in constant time (`hmac.compare_digest`).
Without one the dashboard is open to whoever can reach it, which by default (`server.address = "127.0.0.1"`
in `.streamlit/config.toml`) is this machine only.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import streamlit as st

from caltech_core import settings

SECRET_KEY = "password"
_SESSION_KEY = "_studio_authenticated"


class SecretsUnreadable(RuntimeError):
    """A secrets file exists but cannot be read: refuse to open rather than run without its password."""


def configured_password() -> str | None:
    """The password from Streamlit secrets, else the environment; None (or empty) means no gate."""
    try:
        secret = st.secrets.get(SECRET_KEY)
    except FileNotFoundError as exc:  # Streamlit's "no secrets file" (and "cannot parse it") error
        existing = [p for p in st.get_option("secrets.files") if Path(p).expanduser().exists()]
        if existing:
            raise SecretsUnreadable(f"{existing[0]} cannot be read ({exc})") from exc
        secret = None
    value = secret if secret is not None else settings.password()
    return str(value) if value else None


def password_matches(given: str, expected: str) -> bool:
    """Constant-time comparison (no timing hint about how much of the password was right)."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def require_password() -> None:
    """Stop the script run with a sign-in form unless no password is set or this session already gave it."""
    try:
        expected = configured_password()
    except SecretsUnreadable as exc:
        st.error(f"The studio's secrets file cannot be read, so it stays locked: {exc}. Fix or remove the file "
                 "and reload this page.", icon=":material/lock:")
        st.stop()
    if expected is None or st.session_state.get(_SESSION_KEY):
        return
    st.title("Caltech-101 CNN Studio")
    with st.form("sign-in"):
        given = st.text_input("Password", type="password", key="studio_password")
        submitted = st.form_submit_button("Sign in", icon=":material/login:")
    if submitted:
        if password_matches(given, expected):
            st.session_state[_SESSION_KEY] = True
            st.session_state.pop("studio_password", None)
            st.rerun()
        st.error("Wrong password.", icon=":material/lock:")
    st.caption(f"This studio is protected by a password (Streamlit secret `{SECRET_KEY}` or ${settings.PASSWORD.name}).")
    st.stop()
