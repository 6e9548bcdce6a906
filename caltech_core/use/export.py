"""Export a run's best weights to ONNX or TorchScript, with a JSON of class names and preprocessing beside it.

The model takes float32 NCHW RGB batches, already resized, centre-cropped and normalised as the JSON says, and
returns logits (divide them by the JSON's `temperature`, fitted on the validation split, then apply softmax for
calibrated probabilities; 1.0 when the run could not be calibrated). ONNX uses torch's exporter at opset `OPSET`, which
onnxruntime's CPU provider runs; the batch dimension is dynamic in both formats. Every export is checked
against the PyTorch model on a random batch before it is handed out.
"""

from __future__ import annotations

import io
import json
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from caltech_core.nets.checkpoints import CheckpointError

OPSET = 18  # the torch.export-based exporter's lowest opset; onnxruntime >= 1.14 runs it on the CPU
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}  # format -> model file suffix
TOLERANCE = 1e-3  # largest |logit difference| accepted between an export and the PyTorch model
INPUT_NAME, OUTPUT_NAME = "image", "logits"


class ExportError(RuntimeError):
    """A run cannot be exported; the message says why and what to do."""


@dataclass(frozen=True)
class Exported:
    model_path: Path
    meta_path: Path
    max_difference: float  # between the export and the PyTorch model on the check batch


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")


def metadata(classifier: Any, fmt: str, run: Any) -> dict[str, Any]:
    """What a user of the exported file needs: classes, preprocessing, input and output."""
    size = classifier.image_size
    meta: dict[str, Any] = {
        "format": fmt, "run_id": run.id, "name": run.name, "arch": classifier.arch,
        "classes": list(classifier.classes), "num_classes": len(classifier.classes),
        "preprocessing": {
            "color": "RGB", "resize_shorter_side": classifier.resize_size, "interpolation": classifier.interpolation,
            "center_crop": size, "scale": "divide by 255 to [0, 1]",
            "mean": list(classifier.mean), "std": list(classifier.std),
        },
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, size, size], "dtype": "float32", "layout": "NCHW"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(classifier.classes)],
                   "meaning": "logits; divide by temperature, then apply softmax"},
        "temperature": classifier.temperature,
        "test_acc": run.results.get("test_acc"), "torch": torch.__version__,
    }
    if fmt == "onnx":
        meta["opset"] = OPSET
    return meta


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        import onnx  # noqa: F401  (the exporter needs it; a clear message beats its ImportError)
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ExportError(f"ONNX export needs the packages in requirements.txt (onnx, onnxscript): {exc}") from exc
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      opset_version=OPSET, dynamo=True, external_data=False,
                      dynamic_shapes=({0: batch},))


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        # torch.jit is deprecated upstream but TorchScript files remain loadable by libtorch and torch.jit.load.
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch")
        torch.jit.trace(model, example).save(str(path))


def run_export(path: Path, fmt: str, x: torch.Tensor) -> np.ndarray:
    """Logits of an exported file on batch `x` (onnxruntime CPU for ONNX, torch.jit.load for TorchScript)."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch")
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return loaded(x).numpy()


def export_run(store: Any, run_id: int, fmt: str, out_dir: str | Path) -> Exported:
    """Write `<out_dir>/run-<id>-<arch>.<onnx|pt>` and its `.json`; ExportError with the reason otherwise."""
    from caltech_core.use.inference import Classifier

    _check_format(fmt)
    run = store.get_run(run_id)
    if run is None:
        raise ExportError(f"run {run_id} does not exist")
    try:
        classifier = Classifier.from_run(store, run_id, device="cpu")
    except CheckpointError as exc:
        raise ExportError(str(exc)) from exc
    model = classifier.model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"run-{run_id}-{classifier.arch}"
    model_path, meta_path = out / f"{stem}{FORMATS[fmt]}", out / f"{stem}.json"
    size = classifier.image_size
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, size, size, generator=generator)
    exporter = _export_onnx if fmt == "onnx" else _export_torchscript
    try:
        exporter(model, example, model_path)
    except ExportError:
        raise
    except Exception as exc:  # the exporters raise many types; the user needs the architecture and the reason
        model_path.unlink(missing_ok=True)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"run {run_id} ({classifier.arch}) cannot be exported to {fmt}: {first}") from exc
    check = torch.randn(3, 3, size, size, generator=generator)  # another batch size: the batch axis is dynamic
    with torch.inference_mode():
        expected = model(check).numpy()
    difference = float(np.abs(run_export(model_path, fmt, check) - expected).max())
    if not difference <= TOLERANCE:
        model_path.unlink(missing_ok=True)
        raise ExportError(f"the {fmt} export of run {run_id} ({classifier.arch}) disagrees with the PyTorch model "
                          f"(largest logit difference {difference:.3g} > {TOLERANCE}); it was not kept")
    meta_path.write_text(json.dumps(metadata(classifier, fmt, run), indent=2) + "\n")
    return Exported(model_path, meta_path, difference)


def export_zip(store: Any, run_id: int, fmt: str) -> tuple[str, bytes]:
    """(file name, zip bytes) holding the exported model and its JSON, for a download button."""
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        exported = export_run(store, run_id, fmt, tmp)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in (exported.model_path, exported.meta_path):
                zf.write(path, path.name)
        return f"{exported.model_path.stem}-{fmt}.zip", buffer.getvalue()
