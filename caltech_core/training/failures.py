"""How a training failure is worded for the person who started the run."""

from __future__ import annotations

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


def oom_message(cfg: TrainConfig) -> str:
    """What to tell the user after an out-of-memory failure."""
    smaller = max(1, cfg.batch_size // 2)
    return (
        f"Out of memory with batch size {cfg.batch_size} at image size {cfg.image_size}: reduce the batch size "
        f"(e.g. to {smaller}) and train again."
    )
