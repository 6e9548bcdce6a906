"""How fast the Errors page is on the full test split (2893 images, 101 classes), and what `evaluate` costs.

A ResNet-18 at 224 px with random weights stands in for a trained run (the page's work does not depend on the
weights: the same number of images, cells and Grad-CAMs). Stages, each timed: decode the test images into a
fresh image cache (what training does once), `recompute.recompute` (the CLI's `evaluate`), then the page
through Streamlit's AppTest: first view (12 thumbnails with Grad-CAM), the same again (cached), the next page,
each other view, and the confusion cell with the most images.

    CALTECH101_ROOT=../shared/caltech101 .venv/bin/python bench/error_analysis.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from caltech_core import layout
from caltech_core.config import TrainConfig
from caltech_core.data.dataset import Splits
from caltech_core.data.imagecache import ImageCache
from caltech_core.nets import models
from caltech_core.nets.checkpoints import save_atomic
from caltech_core.runs.store import RunStore
from caltech_core.use import recompute

REPO = Path(__file__).resolve().parent.parent


def timed(label: str, fn, out: dict) -> object:
    start = time.perf_counter()
    value = fn()
    out[label] = round(time.perf_counter() - start, 2)
    print(f"{label}: {out[label]} s", flush=True)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", help="store folder (default: a new temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    home = Path(args.work or tempfile.mkdtemp(prefix="error-bench-"))
    os.environ["CALTECH_STUDIO_HOME"] = str(home)
    store = RunStore(home)
    cfg = TrainConfig(arch="resnet18", image_size=224, device="cpu", name="error-bench")
    splits = Splits.from_config(cfg)
    run_id = store.create_run(cfg, status="finished")
    save_atomic({"model": models.build_model("resnet18", splits.num_classes).state_dict(),
                 "classes": list(splits.classes), "config": cfg.to_dict(), "epoch": 1},
                layout.best(store.run_dir(run_id)))
    times: dict[str, float] = {}
    timed("decode test images into the cache", lambda: ImageCache.build([s.path for s in splits.test],
                                                                       store.cache_dir, cfg.resize_size), times)
    results, path = timed("evaluate (recompute per-image results)",
                          lambda: recompute.recompute(store, run_id, "test"), times)

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=600)
    at.query_params["run"] = str(run_id)
    at.switch_page("dashboard/errors.py")
    timed("page: first view (12 Grad-CAM thumbnails)", at.run, times)
    assert not at.exception, at.exception
    timed("page: same view again (cached)", at.run, times)
    pages = [n for n in at.number_input if n.label.startswith("Page")]
    if pages:
        pages[0].set_value(2)
        timed("page: next page of the cell", at.run, times)
    for view in ("Most confident mistakes", "Per-class accuracy", "Confused pairs"):
        at.radio(key="err_view").set_value(view)
        timed(f"page: {view}", at.run, times)
        assert not at.exception, at.exception
    at.toggle(key="err_cam").set_value(False)
    at.radio(key="err_view").set_value("Most confident mistakes")
    timed("page: most confident mistakes without Grad-CAM", at.run, times)
    print(json.dumps({"images": len(results), "classes": len(results.classes), "file_bytes": path.stat().st_size,
                      "torch_threads": args.threads, "seconds": times}, indent=2))


if __name__ == "__main__":
    main()
