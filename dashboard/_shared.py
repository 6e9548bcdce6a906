"""Helpers several pages use: the shared store and job manager, the dataset root, run labels, progress bars.

Not a page itself (streamlit_app.py lists the pages). Importing it only defines functions and changes no
Streamlit state. Resources are cached with `st.cache_resource`, so every browser session shares one store
connection and one job manager.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from caltech_core import layout, settings
from caltech_core.background import TaskState, tasks
from caltech_core.data import dataset
from caltech_core.runs import backend as job_backend
from caltech_core.runs import store
from caltech_core.status import Phase, ProgressFn

if TYPE_CHECKING:
    from caltech_core.runs.manager import JobManager

log = logging.getLogger(__name__)


def studio_home() -> Path:
    """The store folder: $CALTECH_STUDIO_HOME, else ~/.caltech_studio."""
    return settings.studio_home()


@st.cache_resource(show_spinner=False)
def _store(home: str) -> store.RunStore:
    return store.RunStore(Path(home))


def _manager(home: str, backend: str) -> JobManager:
    # Imported here: the job manager pulls in torch, which the Data page does not need. It keeps one manager per
    # store and backend for the whole process (every session), so no st.cache_resource here.
    from caltech_core.runs import manager

    return manager.get_manager(Path(home), backend=backend)


@st.cache_resource(show_spinner=False)
def _backend_setting() -> dict[str, str]:
    # One per server process, shared by every session (like the job manager it picks).

    try:
        return {"backend": job_backend.backend_from_env()}
    except ValueError as exc:
        return {"backend": job_backend.LOCAL, "problem": f"{settings.RAY.name}: {exc}; training in this process."}


def backend() -> str:
    """Where queued runs train: "local" (this process, one at a time) or a Ray address (runs side by side)."""
    return _backend_setting()["backend"]


def store_problem(home: Path, exc: BaseException) -> str:
    """What to tell the user when the store cannot be opened; names the file and what to do."""
    db = layout.database(home)
    if isinstance(exc, sqlite3.DatabaseError):
        return (f"The run store `{db}` cannot be read ({exc}). Nothing was changed or deleted. Restore it from "
                "a backup, or move it aside (e.g. rename it to runs.sqlite.bad) to start an empty store, or set "
                f"{settings.HOME.name} to another folder; then reload this page.")
    return (f"The studio home `{home}` cannot be used ({exc}). Make it a writable folder, or set "
            f"{settings.HOME.name} to another folder; then reload this page.")


def _open_or_stop(opener: Any, what: str) -> Any:
    """Call `opener(home)`; on a broken store show why (full trace to the server log) and stop the page."""
    home = studio_home()
    try:
        return opener(str(home))
    except (sqlite3.DatabaseError, OSError) as exc:
        log.exception("cannot open the %s of %s", what, home)
        st.error(store_problem(home, exc), icon=":material/database:")
        st.stop()


def get_store() -> store.RunStore:
    """The run store of this studio home, shared by all sessions (a broken store stops the page with advice)."""
    return _open_or_stop(_store, "run store")


def get_manager() -> JobManager:
    """The process-wide job manager of the chosen backend, shared by all sessions (the local one trains one run at
    a time; a Ray cluster that cannot be reached stops the page with the reason)."""
    from caltech_core.runs.raybackend import RayBackendError

    try:
        return _open_or_stop(lambda home: _manager(home, backend()), "job manager")
    except RayBackendError as exc:
        st.error(f"{exc}. Start the cluster, or pick another backend in the sidebar of the Train page.",
                 icon=":material/hub:")
        st.stop()


def backend_sidebar() -> None:
    """The Train page's sidebar setting: train in this process, or on a Ray cluster (changed only while nothing of
    the current backend is queued or running)."""

    setting = _backend_setting()
    with st.sidebar:
        st.subheader("Where runs train")
        if setting.get("problem"):
            st.warning(setting["problem"])
        current = setting["backend"]
        choice = st.radio("Backend", ("local", "ray"), index=0 if current == job_backend.LOCAL else 1,
                          key="backend_choice", format_func={"local": "This process (one run at a time)",
                                                              "ray": "Ray cluster (runs side by side)"}.get)
        address = job_backend.LOCAL
        if choice == "ray":
            address = st.text_input(
                "Ray address", value=job_backend.LOCAL_CLUSTER if current == job_backend.LOCAL else current,
                key="backend_address",
                help="local-cluster (start Ray on this machine), auto (the cluster `ray start` made here), "
                     "ray://HOST:PORT or HOST:PORT. Each run asks for 1 GPU when the cluster has GPUs, else "
                     f"${settings.RAY_CPUS.name} CPUs (default 1). See docs/scaling.md.")
        st.caption(f"Now: {'this process' if current == job_backend.LOCAL else f'Ray ({current})'}")
        if address.strip() != current and st.button("Use this backend", key="backend_apply"):
            _switch_backend(setting, address)


def _switch_backend(setting: dict[str, str], address: str) -> None:
    from caltech_core.runs import raybackend

    try:
        address = job_backend.check_address(address)
    except ValueError as exc:
        st.error(str(exc))
        return
    busy = get_manager()
    active = busy.running() + busy.queued()
    if active:
        st.error(f"{len(active)} run(s) are queued or running on the current backend; wait for them or cancel them "
                 "(Monitor) before switching.")
        return
    try:
        with st.spinner(f"Connecting to {address}…"):
            _manager(str(studio_home()), address)
    except raybackend.RayBackendError as exc:
        st.error(str(exc))
        return
    setting["backend"] = address
    setting.pop("problem", None)
    st.rerun()


def data_root() -> Path | None:
    """The Caltech-101 folder if found ($CALTECH101_ROOT, then ./data/caltech101), else None."""
    try:
        return dataset.resolve_root()
    except dataset.DatasetNotFoundError:
        return None


def missing_data_message() -> str:
    """Why the dataset was not found and what to do, as the data module words it."""
    try:
        dataset.resolve_root()
    except dataset.DatasetNotFoundError as exc:
        return str(exc)
    return ""


def default_download_dir() -> Path:
    """Where the download button puts the dataset: $CALTECH101_ROOT if set, else ./data/caltech101."""
    return settings.dataset_root() or settings.DEFAULT_DATASET_ROOT


def download_folders() -> list[Path]:
    """The folders the Data page may download into: ./data, the studio home and $CALTECH101_ROOT (if set)."""
    folders = [Path("data"), studio_home()]
    if settings.dataset_root() is not None:
        folders.append(settings.dataset_root())
    return [f.expanduser().resolve() for f in folders]


def confined_download_dir(text: str) -> Path:
    """The typed download folder, resolved (symlinks and '..' included); ValueError saying where it may go
    when it lies outside every folder of `download_folders()`."""
    allowed = download_folders()
    places = ", ".join(f"`{f}`" for f in allowed)
    if not text.strip():
        raise ValueError(f"Type the folder to download into; it must be inside {places}.")
    dest = Path(text.strip()).expanduser().resolve()
    if not any(dest.is_relative_to(folder) for folder in allowed):
        raise ValueError(f"Not downloaded: `{dest}` is outside the folders the studio may write to ({places}). "
                         "Choose a folder inside one of them, e.g. data/caltech101.")
    return dest


def run_label(record: store.RunRecord) -> str:
    """The run's label with its status, e.g. '#12 baseline (finished)', for pickers."""
    return f"{record.label} ({record.status})"


def progress_bar(phase: Phase, done: int = 0, total: int = 0, *, fraction: float = 0.0, detail: str = "") -> None:
    """One progress bar for every phase. A phase that counts something (`phase.unit`: MB downloaded, images
    cached) shows `done` of `total` and fills to their ratio; any other shows `detail` (epochs, ETA) at the run's
    `fraction`. A failed run reads "failed", its bar left where it stopped."""
    if phase is Phase.FAILED:
        text = phase.label
    elif phase.unit:
        fraction = done / total if total else 0.0
        text = f"{phase.label}: {_count(phase.unit, done, total)}"
    else:
        text = f"{phase.label}: {detail}" if detail else phase.label
    st.progress(min(max(fraction, 0.0), 1.0), text=text)


def _count(unit: str, done: int, total: int) -> str:
    """'1.5 of 9.8 MB', '120 of 300 images'; only the done part while the total is unknown (0)."""
    if unit == "bytes":
        return f"{done / 2**20:.1f} of {total / 2**20:.1f} MB" if total else f"{done / 2**20:.1f} MB"
    return f"{done} of {total} {unit}" if total else f"{done} {unit}"


def format_seconds(seconds: float | None) -> str:
    """'1 h 02 min', '3 min 05 s', '12 s', '0.4 s'; '—' when unknown."""
    if seconds is None:
        return "—"
    if seconds < 9.95:
        return f"{seconds:.1f} s" if seconds >= 0.05 else "< 0.1 s"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


POLL_SECONDS = 1.0  # how often a page waiting on background work looks at its progress


def background(key: str, fn: Callable[[ProgressFn], Any], label: str, *, wait: float = 0.0) -> Any:
    """The result of `fn(progress)`, computed once per `key` on a background thread (caltech_core.background).

    Returns the result when done; else None, after showing where the work stands: a progress bar that updates
    by itself (a polling fragment, which reruns the whole page once the result is in), or the error and a Retry
    button. The work goes on when the user leaves the page; another tab asking for `key` waits on the same work.
    `wait` seconds: how long to wait for the result before showing a bar (for work that is often quick).
    """
    state = tasks().state(key)
    if state.status == "missing":
        state = tasks().submit(key, fn, label=label)
    if state.status == "running" and wait > 0:
        state = tasks().wait(key, wait)
    if state.status == "done":
        return state.result
    if state.status == "failed":
        st.error(f"{state.label} failed: {state.error}", icon=":material/error:")
        if st.button("Retry", key=f"background-retry-{key}", icon=":material/refresh:"):
            tasks().submit(key, fn, label=label)
            st.rerun()
        return None
    _background_progress(key)
    return None


@st.fragment(run_every=POLL_SECONDS)
def _background_progress(key: str) -> None:
    # Reruns alone every POLL_SECONDS; once the work has ended, one full rerun draws its result (or its error).
    state = tasks().state(key)
    if state.status != "running":
        st.rerun()
    st.progress(state.fraction, text=background_text(state))


def background_text(state: TaskState) -> str:
    """'Checking images: 1200 of 8677 (about 15 s left)'; 'Checking images… (4.2 s so far)' until the total is
    known (another tab's visit shows the same work's time, not a new start)."""
    if not state.total:
        return f"{state.label}… ({format_seconds(time.time() - state.started)} so far)"
    left = state.seconds_left()
    eta = f" (about {format_seconds(left)} left)" if left is not None else ""
    return f"{state.label}: {state.done} of {state.total}{eta}"
