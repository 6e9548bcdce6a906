"""The Train page's "Find LR": the learning-rate range test of the form's config on the background mechanism
(a progress bar; the page stays usable), its plot and "use this LR"."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import streamlit as st

from caltech_core.config import TrainConfig
from caltech_core.data.dataset import Splits
from caltech_core.status import ProgressFn
from caltech_core.study import charts
from caltech_core.training import lrcurve, lrfinder
from dashboard._settings import KEY_PREFIX
from dashboard._shared import background, data_root, get_store

ASKED = "lrfind_asked"  # session key: (background key, the config tested, batches) of the last "Find LR"
MIN_STEPS = 20  # the suggestion skips the first lrcurve.SKIP_START points; fewer leaves too little to pick from


def _use(lr: float) -> None:
    st.session_state[KEY_PREFIX + "lr"] = float(f"{lr:.2g}")


def task_key(cfg: TrainConfig, home: Path, root: Path | None) -> str:
    """One range test per store, dataset and the settings it depends on (not the rate, epochs or schedule)."""
    return f"lrfind:{home}:{root}:{json.dumps(lrcurve.settings_used(cfg), sort_keys=True)}"


def _run(cfg: TrainConfig, root: Path | None, cache_dir: Path, steps: int, progress: ProgressFn) -> lrcurve.LRFinding:
    return lrfinder.find_lr(cfg, Splits.from_config(cfg, root), cache_dir=cache_dir, num_steps=steps,
                            progress=progress)


def find_lr_panel(cfg: TrainConfig) -> None:
    """An expander starting the range test on the form's settings (a minute or so) and plotting its curve."""
    with st.expander("Find a learning rate (range test)", expanded=ASKED in st.session_state):
        st.caption("Trains for the batches set below while the learning rate grows from "
                   f"{lrcurve.START_LR:g} to {lrcurve.END_LR:g}, then suggests where the loss falls fastest. "
                   "Nothing is stored and the weights are thrown away; it runs in the background.")
        store, root = get_store(), data_root()
        steps_col, button_col = st.columns([1, 3], vertical_alignment="bottom")
        steps = int(steps_col.number_input("Batches", min_value=MIN_STEPS, max_value=1000, value=lrcurve.NUM_STEPS,
                                           step=10, key="lrfind_steps",
                                           help="More batches: a finer curve, a longer test."))
        if button_col.button("Find LR", key="lrfind_run", icon=":material/search:"):
            st.session_state[ASKED] = (f"{task_key(cfg, store.home, root)}:{steps}", cfg, steps)
        if ASKED not in st.session_state:
            return
        key, tested, steps = st.session_state[ASKED]
        finding = background(key, partial(_run, tested, root, store.cache_dir, steps), "Range test (batches)")
        if finding is not None:
            _result(finding, changed=lrcurve.settings_used(tested) != lrcurve.settings_used(cfg))


def _result(finding: lrcurve.LRFinding, *, changed: bool) -> None:
    """The curve, the suggestion and the buttons putting a rate into the form."""
    st.plotly_chart(charts.lr_finder_figure(finding.lrs, finding.losses, finding.smoothed, finding.suggestion),
                    key="lrfind_chart")
    if finding.suggestion is None:
        st.warning("Too few batches to suggest a rate.")
        return
    st.markdown(f"Suggested: **{finding.suggestion:.2g}** (steepest descent of the smoothed loss; "
                f"lowest loss / 10: {finding.lr_min:.2g}); {len(finding.lrs)} batches in {finding.seconds:.0f} s"
                f"{' for other settings than the form now has (press Find LR again)' if changed else ''}.")
    left, right = st.columns(2)
    left.button(f"Use {finding.suggestion:.2g}", key="lrfind_use", on_click=_use, args=(finding.suggestion,),
                icon=":material/check:")
    # On AlexNet from scratch the lower rule matched the study's best rate (docs/benchmarks.md).
    right.button(f"Use {finding.lr_min:.2g} (the more careful rate)", key="lrfind_use_min", on_click=_use,
                 args=(finding.lr_min,))
