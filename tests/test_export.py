"""ONNX / TorchScript export of tiny real runs: outputs equal the PyTorch model's on real images; clear failures."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from caltech_core.cli import main
from caltech_core.config import TrainConfig
from caltech_core.runs import job
from caltech_core.runs.store import RunStore
from caltech_core.use import export
from caltech_core.use.inference import Classifier


@pytest.fixture(scope="module")
def store(finished_home: Path, mini_root: Path, tiny_config: Callable[..., TrainConfig]) -> RunStore:
    """One finished one-epoch run (64 px, three mini classes) per architecture under test: the shared tiny
    MobileNetV3-Small run and an EfficientNet-Lite0 one."""
    store = RunStore(finished_home)
    run_id = store.create_run(tiny_config(arch="efficientnet_lite0", name="efficientnet_lite0"))
    assert job.run_job(store, run_id, data_root=mini_root) == "finished"
    return store


def _run_id(store: RunStore, arch: str) -> int:
    return next(r.id for r in store.list_runs(status="finished") if r.arch == arch)


def _preprocess_from_json(meta: dict, paths: list[Path]) -> torch.Tensor:
    """The model input built only from the exported JSON, the way a user outside the studio would."""
    pre = meta["preprocessing"]
    assert pre["interpolation"] == "bilinear" and pre["color"] == "RGB"
    batch = []
    for path in paths:
        img = Image.open(path).convert("RGB")
        w, h = img.size
        short = pre["resize_shorter_side"]
        size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        img = img.resize(size, Image.Resampling.BILINEAR)
        crop = pre["center_crop"]
        left, top = round((img.width - crop) / 2), round((img.height - crop) / 2)
        arr = np.asarray(img.crop((left, top, left + crop, top + crop)), dtype=np.float32) / 255.0
        arr = (arr - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)
        batch.append(arr.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(batch))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "efficientnet_lite0"])
def test_export_matches_pytorch_on_real_images(store: RunStore, mini_root: Path, tmp_path: Path, arch: str,
                                               fmt: str) -> None:
    run_id = _run_id(store, arch)
    exported = export.export_run(store, run_id, fmt, tmp_path)
    assert exported.model_path.suffix == export.FORMATS[fmt] and exported.max_difference <= export.TOLERANCE
    meta = json.loads(exported.meta_path.read_text())
    assert meta["classes"] == ["accordion", "dalmatian", "pizza"] and meta["arch"] == arch
    assert meta["preprocessing"]["center_crop"] == 64 and meta["preprocessing"]["resize_shorter_side"] == 73
    assert meta["input"]["shape"] == ["batch", 3, 64, 64]

    paths = sorted((mini_root / "101_ObjectCategories").glob("*/*.jpg"))[::4][:7]  # real images, 3 classes
    classifier = Classifier.from_run(store, run_id, device="cpu")
    reference_input = classifier._batch([Image.open(p).convert("RGB") for p in paths])
    x = _preprocess_from_json(meta, paths)
    assert torch.allclose(x, reference_input, atol=0.05)  # JSON's recipe = the studio's (resampling rounding)
    with torch.inference_mode():
        expected = classifier.model(x).numpy()
    got = export.run_export(exported.model_path, fmt, x)
    assert got.shape == (7, 3)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_unsupported_exports_fail_with_a_message(store: RunStore, tmp_path: Path, capsys: pytest.CaptureFixture
                                                 ) -> None:
    with pytest.raises(export.ExportError, match="unknown export format 'keras'; choose one of: onnx, torchscript"):
        export.export_run(store, _run_id(store, "mobilenet_v3_small"), "keras", tmp_path)
    untrained = store.create_run(TrainConfig(arch="mobilenet_v3_small", image_size=64), status="cancelled")
    with pytest.raises(export.ExportError, match="has no saved weights"):
        export.export_run(store, untrained, "onnx", tmp_path)
    assert main(["export", "999", "--format", "onnx", "--out", str(tmp_path), "--store", str(store.home)]) == 1
    assert "run 999 does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["export", "1", "--format", "keras", "--out", str(tmp_path), "--store", str(store.home)])
    assert exc.value.code == 2
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_cli_export_writes_model_and_json(store: RunStore, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_id = _run_id(store, "mobilenet_v3_small")
    code = main(["export", str(run_id), "--format", "torchscript", "--out", str(tmp_path / "out"),
                 "--store", str(store.home), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert Path(result["model"]) == tmp_path / "out" / f"run-{run_id}-mobilenet_v3_small.pt"
    assert json.loads(Path(result["metadata"]).read_text())["format"] == "torchscript"
