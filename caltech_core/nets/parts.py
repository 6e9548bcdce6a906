"""Torch modules the architecture table's entries put around a network (the table itself imports no torch)."""

from __future__ import annotations

import torch
from torch import nn


class PooledFeatures(nn.Module):
    """timm EfficientNet up to and including global pooling (what feeds dropout + classifier)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.global_pool(self.model.forward_features(x))
