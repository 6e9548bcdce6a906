"""How a failed run is worded: out-of-memory recognised and answered with advice, anything else by its type.

The engine words the failures it catches with `failure_message`; the job runner uses `is_out_of_memory` and
`oom_message` for failures outside the engine. torch is imported only when an exception is checked, so the
job layer can import this module without loading it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from caltech_core.config import TrainConfig


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA (or CPU allocator) out-of-memory, whatever the exception class torch used."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # torch is a hard dependency; this only keeps the check itself from failing
        return False
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def oom_message(cfg: TrainConfig, detail: str = "") -> str:
    """What to tell the user after an out-of-memory failure (`detail`: the error's own first line)."""
    smaller = max(1, cfg.batch_size // 2)
    text = (f"Out of memory training {cfg.arch} with batch size {cfg.batch_size} at image size {cfg.image_size}: "
            f"reduce the batch size (e.g. to {smaller}) or the image size, or stop other jobs using the device.")
    return f"{text} ({detail})" if detail else text


def failure_message(exc: BaseException, cfg: TrainConfig) -> str:
    """The error text of a run the engine caught failing; out-of-memory gets advice on what to change."""
    text = str(exc) or type(exc).__name__
    if is_out_of_memory(exc):
        return oom_message(cfg, text.splitlines()[0])
    return f"{type(exc).__name__}: {text}"
