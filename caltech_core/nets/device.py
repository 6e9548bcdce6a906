"""Which torch device a run, an evaluation or Classify uses: the one decision all of them share."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None) → CUDA when available else CPU; asking for 'cuda' without a GPU is a clear error."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA GPU is available; choose 'auto' or 'cpu'")
    return torch.device(name)
