"""Training options for the GPU recipes: LR schedule (step / cosine with warm-up), label smoothing, compile.

The defaults must train exactly as before these options existed; the options must do what torch documents.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from caltech_core.config import ConfigError, TrainConfig
from caltech_core.data.dataset import Splits
from caltech_core.training import engine

BASE = TrainConfig(arch="mobilenet_v3_small", image_size=48, epochs=2, batch_size=8, lr=0.01, device="cpu")


def _curve(result: engine.RunResult) -> list[tuple]:
    return [(m.epoch, m.train_loss, m.train_acc, m.val_loss, m.val_acc, m.lr) for m in result.epochs]


def _train(cfg: TrainConfig, splits: Splits, workdir: Path, cache_dir: Path, **kwargs) -> engine.RunResult:
    result = engine.train(cfg, splits, workdir=workdir, cache_dir=cache_dir, **kwargs)
    assert result.status in ("finished", "cancelled"), result.error
    return result


# -- configuration ---------------------------------------------------------------------------------------


def test_new_options_default_to_the_old_behaviour_and_round_trip():
    cfg = TrainConfig()
    assert (cfg.lr_schedule, cfg.warmup_epochs, cfg.label_smoothing, cfg.compile) == ("step", 0, 0.0, False)
    old_record = {k: v for k, v in cfg.to_dict().items()
                  if k not in ("lr_schedule", "warmup_epochs", "label_smoothing", "compile")}
    assert TrainConfig.from_dict(old_record) == cfg  # runs stored before these options load unchanged
    tuned = cfg.replace(lr_schedule="cosine", warmup_epochs=3, label_smoothing=0.1, compile=True)
    assert TrainConfig.from_dict(tuned.to_dict()) == tuned
    assert TrainConfig.from_dict({"label_smoothing": 0}).label_smoothing == 0.0  # an int from JSON is fine


@pytest.mark.parametrize(("changes", "field"), [
    ({"lr_schedule": "linear"}, "lr_schedule"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"label_smoothing": -0.1}, "label_smoothing"),
    ({"label_smoothing": float("nan")}, "label_smoothing"),
    ({"warmup_epochs": 2}, "warmup_epochs"),  # a warm-up with the step schedule
    ({"lr_schedule": "cosine", "warmup_epochs": -1}, "warmup_epochs"),
    ({"lr_schedule": "cosine", "warmup_epochs": 30}, "warmup_epochs"),  # not fewer than the 30 epochs
    ({"lr_schedule": "cosine", "warmup_epochs": 1.5}, "warmup_epochs"),
    ({"compile": "yes"}, "compile"),
])
def test_bad_values_name_their_field(changes, field):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**changes)
    assert info.value.field == field


def test_cosine_factor_follows_its_formula():
    cfg = TrainConfig(lr=0.1, epochs=10, lr_schedule="cosine", warmup_epochs=2)
    expected = [1 / 3, 2 / 3] + [0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert [cfg.lr_factor(e) for e in range(10)] == pytest.approx(expected, abs=1e-15)
    assert [cfg.lr_at(e) for e in range(10)] == pytest.approx([0.1 * f for f in expected], abs=1e-15)
    assert cfg.replace(warmup_epochs=0).lr_at(0) == 0.1  # no warm-up: the full rate first
    step = TrainConfig(lr=0.1, epochs=10, step_size=4, gamma=0.5)
    assert [step.lr_at(e) for e in (0, 3, 4, 8)] == pytest.approx([0.1, 0.1, 0.05, 0.025])


# -- the engine ------------------------------------------------------------------------------------------


def test_defaults_train_exactly_as_before(splits, cache_dir, tmp_path, monkeypatch):
    """The reference is the engine as it was: StepLR, `nn.CrossEntropyLoss()` without arguments, the eager
    model (no LambdaLR, no torch.compile anywhere). compile=True is ignored on the CPU, like amp."""
    cfg = BASE.replace(step_size=1, gamma=0.5, augment=("crop", "hflip"))
    with monkeypatch.context() as patch:
        old_loss = nn.CrossEntropyLoss
        patch.setattr(engine.nn, "CrossEntropyLoss", lambda *a, **k: old_loss())
        patch.setattr(torch.optim.lr_scheduler, "LambdaLR", _forbidden("LambdaLR"))
        patch.setattr(torch, "compile", _forbidden("torch.compile"))
        before = _train(cfg, splits, tmp_path / "before", cache_dir)
    now = _train(cfg, splits, tmp_path / "now", cache_dir)
    with monkeypatch.context() as patch:
        patch.setattr(torch, "compile", _forbidden("torch.compile"))
        compiled_on_cpu = _train(cfg.replace(compile=True), splits, tmp_path / "compile", cache_dir)
    assert _curve(now) == _curve(before) == _curve(compiled_on_cpu)
    assert [m.lr for m in now.epochs] == [0.01, 0.005]
    assert now.test_acc == before.test_acc == compiled_on_cpu.test_acc
    weights = [torch.load(r.checkpoint_path, weights_only=True)["model"] for r in (before, now, compiled_on_cpu)]
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]) and torch.equal(tensor, weights[2][name]), name


def _forbidden(name: str):
    def fail(*args, **kwargs):
        raise AssertionError(f"{name} must not be used by the default configuration")
    return fail


def test_cosine_schedule_gives_each_epoch_its_rate(splits, cache_dir, tmp_path):
    # The head alone, on cached features (fast): the schedule does not depend on what is trained.
    cfg = BASE.replace(train="fc", lr=0.04, epochs=5, lr_schedule="cosine", warmup_epochs=2, optimizer="adamw")
    result = _train(cfg, splits, tmp_path, cache_dir)
    expected = [0.04 / 3, 0.08 / 3, 0.04, 0.04 * 0.5 * (1 + math.cos(math.pi / 3)),
                0.04 * 0.5 * (1 + math.cos(2 * math.pi / 3))]
    assert result.fast_path and [m.lr for m in result.epochs] == pytest.approx(expected, rel=1e-12)


def test_resume_with_a_cosine_schedule_repeats_the_uninterrupted_curves(splits, cache_dir, tmp_path):
    cfg = BASE.replace(epochs=3, lr_schedule="cosine", warmup_epochs=1, label_smoothing=0.1,
                       augment=("crop", "hflip"))
    straight = _train(cfg, splits, tmp_path / "straight", cache_dir)
    batches = {"n": 0}

    def stop_in_epoch_two() -> bool:
        batches["n"] += 1
        return batches["n"] > 2  # two batches per epoch

    part = _train(cfg, splits, tmp_path / "split", cache_dir, callbacks=engine.Callbacks(should_stop=stop_in_epoch_two),
                  checkpoint_seconds=0)
    assert part.status == "cancelled" and len(part.epochs) == 1
    resumed = _train(cfg, splits, tmp_path / "split", cache_dir, resume=True)
    assert resumed.status == "finished"
    assert _curve(resumed) == _curve(straight)
    assert [m.lr for m in resumed.epochs] == pytest.approx([cfg.lr_at(e) for e in range(3)], rel=1e-12)
    assert resumed.test_acc == straight.test_acc


def test_label_smoothing_changes_the_training_loss_as_torch_says(splits, cache_dir, tmp_path):
    """The first batch's loss under smoothing 0.2 is torch's cross_entropy(label_smoothing=0.2) of the very
    logits and labels the engine's loss module received; without smoothing, the plain cross-entropy of the
    same logits (same seed, same first batch). Validation losses stay plain cross-entropy."""
    seen: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
    losses: dict[float, list[float]] = {}
    for eps in (0.0, 0.2):
        calls: list[tuple[torch.Tensor, torch.Tensor]] = []

        def hook(module, inputs, output, calls=calls):
            if isinstance(module, nn.CrossEntropyLoss):
                calls.append((inputs[0].detach().clone(), inputs[1].clone()))

        handle = nn.modules.module.register_module_forward_hook(hook)
        try:
            batch_losses: list[float] = []
            cb = engine.Callbacks(on_batch=lambda e, b, n, loss, out=batch_losses: out.append(loss))
            result = _train(BASE.replace(epochs=1, label_smoothing=eps), splits, tmp_path / str(eps), cache_dir,
                            callbacks=cb)
        finally:
            handle.remove()
        assert result.status == "finished"
        seen[eps], losses[eps] = calls[0], batch_losses
    logits, labels = seen[0.2]
    torch.testing.assert_close(logits, seen[0.0][0], rtol=0, atol=0)  # the same first forward pass
    smoothed = nn.functional.cross_entropy(logits, labels, label_smoothing=0.2).item()
    plain = nn.functional.cross_entropy(logits, labels).item()
    assert losses[0.2][0] == pytest.approx(smoothed, rel=1e-6)
    assert losses[0.0][0] == pytest.approx(plain, rel=1e-6)
    # The option really changes the loss: by far more than the rel=1e-6 the checks above allow (a fresh
    # network's logits are near uniform, where smoothing changes the loss least).
    assert abs(smoothed - plain) > 100 * 1e-6 * plain


def test_retraining_keeps_a_warm_up_shorter_than_the_best_epoch(splits, cache_dir, tmp_path):
    """A warm-up of 2 epochs, but validation never improves after epoch 1 (the head barely moves): the retrain
    on train+val runs 1 epoch, so its warm-up is cut to 0 instead of failing validation."""
    cfg = BASE.replace(train="fc", lr=1e-9, epochs=3, lr_schedule="cosine", warmup_epochs=2,
                       retrain_on_train_val=True)
    result = engine.train(cfg, splits, workdir=tmp_path, cache_dir=cache_dir)
    assert result.status == "finished", result.error
    assert result.best_epoch == 1 and result.retrain_test_acc is not None
