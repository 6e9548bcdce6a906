"""An ensemble architecture: several ImageNet backbones see the same image; their pooled features, concatenated,
feed one linear layer.

It is an ordinary model to the rest of the product (train modes, the frozen-feature fast path, Classify,
Grad-CAM, export, resume): `classifier` is the one linear layer, `backbone` maps an image batch to the
concatenated features. With the backbones frozen ("fc"), training it is a linear head on the features of
every member at once, which is what the `best-offline` preset does.
"""

from __future__ import annotations

import torch
from torch import nn


class Members(nn.Module):
    """The member backbones side by side: (N, 3, H, W) -> (N, sum of their feature sizes)."""

    def __init__(self, members: dict[str, nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleDict(members)
        self.num_features = sum(m.num_features for m in members.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([member(x) for member in self.members.values()], dim=1)


class Ensemble(nn.Module):
    """`Members` -> dropout -> one linear layer."""

    def __init__(self, members: dict[str, nn.Module], num_classes: int, drop_rate: float) -> None:
        super().__init__()
        self.backbone = Members(members)
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(self.backbone.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.backbone(x)))

