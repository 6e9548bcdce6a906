"""Classify's fast forward pass on the CPU: onnxruntime, with Grad-CAM from the same pass where that is exact.

The model is exported once (in memory) with two outputs: the logits and the feature map Grad-CAM reads (the
architecture table's `gradcam` layer). When that map reaches the logits only through global average pooling
and the final linear layer (ResNets, EfficientNet-Lite), the gradient of class c's logit with respect to the
map is W[c] / (H*W) at every position, so Grad-CAM's channel weights are W[c] (up to a factor that its
normalisation removes) and the map needs no backward pass: Grad-CAM is CAM. Whether that holds is checked on
the model itself when the session is built (the logits recomputed from the pooled map); where it does not
(AlexNet/VGG/MobileNet's multi-layer classifiers, an ensemble's concatenated members), Grad-CAM stays torch's
backward pass and only the prediction runs here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from caltech_core.nets.architectures import get_spec
from caltech_core.training.features import onnx_session

CHECK_TOLERANCE = 1e-3  # logits recomputed from the pooled map vs the network's own, relative to their scale


class _WithMap(nn.Module):
    """The model returning (logits, the Grad-CAM layer's output) for export."""

    def __init__(self, model: nn.Module, layer: nn.Module) -> None:
        super().__init__()
        self.model, self.layer = model, layer

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}
        handle = self.layer.register_forward_hook(lambda _m, _i, out: captured.__setitem__("map", out))
        try:
            logits = self.model(x)
        finally:
            handle.remove()
        return logits, captured["map"]


class OnnxForward:
    """`run(batch) -> (logits, maps)` through onnxruntime; `cam(map, class_index)` when CAM is exact here."""

    def __init__(self, model: nn.Module, arch: str, image_size: int, threads: int) -> None:
        model.eval()
        self.session: Any = onnx_session(_WithMap(model, get_spec(arch).gradcam(model)), image_size, threads,
                                         ["logits", "map"])
        self.weight: np.ndarray | None = self._linear_head(model, arch, image_size)

    def run(self, batch: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        logits, maps = self.session.run(None, {"x": batch.contiguous().numpy()})
        return torch.from_numpy(logits), maps

    @property
    def exact_cam(self) -> bool:
        return self.weight is not None

    def cam(self, feature_map: np.ndarray, class_index: int) -> torch.Tensor:
        """Grad-CAM of `class_index` from one image's (C, H, W) map, before resizing: ReLU(sum_k W[c, k] A_k)."""
        if self.weight is None:
            raise ValueError("CAM equals Grad-CAM only for a pooled linear head (see exact_cam)")
        return torch.relu(torch.einsum("k,khw->hw", torch.from_numpy(self.weight[class_index]),
                                       torch.from_numpy(feature_map)))

    def _linear_head(self, model: nn.Module, arch: str, image_size: int) -> np.ndarray | None:
        """The final layer's weights when the logits are W · mean(map) + b, checked on a random batch."""
        output = model.get_submodule(get_spec(arch).output)
        if not isinstance(output, nn.Linear):
            return None
        x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
        logits, maps = self.run(x)
        if maps.ndim != 4 or maps.shape[1] != output.in_features:
            return None
        weight = output.weight.detach().float()
        bias = output.bias.detach().float() if output.bias is not None else 0.0
        again = torch.from_numpy(maps).mean(dim=(2, 3)) @ weight.T + bias
        scale = float(logits.abs().max()) or 1.0
        return weight.numpy() if float((again - logits).abs().max()) <= CHECK_TOLERANCE * scale else None
