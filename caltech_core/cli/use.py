"""`classify`, `evaluate` and `export`: use a trained run's weights (`export` also writes runs to TensorBoard
event files or an MLflow store, where people keep their experiments)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from caltech_core import layout
from caltech_core.cli.common import CliError, Parents, existing_run, open_store, percent, print_json
from caltech_core.runs.exporters import FORMATS as EXPORT_FORMATS


def register(sub: Any, parents: Parents) -> None:
    """`classify`, `evaluate`, `export`."""
    p = sub.add_parser("classify", parents=[parents.common], help="classify images with a trained run")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--run", type=int, required=True, metavar="ID")
    p.add_argument("--top", type=int, default=5, metavar="K")
    p.add_argument("--retrained", action="store_true",
                   help="use the model the run retrained on train+val (retrain.pt) instead of best.pt")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("evaluate", parents=[parents.common, parents.rooted],
                       help="per-image results of a run's best weights on the test or validation split")
    p.add_argument("run", type=int, metavar="RUN")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", parents=[parents.common], help="export a run's best model to ONNX or TorchScript, "
                                                                "or runs to TensorBoard event files or an MLflow store")
    p.add_argument("runs", type=int, nargs="+", metavar="RUN", help="one run (onnx, torchscript) or several")
    p.add_argument("--format", choices=("onnx", "torchscript", *EXPORT_FORMATS), required=True)
    p.add_argument("--out", metavar="DIR", required=True, help="folder for the model file and its JSON, or the "
                                                               "TensorBoard log dir / MLflow store")
    p.set_defaults(func=cmd_export)


def cmd_classify(args: argparse.Namespace) -> int:
    """Top-K classes of each image with a trained run's best weights; a bad file never stops the others."""
    from caltech_core.use import inference

    store = open_store(args)
    existing_run(store, args.run)
    try:
        classifier = inference.Classifier.from_run(store, args.run,
                                                   weights=layout.RETRAINED if args.retrained else layout.BEST)
    except inference.CheckpointError as exc:
        raise CliError(str(exc)) from exc
    results: list[dict[str, Any]] = []
    for name in args.images:
        try:
            image = inference.open_upload(Path(name).read_bytes(), Path(name).name)
            top = classifier.predict([image], top=args.top)[0]
        except (OSError, inference.ImageError) as exc:
            message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            results.append({"file": name, "error": message})
            continue
        results.append({"file": name, "top": [{"class": c, "prob": p} for c, p in top]})
    if args.json:
        print_json(results)
        return 0
    for item in results:
        if "error" in item:
            print(f"{item['file']}: error: {item['error']}")
        else:
            best = ", ".join(f"{t['class']} {percent(t['prob'])}" for t in item["top"])
            print(f"{item['file']}: {best}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Recompute a run's per-image results of one split from best.pt; print accuracy and the file's path."""
    from caltech_core.training import predictions
    from caltech_core.use import recompute

    store = open_store(args)
    existing_run(store, args.run)
    try:
        results, path = recompute.recompute(store, args.run, args.split, data_root=args.root)
    except predictions.ResultsError as exc:
        raise CliError(str(exc)) from exc
    summary = {"run_id": args.run, **results.summary(), "path": str(path), **_calibration(store, args, results)}
    if args.json:
        print_json(summary)
        return 0
    print(f"run #{args.run} on {summary['images']} {args.split} images: accuracy {percent(summary['acc'])}, "
          f"mean per-class accuracy {percent(summary['mean_class_acc'])}")
    if summary["temperature"] is None:
        print(f"not calibrated ({summary['calibration_error']}): ECE {summary['ece']:.4f}, NLL {summary['nll']:.4f}")
    else:
        raw = summary["uncalibrated"]
        print(f"temperature {summary['temperature']:.3f} (fitted on validation): ECE {raw['ece']:.4f} -> "
              f"{summary['ece']:.4f}, NLL {raw['nll']:.4f} -> {summary['nll']:.4f}")
    print(f"per-image results: {path}")
    return 0


def _calibration(store: Any, args: argparse.Namespace, results: Any) -> dict[str, Any]:
    """ECE and NLL of `results` with the run's temperature (fitted on validation now, recorded with the run),
    and without it; the raw scores and the reason when the run cannot be calibrated."""
    from caltech_core.training import predictions
    from caltech_core.use import calibration, recompute

    raw = calibration.scores(results.logits, results.labels)
    try:
        recompute.ensure_logits(store, args.run, "val", data_root=args.root)  # the temperature is fitted on it
        temperature = calibration.calibrate_run(store, args.run)["temperature"]
    except (calibration.CalibrationError, predictions.ResultsError) as exc:
        return {"ece": raw["ece"], "nll": raw["nll"], "temperature": None, "calibration_error": str(exc)}
    scaled = calibration.scores(results.logits, results.labels, temperature)
    return {"ece": scaled["ece"], "nll": scaled["nll"], "temperature": temperature, "fitted_on": "val",
            "uncalibrated": {"ece": raw["ece"], "nll": raw["nll"]}}


def cmd_export(args: argparse.Namespace) -> int:
    """`export`: a model format writes one run's model; tensorboard/mlflow write every run given."""
    from caltech_core.runs import exporters
    from caltech_core.runs.records import RunNotFoundError

    if args.format not in EXPORT_FORMATS:
        if len(args.runs) != 1:
            raise CliError(f"--format {args.format} exports one run's model; give one RUN", 2)
        args.run = args.runs[0]
        return _export_model(args)
    store = open_store(args)
    try:
        written = exporters.export_runs(store, args.runs, args.format, args.out)
    except RunNotFoundError as exc:
        raise CliError(f"run {exc.run_id} does not exist in {store.home}") from exc
    if args.json:
        print_json({"format": args.format, "out": str(args.out),
                    "runs": [{"run_id": i, "written": w} for i, w in zip(args.runs, written, strict=True)]})
        return 0
    for run_id, where in zip(args.runs, written, strict=True):
        print(f"run #{run_id}: {where}")
    view = f"tensorboard --logdir {args.out}" if args.format == "tensorboard" else \
        f"mlflow ui --backend-store-uri {exporters.mlflow_uri(args.out)}"
    print(f"view them with: {view}")
    return 0


def _export_model(args: argparse.Namespace) -> int:
    """Export a run's best weights to ONNX or TorchScript with a JSON of classes and preprocessing."""
    from caltech_core.use import export

    store = open_store(args)
    try:
        exported = export.export_run(store, args.run, args.format, args.out)
    except export.ExportError as exc:
        raise CliError(str(exc)) from exc
    summary = {"run_id": args.run, "format": args.format, "model": str(exported.model_path),
               "metadata": str(exported.meta_path), "max_difference": exported.max_difference}
    if args.json:
        print_json(summary)
    else:
        print(f"{args.format} model: {exported.model_path}")
        print(f"classes and preprocessing: {exported.meta_path}")
    return 0
