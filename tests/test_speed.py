"""The speed policy (training/speed.py): which mode a run gets, that the run records it, and that a bf16 run's
curves stay within rounding of fp32's on a tiny real run."""

from __future__ import annotations

import pytest
import torch

from caltech_core import settings
from caltech_core.training import engine, speed
from caltech_core.training.speed import SpeedMode

CPU = torch.device("cpu")
# bf16 keeps 8 bits of mantissa: per-epoch losses of a tiny run drift by a few percent at most, and the
# validation accuracy by at most one image in three (12 images).
LOSS_TOLERANCE = 0.05  # relative
ACC_TOLERANCE = 4 / 12


def test_the_policy_per_architecture_device_and_switches(tiny_config) -> None:
    alexnet = tiny_config(arch="alexnet", image_size=64)
    bf16 = speed.cpu_bf16_supported()
    expected = SpeedMode(channels_last=True, bf16=True) if bf16 else speed.EAGER  # measured to pay with bf16
    assert speed.choose(alexnet, CPU) == speed.choose(alexnet.replace(arch="resnet18"), CPU) == expected
    assert speed.choose(alexnet.replace(amp=False), CPU) == speed.EAGER  # the switch turns it off
    assert speed.choose(alexnet.replace(train="fc"), CPU) == speed.EAGER  # a frozen backbone: the fast path's
    assert speed.choose(tiny_config(compile=True), CPU) == speed.EAGER  # not measured to pay: eager fp32
    cuda = speed.choose(tiny_config(compile=True), torch.device("cuda"))
    assert cuda == SpeedMode(channels_last=True, compile=True) and cuda.label == "channels_last + torch.compile"
    # Int8 frozen features: the CPU's (onnxruntime); on CUDA the same config's features stay fp32.
    lite = tiny_config(arch="efficientnet_lite0", pretrained=True, train="fc", int8_features=True)
    assert speed.choose(lite, CPU) == SpeedMode(int8_features=True) and speed.choose(lite, CPU).label == "int8 features"
    assert not speed.choose(lite, torch.device("cuda")).int8_features


def test_a_bf16_run_records_its_mode_and_follows_the_fp32_curves(
    tiny_config, splits, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(epochs=2, lr=0.01)
    fp32 = engine.train(cfg, splits, workdir=tmp_path / "fp32", cache_dir=tmp_path / "cache")
    mode = SpeedMode(channels_last=True, bf16=speed.cpu_bf16_supported())
    monkeypatch.setitem(speed.CPU_PAYS, cfg.arch, mode)
    fast = engine.train(cfg, splits, workdir=tmp_path / "fast", cache_dir=tmp_path / "cache")
    assert (fp32.status, fast.status) == ("finished", "finished"), (fp32.error, fast.error)
    assert (fp32.speed, fast.speed) == ("eager fp32", mode.label)
    for a, b in zip(fp32.epochs, fast.epochs, strict=True):
        assert b.train_loss == pytest.approx(a.train_loss, rel=LOSS_TOLERANCE)
        assert b.val_loss == pytest.approx(a.val_loss, rel=LOSS_TOLERANCE)
        assert abs(b.val_acc - a.val_acc) <= ACC_TOLERANCE
    if mode.bf16:  # really another computation, not the same one twice
        assert [a.train_loss for a in fp32.epochs] != [b.train_loss for b in fast.epochs]


_HEAP_CHECK = """
import json, resource, sys
from concurrent.futures import ThreadPoolExecutor
import torch
from torch import nn
from caltech_core.training import speed

def check():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2048, 4096), nn.ReLU(), nn.Linear(4096, 4096))
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(8, 2048)

    def faults_of(steps):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            net(x).square().mean().backward()
            optimizer.step()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    kept = speed.reuse_freed_memory()
    faults_of(5)  # momentum buffers, the first gradients: the heap grows until freed blocks fit the next step
    reused = min(faults_of(3) for _ in range(3))  # now and then one window faults 64 MB in (1 process in 8)
    speed.release_freed_memory()
    return {"kept": kept, "reused": reused, "released": faults_of(1)}

if sys.argv[1] == "worker":
    with ThreadPoolExecutor(1) as worker:
        print(json.dumps(worker.submit(check).result()))
else:
    print(json.dumps(check()))
"""


@pytest.mark.parametrize("thread", ["main", "worker"])
def test_training_steps_reuse_freed_memory_instead_of_fresh_pages(thread: str) -> None:
    """After `reuse_freed_memory` (glibc, as on Linux CI) SGD steps of layers with 32 and 64 MB weights reuse
    their freed gradients and temporaries: (almost) no page faults, where glibc's default (a fresh mmap for every
    block over 32 MiB, bench/cpu_heap.py) takes ~150,000 in 3 steps. After `release_freed_memory` (the end of a
    run) the memory is the kernel's again, and the next step faults it back in. In a fresh process, as a run's
    CLI process starts (earlier tests' runs leave this one's heap fragmented and trimmed), after 5 warm-up
    steps, the quietest of three 3-step windows: one window in about eight processes faulted 16,384 pages.
    "worker": the steps on a worker thread of a process started with one malloc arena, as `make run` starts the
    dashboard (its thread backend's runs)."""
    import json
    import subprocess
    import sys

    env = settings.with_one_malloc_arena() if thread == "worker" else None
    out = subprocess.run([sys.executable, "-c", _HEAP_CHECK, thread], check=True, capture_output=True, text=True,
                         env=env).stdout
    found = json.loads(out.splitlines()[-1])
    pages = (2048 * 4096 + 4096 + 4096 * 4096 + 4096) * 4 // 4096  # the weights' pages: 24,584
    assert found["kept"]
    assert found["reused"] < pages // 10, found
    assert found["released"] > pages // 4, found


def test_a_worker_thread_keeps_glibc_s_defaults_without_one_malloc_arena(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its blocks over 64 MB would be mapped on their own whatever is set: nothing is changed there."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.delenv(settings.MALLOC.name, raising=False)
    with ThreadPoolExecutor(1) as worker:
        assert worker.submit(speed.reuse_freed_memory).result() is False
