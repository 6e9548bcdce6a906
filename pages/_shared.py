"""Helpers every page uses: the shared store and job manager, the dataset root, run labels.

Not a page itself (the leading underscore keeps it out of navigation). Resources are cached with
`st.cache_resource`, so every browser session shares one store connection and one job manager.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import streamlit as st

from caltech_core import data, store
from caltech_core.config import ARCH_LABELS, TrainConfig

FINISHED = "finished"
ACTIVE = ("queued", "running")


def _use_st_navigation() -> None:
    """Make a fresh server use streamlit_app.py's st.navigation even when the first URL is a sub-page.

    Streamlit decides once per process, at the first page load, whether the app is an old-style
    "pages/ folder" app; until the entry point has called st.navigation once, a first visit to e.g.
    /monitor runs pages/monitor.py alone with an auto-generated menu (listing _shared.py too). Every page
    imports this module first, so the first such run clears that flag and reruns through the entry point.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if getattr(PagesManager, "uses_pages_directory", None) and st.runtime.exists():
        PagesManager.uses_pages_directory = False
        st.rerun()


_use_st_navigation()


def studio_home() -> Path:
    """The store folder: $CALTECH_STUDIO_HOME, else ~/.caltech_studio."""
    return store.default_home()


@st.cache_resource(show_spinner=False)
def _store(home: str) -> store.RunStore:
    return store.RunStore(Path(home))


@st.cache_resource(show_spinner=False)
def _manager(home: str) -> Any:
    # Imported here: the job manager pulls in torch, which the Data page does not need.
    from caltech_core import jobs

    return jobs.get_manager(Path(home))


def get_store() -> store.RunStore:
    """The run store of this studio home, shared by all sessions."""
    return _store(str(studio_home()))


def get_manager() -> Any:
    """The process-wide job manager (one training at a time, shared by all sessions)."""
    return _manager(str(studio_home()))


def data_root() -> Path | None:
    """The Caltech-101 folder if found ($CALTECH101_ROOT, then ./data/caltech101), else None."""
    try:
        return data.resolve_root()
    except data.DatasetNotFoundError:
        return None


def missing_data_message() -> str:
    """Why the dataset was not found and what to do, as the data module words it."""
    try:
        data.resolve_root()
    except data.DatasetNotFoundError as exc:
        return str(exc)
    return ""


def default_download_dir() -> Path:
    """Where the download button puts the dataset: $CALTECH101_ROOT if set, else ./data/caltech101."""
    return Path(os.environ.get("CALTECH101_ROOT") or Path("data") / "caltech101")


def run_config(record: Any) -> TrainConfig | None:
    """The TrainConfig of a run record (the store may hold it as a config or as a dict)."""
    cfg = getattr(record, "config", None)
    if isinstance(cfg, TrainConfig):
        return cfg
    if isinstance(cfg, dict):
        return TrainConfig.from_dict(cfg)
    return None


def run_label(record: Any) -> str:
    """'#12 ResNet-18 · name (finished)': short, unique, readable."""
    cfg = run_config(record)
    arch = ARCH_LABELS.get(cfg.arch, cfg.arch) if cfg else "?"
    name = f" · {cfg.name}" if cfg and cfg.name else ""
    return f"#{record.id} {arch}{name} ({record.status})"


def results_of(record: Any) -> dict[str, Any]:
    """The results dict of a run ({} until it has some)."""
    return dict(getattr(record, "results", None) or {})


def format_seconds(seconds: float | None) -> str:
    """'1 h 02 min', '3 min 05 s', '12 s'; '—' when unknown."""
    if seconds is None:
        return "—"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"
