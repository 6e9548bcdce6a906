"""The CUDA path: AMP + channels_last steps, pinned batches, resume, out-of-memory, the worker thread on a GPU.

Skipped without a CUDA GPU (marker `cuda`); bench/gpu_check.py runs them on a GPU machine. Tolerances:
a bf16/fp16 autocast step may differ from an fp32 step by rounding only, so its logits must point the same
way (cosine >= 0.97), its loss lie within 10% of the fp32 loss (random-init logits are large) and its
output layer's update point the same way (cosine >= 0.95); a GPU batch must
equal the CPU loader's batch to 1e-6 (the same uint8 crops, the same multiply-add in float32); resumed
curves must match an uninterrupted run's to 1e-3 (cuDNN may pick other kernels, which round differently).
"""

from __future__ import annotations

import copy
import time

import pytest
import torch
from torch import nn

from caltech_core.config import ARCHITECTURES, TrainConfig
from caltech_core.data.dataset import Splits
from caltech_core.data.imagecache import ImageCache
from caltech_core.data.transforms import BatchLoader
from caltech_core.nets.architectures import get_spec
from caltech_core.nets.models import build_model
from caltech_core.runs.store import RunStore
from caltech_core.runs.threads import ThreadJobManager
from caltech_core.training import engine
from caltech_core.training.evaluation import autocast_for

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run bench/gpu_check.py there)"),
]

CUDA = torch.device("cuda")


def _tiny(**changes) -> TrainConfig:
    base = dict(arch="resnet18", image_size=64, batch_size=4, epochs=3, step_size=2, lr=0.01, device="cuda")
    return TrainConfig(**{**base, **changes})


def _no_dropout(model: nn.Module) -> nn.Module:
    """Dropout off, so the fp32 and the autocast step see the same network (their masks would differ)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    if hasattr(model, "drop_rate"):
        model.drop_rate = 0.0  # timm's EfficientNet applies its head dropout functionally
    return model


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, amp: bool) -> tuple[torch.Tensor, float]:
    """One SGD step as engine.train takes it; returns the logits before the step and the loss."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and not torch.cuda.is_bf16_supported())
    model.train()
    with autocast_for(CUDA, amp):
        logits = model(x).float()
        loss = nn.functional.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return logits.detach(), loss.item()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    # float64: a float32 sum over tens of millions of weights is itself off by ~1%.
    return nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_amp_channels_last_step_matches_fp32(arch, record_property):
    """What the network computes and how its classifier moves must agree; per-weight gradients of deep
    early layers need not. Measured on an H200 (torch 2.11, batch 16, 128 px, random init): logits cosine
    0.978-1.0 (EfficientNet-Lite1 lowest, ResNet-50 0.986), loss within 1.2%, output-layer update cosine
    0.987-1.0, whole-update cosine 0.12 (ResNet-50) to 0.998 (AlexNet): bf16 rounding spreads the
    per-weight gradients of deep BatchNorm networks, so that one is recorded, not asserted."""
    torch.manual_seed(0)
    reference = _no_dropout(build_model(arch, 10)).to(CUDA)
    mixed = copy.deepcopy(reference).to(memory_format=torch.channels_last)
    before = {name: p.detach().clone() for name, p in reference.named_parameters()}
    x = torch.randn(16, 3, 128, 128, device=CUDA)
    y = torch.randint(0, 10, (16,), device=CUDA)
    logits32, loss32 = _step(reference, x, y, amp=False)
    logits_amp, loss_amp = _step(mixed, x.contiguous(memory_format=torch.channels_last), y, amp=True)
    out = get_spec(arch).output  # the output layer's module path
    updates = {kind: {n: p.detach() - before[n] for n, p in model.named_parameters()}
               for kind, model in (("fp32", reference), ("amp", mixed))}
    head = [n for n in before if n.startswith(out + ".")]
    head_cosine = _cosine(torch.cat([updates["fp32"][n].flatten() for n in head]),
                          torch.cat([updates["amp"][n].flatten() for n in head]))
    whole_cosine = _cosine(torch.cat([u.flatten() for u in updates["fp32"].values()]),
                           torch.cat([u.flatten() for u in updates["amp"].values()]))
    for key, value in (("loss_fp32", loss32), ("loss_amp", loss_amp), ("logits_cosine", _cosine(logits32, logits_amp)),
                       ("head_update_cosine", head_cosine), ("whole_update_cosine", whole_cosine)):
        record_property(key, round(value, 5))
    assert _cosine(logits32, logits_amp) >= 0.97
    assert abs(loss_amp - loss32) <= 0.1 * abs(loss32), (loss32, loss_amp)
    assert head_cosine >= 0.95, head_cosine


def test_fp16_with_grad_scaler_trains_when_bf16_is_missing(mini_root, tmp_path, monkeypatch):
    """Older GPUs have no bf16: the engine then runs fp16 autocast with a GradScaler."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    data = Splits.from_config(_tiny(), root=mini_root)
    result = engine.train(_tiny(epochs=2), data, workdir=tmp_path / "run", cache_dir=tmp_path / "cache")
    assert result.status == "finished", result.error
    assert all(torch.isfinite(torch.tensor(m.train_loss)) for m in result.epochs)
    scaler = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["scaler"]
    assert scaler, "the GradScaler state is saved for resume"


def test_pinned_batches_arrive_normalised_like_the_cpu_path(mini_root, tmp_path):
    cfg = _tiny(augment=("crop", "hflip", "rotate"), batch_size=5)
    data = Splits.from_config(cfg, root=mini_root)
    cache = ImageCache.build(data.all_paths(), tmp_path / "cache", resize_size=cfg.resize_size)
    indices, labels = [cache.index_of(s.path) for s in data.train], [s.label for s in data.train]

    def batches(device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = BatchLoader(cache, indices, labels, batch_size=5, train=True, cfg=cfg, device=device,
                             generator=torch.Generator().manual_seed(3))
        return list(loader)

    pinned = BatchLoader(cache, indices, labels, batch_size=5, train=True, cfg=cfg, device="cuda")
    host, _, _ = next(pinned._host_iter(pinned._plan(), pin=True))  # what the prefetch thread hands over
    assert host.is_pinned()
    on_gpu, on_cpu = batches("cuda"), batches("cpu")
    assert len(on_gpu) == len(on_cpu) > 1
    for (xg, yg), (xc, yc) in zip(on_gpu, on_cpu, strict=True):
        assert xg.device.type == "cuda" and xg.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(yg.cpu(), yc)
        torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=1e-6)


def test_flips_on_the_gpu_equal_the_forced_host_flips(mini_root, tmp_path):
    """Without rotations the flips of a batch run on the GPU; `flips_on_device=False` (the GPU check's way of
    measuring the old path) flips on the host instead: the same batches, equal to the CPU loader's."""
    cfg = _tiny(augment=("crop", "hflip", "vflip"), batch_size=5)
    data = Splits.from_config(cfg, root=mini_root)
    cache = ImageCache.build(data.all_paths(), tmp_path / "cache", resize_size=cfg.resize_size)
    indices, labels = [cache.index_of(s.path) for s in data.train], [s.label for s in data.train]

    def batches(device: str, on_device: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = BatchLoader(cache, indices, labels, batch_size=5, train=True, cfg=cfg, device=device,
                             generator=torch.Generator().manual_seed(3), flips_on_device=on_device)
        return [(x.cpu(), y.cpu()) for x, y in loader]

    gpu_flips, host_flips, cpu = batches("cuda", True), batches("cuda", False), batches("cpu", True)
    assert len(gpu_flips) == len(host_flips) == len(cpu) > 1
    for (xa, ya), (xb, yb), (xc, yc) in zip(gpu_flips, host_flips, cpu, strict=True):
        assert torch.equal(ya, yb) and torch.equal(ya, yc)
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)
        torch.testing.assert_close(xa, xc, rtol=0, atol=1e-6)


def test_compiled_training_matches_eager_training(mini_root, tmp_path, record_property):
    """compile=True: torch.compile'd training steps on CUDA (evaluation eager). Its kernels round differently,
    so the curves agree to a tolerance; the first epoch pays the compilation (recorded)."""
    cfg = _tiny(epochs=2, label_smoothing=0.1, lr_schedule="cosine", warmup_epochs=1)
    data = Splits.from_config(cfg, root=mini_root)
    eager = engine.train(cfg, data, workdir=tmp_path / "eager", cache_dir=tmp_path / "cache")
    compiled = engine.train(cfg.replace(compile=True), data, workdir=tmp_path / "compiled",
                            cache_dir=tmp_path / "cache")
    assert eager.status == compiled.status == "finished", (eager.error, compiled.error)
    record_property("epoch_seconds_eager", [round(m.seconds, 2) for m in eager.epochs])
    record_property("epoch_seconds_compiled", [round(m.seconds, 2) for m in compiled.epochs])
    assert [m.lr for m in compiled.epochs] == [m.lr for m in eager.epochs]
    first_e, first_c = eager.epochs[0], compiled.epochs[0]
    assert abs(first_c.train_loss - first_e.train_loss) <= 0.05 * first_e.train_loss, (first_e, first_c)
    saved = torch.load(compiled.checkpoint_path, weights_only=True)["model"]
    assert set(saved) == set(torch.load(eager.checkpoint_path, weights_only=True)["model"])  # no _orig_mod.


def test_resume_on_cuda_repeats_the_curves(mini_root, tmp_path):
    cfg = _tiny(augment=("crop", "hflip"))
    data = Splits.from_config(cfg, root=mini_root)
    whole = engine.train(cfg, data, workdir=tmp_path / "whole", cache_dir=tmp_path / "cache")
    assert whole.status == "finished", whole.error

    epochs_seen: list = []
    stop_after_first = engine.Callbacks(should_stop=lambda: len(epochs_seen) >= 1, on_epoch=epochs_seen.append)
    first = engine.train(cfg, data, stop_after_first, workdir=tmp_path / "split", cache_dir=tmp_path / "cache")
    assert first.status == "cancelled" and len(first.epochs) == 1
    rest = engine.train(cfg, data, workdir=tmp_path / "split", cache_dir=tmp_path / "cache", resume=True)
    assert rest.status == "finished", rest.error
    assert [m.epoch for m in rest.epochs] == [1, 2, 3]
    for a, b in zip(whole.epochs, rest.epochs, strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert getattr(a, key) == pytest.approx(getattr(b, key), abs=1e-3), (a.epoch, key)


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "studio")


def test_out_of_memory_fails_with_advice_and_the_next_job_runs(mini_root, store):
    """A real CUDA out-of-memory: this process may use 256 MiB of the card (other processes, e.g. the
    GPU check's training runs, keep theirs), less than VGG-16's weights alone."""
    manager = ThreadJobManager(store, data_root=mini_root)
    total = torch.cuda.get_device_properties(CUDA).total_memory
    try:
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction((256 << 20) / total)
        starved = manager.submit(_tiny(arch="vgg16", batch_size=8, image_size=128, epochs=1))
        assert manager.wait(starved, timeout=300)
        torch.cuda.set_per_process_memory_fraction(1.0)
        healthy = manager.submit(_tiny(epochs=1))
        assert manager.wait(healthy, timeout=300)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        manager.shutdown(wait=True)
    failed = store.get_run(starved)
    assert failed.status == "failed"
    assert "out of memory" in failed.error.lower() and "batch size" in failed.error.lower(), failed.error
    assert store.get_run(healthy).status == "finished"


def test_worker_thread_trains_on_cuda_while_the_main_thread_reads_the_store(mini_root, store):
    manager = ThreadJobManager(store, data_root=mini_root)
    reads, seen_epochs = 0, set()
    try:
        run_id = manager.submit(_tiny(epochs=4))
        deadline = time.monotonic() + 300
        while (manager.current() == run_id or run_id in manager.queued()) and time.monotonic() < deadline:
            seen_epochs.add(len(store.epochs(run_id)))
            store.list_runs()
            reads += 1
            time.sleep(0.01)
        assert manager.wait(run_id, timeout=60)
    finally:
        manager.shutdown(wait=True)
    run = store.get_run(run_id)
    assert run.status == "finished", run.error
    assert run.device is not None and run.device.startswith("cuda")
    assert [e["epoch"] for e in store.epochs(run_id)] == [1, 2, 3, 4]
    assert reads > 10 and len(seen_epochs) > 1, (reads, seen_epochs)  # the reads overlapped the training
