"""Which job backend runs the queue: "local" (a thread of this process) or a Ray address."""

from __future__ import annotations

from caltech_core import settings

LOCAL = "local"
LOCAL_CLUSTER = "local-cluster"


def check_address(address: str) -> str:
    """`local`, `local-cluster`, `auto`, `ray://host:port` or `host:port`; ValueError naming them otherwise."""
    address = address.strip()
    if address in (LOCAL, LOCAL_CLUSTER, "auto") or address.startswith("ray://"):
        return address
    host, _, port = address.rpartition(":")
    if host and port.isdigit():
        return address
    raise ValueError(f"unknown backend {address!r}: use local, local-cluster, auto, ray://HOST:PORT or HOST:PORT")


def backend_from_env() -> str:
    """The backend `$CALTECH_STUDIO_RAY` asks for ('local' when unset)."""
    return check_address(settings.ray_address() or LOCAL)
