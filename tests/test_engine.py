"""The training engine on real mini data: reproducibility, resume, cancel, divergence, failures, fast path."""

from __future__ import annotations

import dataclasses
import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from caltech_core.config import TrainConfig
from caltech_core.data.dataset import Splits
from caltech_core.nets import models
from caltech_core.nets.device import resolve_device
from caltech_core.status import Phase
from caltech_core.training import checkpointing, engine, predictions
from caltech_core.training.failures import failure_message, is_out_of_memory, oom_message

BASE = TrainConfig(arch="mobilenet_v3_small", image_size=64, epochs=2, batch_size=8, lr=0.01, device="cpu")


def _curve(result: engine.RunResult) -> list[tuple]:
    return [(m.epoch, m.train_loss, m.train_acc, m.val_loss, m.val_acc, m.lr) for m in result.epochs]


def test_finished_run_reports_metrics_and_weights_only_checkpoints(
    splits: Splits, cache_dir: Path, tmp_path: Path
) -> None:
    seen_epochs: list[engine.EpochMetrics] = []
    batches: list[tuple[int, int, int, float]] = []
    checkpoints: list[int] = []
    phases: list[Phase] = []
    cb = engine.Callbacks(
        on_epoch=seen_epochs.append, on_batch=lambda *a: batches.append(a),
        on_checkpoint=lambda e, p: checkpoints.append(e), on_phase=lambda phase, d, t: phases.append(phase),
    )
    r = engine.train(BASE.replace(step_size=1, gamma=0.5), splits, cb, workdir=tmp_path, cache_dir=cache_dir,
                     checkpoint_seconds=0)
    assert r.status == "finished", r.error
    assert [m.epoch for m in r.epochs] == [1, 2] and seen_epochs == r.epochs
    assert [m.lr for m in r.epochs] == pytest.approx([0.01, 0.005])  # StepLR
    assert checkpoints == [1]  # never after the final epoch: nothing would resume from it
    assert all(isinstance(p, Phase) for p in phases)
    assert [p for p in dict.fromkeys(phases) if p != Phase.CACHING] == [Phase.MODEL, Phase.TRAINING, Phase.TESTING]
    assert [(e, b, n) for e, b, n, _ in batches] == [(1, 1, 2), (1, 2, 2), (2, 1, 2), (2, 2, 2)]
    assert r.best_epoch in (1, 2) and r.best_val_acc == max(m.val_acc for m in r.epochs)
    assert set(r.per_class_acc) == set(splits.classes)
    confusion = torch.tensor(r.confusion)
    assert confusion.shape == (3, 3) and confusion.sum() == len(splits.test)
    assert r.test_acc == pytest.approx(confusion.trace().item() / len(splits.test))
    assert r.mean_class_acc == pytest.approx(sum(r.per_class_acc.values()) / 3)
    assert not (tmp_path / "last.pt").exists()  # a finished run keeps no optimizer state
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["classes"] == splits.classes and best["epoch"] == r.best_epoch and "optimizer" not in best
    assert r.checkpoint_path == tmp_path / "best.pt"

    # Per-image results of the best weights, written beside the checkpoints.
    test = predictions.load(tmp_path / "predictions-test.npz")
    assert [str(p) for p in test.paths] == [str(s.path) for s in splits.test]
    assert test.labels.tolist() == [s.label for s in splits.test] and test.classes == splits.classes
    assert test.top_classes.shape == (12, 3) and (np.diff(test.top_probs, axis=1) <= 0).all()
    assert np.allclose(test.top_probs.sum(axis=1), 1.0, atol=1e-5)  # all 3 classes are in the "top 5"
    assert (test.top_classes[:, 0] == test.preds).all() and np.isfinite(test.losses).all()
    assert test.confusion().tolist() == r.confusion
    assert test.summary()["acc"] == pytest.approx(r.test_acc)
    assert test.summary()["mean_class_acc"] == pytest.approx(r.mean_class_acc)
    p_true = test.top_probs[test.top_classes == test.labels[:, None]]  # every class is among the top 3
    assert np.allclose(test.losses, -np.log(p_true), rtol=1e-3, atol=1e-5)
    val = predictions.load(tmp_path / "predictions-val.npz")
    assert len(val) == len(splits.val) and val.summary()["acc"] == pytest.approx(r.best_val_acc)


def test_seeded_runs_repeat_and_resume_continues_identically(
    splits: Splits, cache_dir: Path, tmp_path: Path
) -> None:
    # Augmentation and dropout make the run consume the loader generator and the global RNG.
    cfg = BASE.replace(step_size=1, gamma=0.5, augment=("crop", "hflip"))
    straight = engine.train(cfg, splits, workdir=tmp_path / "a", cache_dir=cache_dir)
    again = engine.train(cfg, splits, workdir=tmp_path / "b", cache_dir=cache_dir)
    assert straight.status == again.status == "finished"
    assert _curve(straight) == _curve(again)
    other_seed = engine.train(cfg.replace(seed=7, epochs=1), splits, workdir=tmp_path / "c", cache_dir=cache_dir)
    assert _curve(other_seed) != _curve(straight)[:1]

    # Cancel at the first batch of epoch 2, then resume from last.pt (epoch 1).
    calls = {"n": 0}

    def stop_in_epoch_two() -> bool:
        calls["n"] += 1
        return calls["n"] > 2  # two batches per epoch

    part = engine.train(cfg, splits, engine.Callbacks(should_stop=stop_in_epoch_two),
                        workdir=tmp_path / "d", cache_dir=cache_dir, checkpoint_seconds=0)
    assert part.status == "cancelled" and len(part.epochs) == 1
    resumed = engine.train(cfg, splits, workdir=tmp_path / "d", cache_dir=cache_dir, resume=True)
    assert resumed.status == "finished"
    assert _curve(resumed) == _curve(straight)
    assert resumed.test_acc == straight.test_acc


def test_cancel_keeps_curves_and_last_checkpoint(splits: Splits, cache_dir: Path, tmp_path: Path) -> None:
    batches: list[int] = []
    cb = engine.Callbacks(on_batch=lambda e, b, n, loss: batches.append(e), should_stop=lambda: len(batches) >= 3)
    r = engine.train(BASE.replace(epochs=5), splits, cb, workdir=tmp_path, cache_dir=cache_dir,
                     checkpoint_seconds=0)
    assert r.status == "cancelled"
    assert [m.epoch for m in r.epochs] == [1]
    assert batches == [1, 1, 2]
    assert r.checkpoint_path == tmp_path / "last.pt"
    assert torch.load(r.checkpoint_path, weights_only=True)["epoch"] == 1
    assert r.test_acc is None


def test_divergence_stops_with_curves_kept(splits: Splits, cache_dir: Path, tmp_path: Path) -> None:
    losses: list[float] = []
    cfg = BASE.replace(lr=10.0, epochs=5, train="all", weight_decay=0.0)
    r = engine.train(cfg, splits, engine.Callbacks(on_batch=lambda e, b, n, loss: losses.append(loss)),
                     workdir=tmp_path, cache_dir=cache_dir)
    assert r.status == "diverged", (r.status, losses)
    assert "lower the learning rate" in r.error
    assert losses and not torch.isfinite(torch.tensor(losses[-1]))
    assert all(torch.isfinite(torch.tensor(losses[:-1])))
    assert len(r.epochs) == (len(losses) - 1) // 2  # every finished epoch is kept
    assert r.test_acc is None


def test_missing_pretrained_weights_fail_before_any_batch(
    splits: Splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    phases: list[str] = []
    batches: list[int] = []
    cb = engine.Callbacks(on_phase=lambda name, d, t: phases.append(name), on_batch=lambda *a: batches.append(1))
    r = engine.train(BASE.replace(arch="vgg16", pretrained=True), splits, cb,
                     workdir=tmp_path / "run", cache_dir=tmp_path / "cache")
    assert r.status == "failed"
    assert "vgg16-397923af.pth" in r.error and str(tmp_path / "torch" / "hub" / "checkpoints") in r.error
    assert "CALTECH_STUDIO_OFFLINE" in r.error  # tests run offline (conftest)
    assert batches == [] and phases == []  # the weights fetch fails before the model is built
    assert not (tmp_path / "cache").exists(), "no image was decoded before the weights check"


def test_out_of_memory_fails_with_advice_and_frees_the_model(
    splits: Splits, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[weakref.ref] = []
    real_build = models.build_model

    def build_then_oom(*args, **kwargs):
        model = real_build(*args, **kwargs)
        built.append(weakref.ref(model))

        def forward_out_of_memory(x: torch.Tensor) -> torch.Tensor:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        model.forward = forward_out_of_memory
        return model

    monkeypatch.setattr(engine, "build_model", build_then_oom)
    r = engine.train(BASE.replace(batch_size=8), splits, workdir=tmp_path, cache_dir=cache_dir)
    assert r.status == "failed"
    assert "reduce the batch size (e.g. to 4)" in r.error and "CUDA out of memory" in r.error
    gc.collect()
    assert built and built[0]() is None, "the model must not outlive the failed run"


def test_failure_messages_recognise_out_of_memory() -> None:
    cfg = BASE.replace(batch_size=8)
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory")) and is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert "reduce the batch size (e.g. to 4)" in oom_message(cfg)
    assert failure_message(RuntimeError("shape mismatch"), cfg) == "RuntimeError: shape mismatch"
    assert failure_message(MemoryError(), cfg).startswith(oom_message(cfg))


def test_other_errors_fail_with_their_message(splits: Splits, cache_dir: Path, tmp_path: Path) -> None:
    r = engine.train(BASE, splits, workdir=tmp_path, cache_dir=cache_dir, resume=True)
    assert r.status == "failed" and "cannot resume: no checkpoint" in r.error


def test_without_validation_images_the_last_epoch_is_kept(
    splits: Splits, cache_dir: Path, tmp_path: Path
) -> None:
    classic = dataclasses.replace(splits, val=[], protocol="per_class")
    r = engine.train(BASE, classic, workdir=tmp_path, cache_dir=cache_dir)
    assert r.status == "finished"
    assert r.best_epoch == 2 and r.best_val_acc is None
    assert all(m.val_acc is None and m.val_loss is None for m in r.epochs)
    assert r.test_acc is not None


def test_early_stopping_and_retrain_on_train_val(splits: Splits, cache_dir: Path, tmp_path: Path) -> None:
    cfg = BASE.replace(epochs=6, lr=1e-5, early_stopping_patience=1, retrain_on_train_val=True)
    r = engine.train(cfg, splits, workdir=tmp_path, cache_dir=cache_dir)
    assert r.status == "finished"
    val = [m.val_acc for m in r.epochs]
    # Stopped exactly `patience` epochs after the last improvement.
    assert len(r.epochs) < 6 and len(r.epochs) == r.best_epoch + 1
    assert all(v <= r.best_val_acc for v in val[r.best_epoch:])
    assert r.retrain_test_acc is not None and 0.0 <= r.retrain_test_acc <= 1.0
    assert not (tmp_path / "retrain").exists()
    retrained = torch.load(tmp_path / "retrain.pt", weights_only=True)  # kept for Classify
    assert retrained["epoch"] == r.best_epoch and retrained["classes"] == splits.classes
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["best.pt", "retrain.pt"]


def test_short_run_writes_best_once_and_cancel_before_a_checkpoint(
    splits: Splits, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from caltech_core.nets import checkpoints

    written: list[str] = []
    real_save = checkpoints.save_atomic
    monkeypatch.setattr(checkpointing, "save_atomic", lambda obj, path: (written.append(path.name), real_save(obj, path)))
    r = engine.train(BASE.replace(epochs=3), splits, workdir=tmp_path / "a", cache_dir=cache_dir)
    assert r.status == "finished" and written == ["best.pt"]  # under a minute: one write, at the end
    assert sorted(p.name for p in (tmp_path / "a").glob("*.pt")) == ["best.pt"]

    written.clear()
    batches: list[int] = []
    cb = engine.Callbacks(on_batch=lambda e, b, n, loss: batches.append(e), should_stop=lambda: len(batches) >= 3)
    r = engine.train(BASE.replace(epochs=5), splits, cb, workdir=tmp_path / "b", cache_dir=cache_dir)
    assert r.status == "cancelled" and written == ["best.pt"]  # epoch 1's best weights are not lost
    assert r.checkpoint_path == tmp_path / "b" / "best.pt"  # no last.pt yet: a resume starts over


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "resnet18"])
def test_fast_path_matches_plain_loop(arch: str, splits: Splits, cache_dir: Path, tmp_path: Path) -> None:
    cfg = BASE.replace(arch=arch, train="fc", epochs=2, step_size=1, gamma=0.5)
    plain = engine.train(cfg.replace(fast_path=False), splits, workdir=tmp_path / "plain", cache_dir=cache_dir)
    fast = engine.train(cfg, splits, workdir=tmp_path / "fast", cache_dir=cache_dir)
    assert (plain.status, fast.status) == ("finished", "finished")
    assert (plain.fast_path, fast.fast_path) == (False, True)
    for p, f in zip(plain.epochs, fast.epochs, strict=True):
        assert f.train_loss == pytest.approx(p.train_loss, rel=1e-5)
        assert f.val_loss == pytest.approx(p.val_loss, rel=1e-5)
        assert (f.train_acc, f.val_acc, f.lr) == (p.train_acc, p.val_acc, p.lr)
    assert fast.confusion == plain.confusion
    # The trained head is the same in both runs' best.pt.
    a = torch.load(tmp_path / "plain" / "best.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "fast" / "best.pt", weights_only=True)["model"]
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6)



def test_fast_path_reuses_cached_features_and_needs_a_deterministic_transform(
    splits: Splits, cache_dir: Path, tmp_path: Path
) -> None:
    cfg = BASE.replace(train="fc", epochs=1)
    first = engine.train(cfg, splits, workdir=tmp_path / "a", cache_dir=cache_dir)
    files = {p: p.stat().st_mtime_ns for p in (cache_dir / "features").glob("*.pt")}
    again = engine.train(cfg, splits, workdir=tmp_path / "b", cache_dir=cache_dir)
    assert first.fast_path and again.fast_path
    assert {p: p.stat().st_mtime_ns for p in (cache_dir / "features").glob("*.pt")} == files
    assert _curve(again) == _curve(first)
    augmented = engine.train(cfg.replace(augment=("hflip",)), splits, workdir=tmp_path / "c", cache_dir=cache_dir)
    assert augmented.status == "finished" and not augmented.fast_path
    trained_all = engine.train(cfg.replace(train="all"), splits, workdir=tmp_path / "d", cache_dir=cache_dir)
    assert not trained_all.fast_path


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected  # Classify's default: the same decision as "auto"
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_pretrained_efficientnet_lite2_fine_tunes_all_layers_at_its_native_size(
    splits: Splits, cache_dir: Path, tmp_path: Path
) -> None:
    """The GPU fine-tuning setting (Lite2, ImageNet weights, all layers, 260 px) runs end to end on the CPU."""
    cfg = TrainConfig(arch="efficientnet_lite2", pretrained=True, train="all", epochs=2, batch_size=4, lr=0.05,
                      device="cpu")
    assert (cfg.image_size, cfg.resize_size, cfg.normalization) == (260, 292, "half")
    r = engine.train(cfg, splits, workdir=tmp_path, cache_dir=cache_dir)
    assert r.status == "finished", r.error
    assert not r.fast_path and (cache_dir / "images-292").is_dir()
    # ImageNet features separate accordion / dalmatian / pizza after a few steps.
    assert r.test_acc is not None and r.test_acc >= 2 / 3
    state = torch.load(tmp_path / "best.pt", weights_only=True)["model"]
    reference = models.imagenet_model("efficientnet_lite2").state_dict()
    assert state["classifier.weight"].shape == (3, 1280)
    # Started from the ImageNet weights: a few small steps keep the stem close to them, unlike a random init.
    stem, imagenet_stem = state["conv_stem.weight"], reference["conv_stem.weight"]
    assert (stem - imagenet_stem).norm() < 0.05 * imagenet_stem.norm()
    assert not torch.equal(stem, imagenet_stem)  # and all layers were trained
