"""The Train page's "Estimate on this device": a short run of the real loader and model, in minutes for the run.

Not a page. The estimate (caltech_core.training.estimate) takes a few seconds to a minute, so it runs behind a
button with a progress bar; its result is kept in the session for the config it was made for (any setting
changed, the panel asks again).
"""

from __future__ import annotations

import json
import math

import streamlit as st

from caltech_core.config import TrainConfig
from caltech_core.data.dataset import Splits
from dashboard._shared import format_seconds, get_store

KEY = "epoch_estimate"


def _config_key(cfg: TrainConfig) -> str:
    """The config without the fields that do not change its time (names, notes)."""
    d = cfg.to_dict()
    for name in ("name", "group"):
        d.pop(name, None)
    return json.dumps(d, sort_keys=True, default=str)


def _run_estimate(cfg: TrainConfig, splits: Splits) -> None:
    from caltech_core.training.estimate import estimate_epoch_seconds

    bar = st.progress(0.0, text="Timing a short run of the real loader and model…")

    def progress(done: int, total: int) -> None:
        bar.progress(done / total if total else 0.0, text=f"Timing a short run: step {done} of {total}")

    try:
        found = estimate_epoch_seconds(cfg, splits.root, cache_dir=get_store().cache_dir, splits=splits,
                                       progress=progress)
    except (ValueError, RuntimeError, OSError) as exc:
        bar.empty()
        st.error(f"Could not time this configuration: {exc}")
        return
    bar.empty()
    st.session_state[KEY] = (_config_key(cfg), found)


def estimate_panel(cfg: TrainConfig, splits: Splits | None) -> None:
    """The button, then the estimate for this config: per epoch, one-off work, the whole run in minutes."""
    if splits is None:
        return
    if st.button("Estimate on this device", key="estimate",
                 help="Runs a few real training batches (and, for the fast path, the feature pass) of this "
                      "configuration here, then scales them to the whole run."):
        _run_estimate(cfg, splits)
    kept = st.session_state.get(KEY)
    if not kept or kept[0] != _config_key(cfg):
        return
    est = kept[1]
    epoch_col, run_col = st.columns(2)
    epoch_col.metric("Estimated time per epoch", format_seconds(est.epoch_seconds),
                     help="Training batches and the validation pass, timed on this device with the real loader "
                          "and model (a warm-up batch not counted).")
    run_col.metric("Whole run", f"{max(1, math.ceil(est.run_minutes))} min" if est.run_seconds >= 60
                   else format_seconds(est.run_seconds),
                   help="Image caching and the fast path's features (once; with int8 features, quantising the "
                        "backbone too), every epoch, the test"
                        + (", and the retrain on train+val" if cfg.retrain_on_train_val else "") + ".")
    once = []
    if est.caching_seconds >= 1:
        once.append(f"decoding images {format_seconds(est.caching_seconds)}")
    if est.fast_path:
        once.append(f"backbone features of every image {format_seconds(est.feature_seconds)} (then each epoch "
                    "trains the head only)")
    batches = math.ceil(len(splits.train) / cfg.batch_size)
    st.caption(f"{batches} batch{'' if batches == 1 else 'es'} per epoch; speed mode: {est.speed}"
               + (f"; once per run: {', '.join(once)}" if once else "")
               + f". Timed on {est.probe_images} training images; a busy machine makes it longer.")
