"""The speed policy (training/speed.py): which mode a run gets, that the run records it, and that a bf16 run's
curves stay within rounding of fp32's on a tiny real run."""

from __future__ import annotations

import pytest
import torch

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
