"""Environment settings: every variable the studio reads, in one table, with one reader each.

The README's "Environment settings" table is this table. A module never reads `os.environ` itself; it calls
the reader here, so the name, the default and the meaning of each variable live in one place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EnvVar:
    """One environment variable: its name, what it means and what applies when it is unset."""

    name: str
    meaning: str
    default: str

    def get(self) -> str:
        """The variable's value, stripped; "" when unset or blank."""
        return os.environ.get(self.name, "").strip()


DATASET_ROOT = EnvVar("CALTECH101_ROOT", "folder holding 101_ObjectCategories/, train.txt and test.txt",
                      "./data/caltech101")
HOME = EnvVar("CALTECH_STUDIO_HOME", "the run store: runs.sqlite, runs/<id>/, cache/", "~/.caltech_studio")
THREADS = EnvVar("CALTECH_STUDIO_THREADS", "cores the image threads may use (several processes on one box)",
                 "every core")
OFFLINE = EnvVar("CALTECH_STUDIO_OFFLINE", "1 forbids downloads of ImageNet weights (the CLI's --offline)", "0")
RAY = EnvVar("CALTECH_STUDIO_RAY", "job backend: local, local-cluster, auto, ray://HOST:PORT or HOST:PORT", "local")
RAY_STORE = EnvVar("CALTECH_STUDIO_RAY_STORE", "the store folder as Ray workers see it", "the store's own path")
RAY_CPUS = EnvVar("CALTECH_STUDIO_RAY_CPUS", "CPUs a Ray worker reserves per run", "1")
FEATURE_RUNTIME = EnvVar("CALTECH_STUDIO_FEATURE_RUNTIME", "frozen features on the CPU: auto (OpenVINO where "
                         "installed, on x86-64), openvino or onnxruntime", "auto")
PASSWORD = EnvVar("CALTECH_STUDIO_PASSWORD", "dashboard password (Streamlit secrets take precedence)", "no gate")
MALLOC = EnvVar("GLIBC_TUNABLES", "glibc's malloc settings, read as a process starts; `make run` (and `reproduce`, "
                "`sweep`, which start over with it) add glibc.malloc.arena_max=1: one heap for every thread, so a "
                "training thread reuses freed memory as the CLI's foreground runs do", "glibc's defaults")

ALL: tuple[EnvVar, ...] = (DATASET_ROOT, HOME, THREADS, OFFLINE, RAY, RAY_STORE, RAY_CPUS, FEATURE_RUNTIME, PASSWORD,
                           MALLOC)

ONE_MALLOC_ARENA = "glibc.malloc.arena_max=1"  # the Makefile's `run` sets it too (tests/test_settings.py checks)

DEFAULT_DATASET_ROOT = Path("data") / "caltech101"


def studio_home() -> Path:
    """`$CALTECH_STUDIO_HOME`, else `~/.caltech_studio`."""
    value = HOME.get()
    return Path(value).expanduser() if value else Path.home() / ".caltech_studio"


def dataset_root() -> Path | None:
    """`$CALTECH101_ROOT` when set, else None (the caller picks its default)."""
    value = DATASET_ROOT.get()
    return Path(value).expanduser() if value else None


def thread_limit() -> int | None:
    """`$CALTECH_STUDIO_THREADS` as a core count (at least 1), None when unset; ValueError when not a number."""
    value = THREADS.get()
    if not value:
        return None
    try:
        return max(1, int(value))
    except ValueError:
        raise ValueError(f"{THREADS.name} must be a whole number of cores (got {value!r})") from None


def offline() -> bool:
    """True when `$CALTECH_STUDIO_OFFLINE` forbids downloads."""
    return OFFLINE.get().lower() not in ("", "0", "false", "no")


def set_offline() -> None:
    """Forbid downloads in this process (the CLI's --offline)."""
    os.environ[OFFLINE.name] = "1"


def ray_address() -> str:
    """`$CALTECH_STUDIO_RAY`, "" when unset."""
    return RAY.get()


def ray_worker_home() -> str:
    """`$CALTECH_STUDIO_RAY_STORE`, "" when unset."""
    return RAY_STORE.get()


def ray_cpus() -> str:
    """`$CALTECH_STUDIO_RAY_CPUS`, "" when unset."""
    return RAY_CPUS.get()


FEATURE_RUNTIMES = ("auto", "openvino", "onnxruntime")


def feature_runtime() -> str:
    """`$CALTECH_STUDIO_FEATURE_RUNTIME` in lower case, "auto" when unset; ValueError when it names no runtime."""
    value = FEATURE_RUNTIME.get().lower() or "auto"
    if value not in FEATURE_RUNTIMES:
        raise ValueError(f"{FEATURE_RUNTIME.name} must be one of {', '.join(FEATURE_RUNTIMES)} (got {value!r})")
    return value


def one_malloc_arena() -> bool:
    """This process was started with glibc's malloc held to one arena (`$GLIBC_TUNABLES`): every thread allocates
    from the main heap, as the main thread does."""
    return ONE_MALLOC_ARENA in MALLOC.get().split(":")


def with_one_malloc_arena(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's environment) for a process to start with glibc's malloc held to one arena,
    its other tunables kept."""
    env = dict(os.environ if env is None else env)
    tunables = [t for t in env.get(MALLOC.name, "").split(":") if t and not t.startswith("glibc.malloc.arena_max=")]
    return {**env, MALLOC.name: ":".join([*tunables, ONE_MALLOC_ARENA])}


def password() -> str:
    """`$CALTECH_STUDIO_PASSWORD`, "" when unset."""
    return os.environ.get(PASSWORD.name, "")
