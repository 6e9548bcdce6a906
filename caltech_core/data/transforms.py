"""Batched training/evaluation transforms over the uint8 image cache (torchvision transforms v2 functional ops).

Per batch: crops are copied straight out of the memmapped cache into one (N, S, S, 3) uint8 host tensor
(pinned when the device is CUDA), moved with non_blocking, viewed as NCHW (which makes it channels_last),
then converted to float and normalised in one multiply-add on the device. Flips and rotation are applied per
image to the crop in a background thread; on the CPU a second one converts while the first crops. All random
choices of an epoch (order, crop offsets, flips, angles) are drawn up front from the caller's torch.Generator,
so a run is reproducible whatever the background prefetch thread's timing.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from caltech_core.data.threads import worker_threads

if TYPE_CHECKING:
    from caltech_core.config import TrainConfig
    from caltech_core.data.imagecache import ImageCache

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
PREFETCH = 2  # batches prepared ahead by the background thread


def is_deterministic(cfg: TrainConfig) -> bool:
    """True when the training transform has no randomness (no augmentations): features can be cached."""
    return not cfg.augment


@dataclass(frozen=True)
class EpochPlan:
    """Every random choice of one pass, drawn up front: image order and per-image augmentation parameters."""

    order: torch.Tensor  # positions into the loader's indices
    crop_u: torch.Tensor | None  # (n, 2) uniform [0, 1): random crop offsets (y, x); None = centre crop
    hflip: torch.Tensor  # (n,) bool
    vflip: torch.Tensor  # (n,) bool
    angle: torch.Tensor  # (n,) degrees


def plan_epoch(n: int, *, train: bool, cfg: TrainConfig, generator: torch.Generator) -> EpochPlan:
    """The random choices of one pass over `n` images (eval: fixed order, centre crop, no flips)."""
    aug = set(cfg.augment) if train else set()
    order = torch.randperm(n, generator=generator) if train else torch.arange(n)
    crop_u = torch.rand(n, 2, generator=generator) if "crop" in aug else None
    hflip = torch.rand(n, generator=generator) < 0.5 if "hflip" in aug else torch.zeros(n, dtype=torch.bool)
    vflip = torch.rand(n, generator=generator) < 0.5 if "vflip" in aug else torch.zeros(n, dtype=torch.bool)
    if "rotate" in aug:
        angle = (torch.rand(n, generator=generator) * 2 - 1) * cfg.rotate_degrees
    else:
        angle = torch.zeros(n)
    return EpochPlan(order, crop_u, hflip, vflip, angle)


def crop_offset(length: int, size: int, u: float | None) -> int:
    """Start of a `size` window in `length` pixels: u uniform in [0, 1) → RandomCrop, None → CenterCrop."""
    room = length - size
    if room <= 0:
        return 0
    if u is None:
        return int(round(room / 2.0))  # torchvision's center_crop rounding
    return min(int(u * (room + 1)), room)  # = torch.randint(0, room + 1) as in RandomCrop


def crop_into(
    image: np.ndarray, out: np.ndarray, u_y: float | None, u_x: float | None, hflip: bool = False,
    vflip: bool = False,
) -> None:
    """Copy a (S, S) window of an HWC uint8 image into `out` (S, S, 3), then flip it as asked.

    Images smaller than the window are zero-padded around the centre, like torchvision's crop.
    """
    size = out.shape[0]
    h, w = image.shape[:2]
    y, x = crop_offset(h, size, u_y), crop_offset(w, size, u_x)
    patch = image[y: y + size, x: x + size]
    if patch.shape[:2] == (size, size):
        out[...] = patch
    else:
        out.fill(0)  # like torchvision's crop of a too-small image: pad with zeros around the centre
        py, px = (size - patch.shape[0]) // 2, (size - patch.shape[1]) // 2
        out[py: py + patch.shape[0], px: px + patch.shape[1]] = patch
    dims = [d for d, flag in ((1, hflip), (0, vflip)) if flag]
    if dims:
        # torch.flip has a real kernel; numpy would copy a reversed (W, 3) axis 3 bytes at a time (~10x slower).
        t = torch.from_numpy(out)
        t.copy_(t.flip(dims))


def normalization_affine(normalization: str, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, bias) per channel with (x / 255 - mean) / std == x * scale + bias, for a uint8 x."""
    mean, std = (torch.tensor(v, dtype=torch.float32, device=device) for v in NORMALIZATION[normalization])
    return 1.0 / (255.0 * std), -mean / std


def normalize_batch(batch: torch.Tensor, normalization: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 NCHW → float32 normalised NCHW, channels_last: v2's to_dtype(scale=True) + normalize, fused.

    One conversion into `out` (a new channels_last tensor when None), then one in-place multiply-add
    x * scale + bias over rows of W*3 values: channels are innermost in channels_last memory, and a 3-vector
    broadcast over that axis does not vectorise where a tiled row does (4x faster here).
    """
    n, c, h, w = batch.shape
    if out is None:
        out = torch.empty((n, c, h, w), dtype=torch.float32, device=batch.device,
                          memory_format=torch.channels_last)
    out.copy_(batch)
    scale, bias = normalization_affine(normalization, batch.device)
    rows = out.permute(0, 2, 3, 1).view(n * h, w * c)  # the same memory
    torch.addcmul(bias.repeat(w), rows, scale.repeat(w), out=rows)
    return out


def rotate_into(out: np.ndarray, angle: float) -> None:
    """Rotate one HWC uint8 crop in place about its centre (nearest, black corners: RandomRotation's defaults).

    Runs v2's rotate on the PIL kernel: on the CPU that is several times faster than the tensor kernel.
    """
    rotated = F.rotate(Image.fromarray(out), angle, interpolation=InterpolationMode.NEAREST)
    out[...] = np.asarray(rotated)


class Flips(NamedTuple):
    """Rows of a host batch still to flip horizontally / vertically (on the device, in `_finish`)."""

    horizontal: list[int]
    vertical: list[int]


NO_FLIPS = Flips([], [])


class BufferRing:
    """PREFETCH + 2 tensors allocated once and handed out in turn (as views of their first n rows).

    That many batches can be alive at once in the loader's pipeline: the consumer's, the queued ones and the
    one being filled; a buffer comes round again only after the consumer has drawn the batches after it.
    """

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, memory_format: torch.memory_format) -> None:
        self.shape, self.dtype, self.memory_format = shape, dtype, memory_format
        self.slots: list[torch.Tensor] = []
        self.turn = 0

    def __call__(self, n: int) -> torch.Tensor:
        slot = self.turn % (PREFETCH + 2)
        self.turn += 1
        if slot == len(self.slots):
            self.slots.append(torch.empty(self.shape, dtype=self.dtype, memory_format=self.memory_format))
        return self.slots[slot][:n]


class BatchLoader:
    """Iterable of (images float NCHW normalised on `device`, labels int64 on `device`) from an ImageCache.

    train=True: shuffled; random crop if "crop" in cfg.augment else centre crop; flips / rotation per image as
    configured. train=False: fixed order, centre crop of cfg.image_size (Resize(256)+CenterCrop(224)).
    A final training batch of a single image is dropped (BatchNorm cannot train on one sample).
    The next batches are prepared by a background thread while the caller computes.

    crop_workers (default: one per core beyond the two pipeline threads, `worker_threads(2)`): threads that
    crop the images of one batch side by side; every random draw is made up front, so the batches are the
    same for any number. On a 2-core machine it is 1: the crop thread itself does the work.

    flips_on_device=False (CUDA only; for measuring the old path): every flip is done on the host, per image.

    reuse_buffers=True (CPU only): batches (and their uint8 crops) are written into a `BufferRing` allocated
    once, so a batch is overwritten PREFETCH + 2 batches later. Fresh 10-150 MB tensors per batch cost more in page
    faults than the conversion itself; the training and evaluation loops, which finish with each batch
    before drawing the next, opt in.
    """

    def __init__(
        self, cache: ImageCache, indices: Sequence[int], labels: Sequence[int], *, batch_size: int, train: bool,
        cfg: TrainConfig, device: torch.device | str = "cpu", generator: torch.Generator | None = None,
        reuse_buffers: bool = False, crop_workers: int | None = None, flips_on_device: bool = True,
    ) -> None:
        if len(indices) != len(labels):
            raise ValueError(f"indices ({len(indices)}) and labels ({len(labels)}) differ in length")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
        self.cache = cache
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.batch_size = batch_size
        self.train = train
        self.cfg = cfg
        self.device = torch.device(device)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(cfg.seed)
        self.size = cfg.image_size
        self.crop_workers = worker_threads(reserved=2) if crop_workers is None else max(1, int(crop_workers))
        self.flips_on_device = flips_on_device
        # Kept across epochs, so later epochs reuse the memory and the turn keeps counting.
        reuse = reuse_buffers and self.device.type == "cpu"
        s = self.size
        self._host_ring = BufferRing((batch_size, s, s, 3), torch.uint8, torch.contiguous_format) if reuse else None
        self._float_ring = BufferRing((batch_size, 3, s, s), torch.float32, torch.channels_last) if reuse else None

    def __len__(self) -> int:
        n = len(self.indices)
        batches = math.ceil(n / self.batch_size)
        if self.train and n > 1 and n % self.batch_size == 1:
            batches -= 1
        return batches

    @property
    def num_samples(self) -> int:
        """Images actually yielded per pass (a dropped single-image last training batch excluded)."""
        return min(len(self.indices), len(self) * self.batch_size)

    def _plan(self) -> EpochPlan:
        return plan_epoch(len(self.indices), train=self.train, cfg=self.cfg, generator=self.generator)

    def _host_iter(
        self, plan: EpochPlan, *, pin: bool = False, device_flips: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, Flips]]:
        """Each batch as one uint8 NHWC host tensor (pinned when `pin`), its labels and the flips left to do.

        device_flips: leave the flips of a batch without rotations to `_finish` on the device (they are
        then listed in the batch's `Flips`). A flip per image costs little on the CPU's own cores, but a
        torch op per image from this thread pays torch's intra-op threads each time: on a 16-core GPU
        machine the loader stalled near 7000 img/s whatever its thread count; the GPU flips a batch at once.
        """
        # Plain Python lists: per-image tensor indexing would cost more than the crop itself.
        crops = plan.crop_u.tolist() if plan.crop_u is not None else None
        hflip, vflip, angle = plan.hflip.tolist(), plan.vflip.tolist(), plan.angle.tolist()
        indices, s = self.indices.tolist(), self.size

        def fill(rows: np.ndarray, positions: list[int], flip_here: bool) -> None:
            for row, pos in enumerate(positions):
                u_y, u_x = crops[pos] if crops is not None else (None, None)
                crop_into(self.cache[indices[pos]], rows[row], u_y, u_x, flip_here and hflip[pos],
                          flip_here and vflip[pos])
                if angle[pos] != 0.0:  # after the flips, as the study's transforms order them
                    rotate_into(rows[row], angle[pos])

        pool = ThreadPoolExecutor(self.crop_workers, "batch-crop") if self.crop_workers > 1 else None
        try:
            for b in range(len(self)):
                positions = plan.order[b * self.batch_size: (b + 1) * self.batch_size].tolist()
                if self._host_ring is not None:  # CPU only, so never asked to pin
                    host = self._host_ring(len(positions))
                else:
                    host = torch.empty((len(positions), s, s, 3), dtype=torch.uint8, pin_memory=pin)
                rows = host.numpy()
                flip_here = not device_flips or any(angle[pos] != 0.0 for pos in positions)
                if pool is None:
                    fill(rows, positions, flip_here)
                else:  # contiguous slices of the batch, one per worker
                    step = math.ceil(len(positions) / self.crop_workers)
                    starts = range(0, len(positions), step)
                    list(pool.map(fill, [rows[i: i + step] for i in starts], [positions[i: i + step] for i in starts],
                                  [flip_here] * len(starts)))
                flips = NO_FLIPS if flip_here else Flips(
                    [r for r, pos in enumerate(positions) if hflip[pos]],
                    [r for r, pos in enumerate(positions) if vflip[pos]],
                )
                yield host, self.labels[positions], flips
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def host_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass of (uint8 NHWC crops, labels) on the host, before the float conversion.

        The same random draws as iterating the loader, with every flip done on the host.
        """
        return ((host, labels) for host, labels, _ in self._host_iter(self._plan()))

    def _finish(
        self, host: torch.Tensor, labels: torch.Tensor, out: torch.Tensor | None = None, flips: Flips = NO_FLIPS,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Host NHWC batch → (flips left to do) → normalised float NCHW (channels_last) + labels on the device."""
        cuda = self.device.type == "cuda"
        batch = host.to(self.device, non_blocking=cuda)
        for rows, dim in ((flips.horizontal, 2), (flips.vertical, 1)):
            if rows:
                index = torch.tensor(rows, device=self.device)
                batch[index] = batch[index].flip(dim)
        batch = batch.permute(0, 3, 1, 2)  # NHWC memory = channels_last
        return normalize_batch(batch, self.cfg.normalization, out), labels.to(self.device, non_blocking=cuda)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        plan = self._plan()  # drawn here, in the caller's thread, so the generator is never shared
        cuda = self.device.type == "cuda"
        host = _background(self._host_iter(plan, pin=cuda, device_flips=cuda and self.flips_on_device),
                           "batch-crops")
        if cuda:
            # The thread only fills pinned host tensors; device work stays on the caller's stream.
            for batch, labels, flips in host:
                yield self._finish(batch, labels, flips=flips)
            return
        # On the CPU a second thread converts while the first crops, so that all data preparation overlaps
        # the model's compute (and each other: the study's DataLoader gets one worker per core too).
        ring = self._float_ring

        def converted() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            try:
                for batch, labels, _ in host:  # flips done on the host
                    yield self._finish(batch, labels, ring(len(batch)) if ring is not None else None)
            finally:
                host.close()

        yield from _background(converted(), "batch-normalise")


def _background(items: Iterator[Any], name: str) -> Iterator[Any]:
    """Iterate `items` in a daemon thread, up to PREFETCH items ahead; its errors are re-raised here.

    Closing this generator (or leaving a for loop early) stops the thread and closes `items` in it.
    """
    results: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=PREFETCH)
    stop = threading.Event()

    def put(entry: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                results.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("done", None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(("error", exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    try:
        while True:
            kind, item = results.get()
            if kind == "done":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            try:
                results.get(timeout=0.05)
            except queue.Empty:
                continue
        worker.join()


def denormalize(x: torch.Tensor, normalization: str) -> np.ndarray:
    """Float normalised NCHW → list-like uint8 NHWC array (what the model sees, for display)."""
    mean, std = NORMALIZATION[normalization]
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    img = (x.float() * s + m).clamp(0, 1).mul(255).round().to(torch.uint8)
    return img.permute(0, 2, 3, 1).cpu().numpy()


def preview_images(
    cache: ImageCache, indices: Sequence[int], cfg: TrainConfig, n: int, *, seed: int | None = None,
    train: bool = True,
) -> list[np.ndarray]:
    """Up to `n` images as the model sees them after the (training) transform, denormalised to uint8 HWC.

    The first `n` of `indices` are shown in order; `seed` (default cfg.seed) fixes the augmentation draws.
    """
    chosen = list(indices)[: max(n, 0)]
    if not chosen:
        return []
    gen = torch.Generator().manual_seed(cfg.seed if seed is None else seed)
    plan = plan_epoch(len(chosen), train=train, cfg=cfg, generator=gen)
    plan = replace(plan, order=torch.arange(len(chosen)))  # keep the given order; augmentation still per image
    loader = BatchLoader(cache, chosen, [0] * len(chosen), batch_size=len(chosen), train=False, cfg=cfg)
    host, labels, _ = next(loader._host_iter(plan))
    x, _ = loader._finish(host, labels)
    return list(denormalize(x, cfg.normalization))
