"""The image cache resident in device memory: crops, flips, rotation and normalisation as batched tensor ops.

When the uint8 images of a run fit in GPU memory (Caltech-101: about 2.4 GB at 256 px), they are uploaded once
(`ResidentImages`) and every batch is cut out of them on the device by one gather (`ResidentLoader`): no per
image Python, no host copies, so the GPU is no longer waiting for the CPU. The code is device-agnostic; on
the CPU it is what the tests compare with the host path.

"The same batches" as `transforms.BatchLoader` for a generator seed means: the same random draws
(`transforms.plan_epoch`, so the same order, crop boxes, flips and angles), the same labels, and the same
normalised pixels — bit for bit without rotation; with rotation, the inverse of PIL's rotate (NEAREST, black
corners, centre (S/2, S/2), the affine matrix rounded as PIL rounds it) evaluated in float64, where PIL's
C loop may round a sample lying on a pixel edge the other way: at most `ROTATION_TOLERANCE` of the pixels of
a rotated crop differ (tests/test_resident.py measures it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from caltech_core.data.transforms import BatchLoader, EpochPlan, normalize_batch

if TYPE_CHECKING:
    from caltech_core.config import TrainConfig
    from caltech_core.data.imagecache import ImageCache

DEVICE_SHARE = 0.5  # the images may take at most this share of the free device memory (the model needs the rest)
UPLOAD_CHUNK = 256 * 2**20  # bytes gathered on the host per copy to the device
ROTATION_TOLERANCE = 0.01  # share of a rotated crop's pixels allowed to differ from PIL's (edge rounding)


def resident_bytes(cache: ImageCache) -> int:
    """Bytes the cache's images take as uint8 (what uploading them costs in device memory)."""
    shapes = cache.shapes
    return int((shapes[:, 0] * shapes[:, 1]).sum()) * 3 if len(cache) else 0


def fits(cache: ImageCache, device: torch.device) -> bool:
    """Do the cache's images fit in `device`'s free memory (at most DEVICE_SHARE of it)? False off CUDA."""
    if device.type != "cuda" or not len(cache):
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return resident_bytes(cache) <= DEVICE_SHARE * free


class ResidentImages:
    """Every image of an ImageCache as one flat (pixels, 3) uint8 tensor on `device`, with each image's first
    pixel, height and width (int64 tensors on the device, indexed by cache index)."""

    def __init__(self, cache: ImageCache, device: torch.device | str) -> None:
        self.cache = cache
        self.device = torch.device(device)
        shapes = torch.as_tensor(np.asarray(cache.shapes, dtype=np.int64)).reshape(-1, 2)
        pixels = shapes[:, 0] * shapes[:, 1]
        starts = torch.cumsum(pixels, 0) - pixels
        self.heights, self.widths = shapes[:, 0].to(self.device), shapes[:, 1].to(self.device)
        self.starts = starts.to(self.device)
        self.pixels = torch.empty((int(pixels.sum()), 3), dtype=torch.uint8, device=self.device)
        self.nbytes = self.pixels.numel()
        first, done = 0, 0
        for i in range(len(cache) + 1):  # images gathered into chunks of about UPLOAD_CHUNK, one copy each
            if i == len(cache) or (i > first and 3 * int(pixels[first:i + 1].sum()) > UPLOAD_CHUNK):
                if i > first:
                    chunk = np.concatenate([cache[j].reshape(-1, 3) for j in range(first, i)])
                    self.pixels[done: done + len(chunk)].copy_(torch.from_numpy(chunk))
                    done += len(chunk)
                first = i


class ResidentLoader(BatchLoader):
    """A BatchLoader whose batches are cut out of `ResidentImages` on their device (same draws, same pixels;
    see the module docstring). Length, dropped last batch and `host_batches` are BatchLoader's."""

    def __init__(
        self, images: ResidentImages, indices: Sequence[int], labels: Sequence[int], *, batch_size: int,
        train: bool, cfg: TrainConfig, generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(images.cache, indices, labels, batch_size=batch_size, train=train, cfg=cfg,
                         device=images.device, generator=generator)
        self.images = images
        self._on_device = torch.as_tensor(self.indices, device=images.device)
        self._labels_on_device = self.labels.to(images.device)
        grid = torch.arange(self.size, device=images.device)
        self._oy, self._ox = grid.view(1, -1, 1), grid.view(1, 1, -1)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        plan = self._plan()  # in the caller's thread, from its generator: the host path's very draws
        for b in range(len(self)):
            rows = plan.order[b * self.batch_size: (b + 1) * self.batch_size]
            yield self.batch(plan, rows)

    def batch(self, plan: EpochPlan, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised float NCHW (channels_last) batch and its labels for positions `rows` of `plan`."""
        dev, s = self.images.device, self.size
        pos = rows.to(dev)
        image = self._on_device[pos]
        h, w = self.images.heights[image], self.images.widths[image]
        y0, x0 = _crop_starts(h, w, s, None if plan.crop_u is None else plan.crop_u[rows].to(dev))
        oy, ox = self._oy.expand(len(rows), s, s), self._ox.expand(len(rows), s, s)
        valid = torch.ones((len(rows), s, s), dtype=torch.bool, device=dev)
        angle = plan.angle[rows]
        if bool((angle != 0).any()):  # rotation is applied last: map each output pixel back into the flipped crop
            oy, ox, valid = _unrotate(oy, ox, angle.to(dev), s)
        hflip, vflip = plan.hflip[rows].to(dev).view(-1, 1, 1), plan.vflip[rows].to(dev).view(-1, 1, 1)
        cy = torch.where(vflip, s - 1 - oy, oy)  # the flips come before the rotation
        cx = torch.where(hflip, s - 1 - ox, ox)
        # Into the image: a crop larger than the image is centred on it (zero padding around), as crop_into does.
        pad_y, pad_x = ((s - h).clamp(min=0) // 2).view(-1, 1, 1), ((s - w).clamp(min=0) // 2).view(-1, 1, 1)
        iy, ix = cy - pad_y + y0.view(-1, 1, 1), cx - pad_x + x0.view(-1, 1, 1)
        valid &= (iy >= 0) & (iy < h.view(-1, 1, 1)) & (ix >= 0) & (ix < w.view(-1, 1, 1))
        flat = self.images.starts[image].view(-1, 1, 1) + iy * w.view(-1, 1, 1) + ix
        crops = self.images.pixels[torch.where(valid, flat, 0)]  # (N, S, S, 3)
        crops[~valid] = 0
        return (normalize_batch(crops.permute(0, 3, 1, 2), self.cfg.normalization),
                self._labels_on_device[pos])


def _crop_starts(h: torch.Tensor, w: torch.Tensor, size: int, u: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """`transforms.crop_offset` for a batch: (y0, x0), in float64 as the host computes them from Python floats."""
    out = []
    for k, length in enumerate((h, w)):
        room = length - size
        if u is None:
            start = torch.round(room.double() / 2.0).long()  # half to even, as Python's round
        else:
            start = torch.minimum((u[:, k].double() * (room + 1).double()).floor().long(), room)
        out.append(torch.where(room > 0, start, torch.zeros_like(start)))
    return out[0], out[1]


def _unrotate(
    oy: torch.Tensor, ox: torch.Tensor, angle: torch.Tensor, size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each output pixel of PIL's `rotate(angle)` (NEAREST, centre S/2, no expand) samples its input:
    (y, x, inside) per pixel, with PIL's inverse matrix and its sampling at pixel centres."""
    theta = -torch.deg2rad(torch.remainder(angle.double(), 360.0))
    cos, sin = torch.round(torch.cos(theta), decimals=15), torch.round(torch.sin(theta), decimals=15)
    a, b, d, e = cos, sin, -sin, cos
    centre = size / 2
    c = a * -centre + b * -centre + centre
    f = d * -centre + e * -centre + centre

    def per_image(t: torch.Tensor) -> torch.Tensor:
        return t.view(-1, 1, 1)

    px, py = ox.double() + 0.5, oy.double() + 0.5
    sx = per_image(a) * px + per_image(b) * py + per_image(c)
    sy = per_image(d) * px + per_image(e) * py + per_image(f)
    inside = (sx >= 0) & (sx < size) & (sy >= 0) & (sy < size)
    x, y = sx.clamp(0, size - 1).long(), sy.clamp(0, size - 1).long()  # truncation = floor inside the image
    return y, x, inside


def loader_images(cache: ImageCache, device: torch.device) -> ResidentImages | None:
    """The cache uploaded to `device` when it is CUDA and the images fit there; None for the host path."""
    return ResidentImages(cache, device) if fits(cache, device) else None
