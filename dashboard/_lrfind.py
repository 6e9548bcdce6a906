"""The Train page's "Find LR": the learning-rate range test of the form's config, its plot and "use this LR"."""

from __future__ import annotations

import streamlit as st

from caltech_core.config import TrainConfig
from caltech_core.data.dataset import Splits
from caltech_core.study import charts
from caltech_core.training import lrfinder
from dashboard._settings import KEY_PREFIX
from dashboard._shared import data_root, get_store


def _use(lr: float) -> None:
    st.session_state[KEY_PREFIX + "lr"] = float(f"{lr:.2g}")


def find_lr_panel(cfg: TrainConfig) -> None:
    """An expander running the range test on the form's settings (a minute or so) and plotting its curve."""
    with st.expander("Find a learning rate (range test)"):
        st.caption(f"Trains up to {lrfinder.NUM_STEPS} batches while the learning rate grows from "
                   f"{lrfinder.START_LR:g} to {lrfinder.END_LR:g}, then suggests where the loss falls fastest. "
                   "Nothing is stored and the weights are thrown away.")
        if st.button("Find LR", key="lrfind_run", icon=":material/search:"):
            bar = st.progress(0.0, text="range test")
            try:
                finding = lrfinder.find_lr(cfg, Splits.from_config(cfg, data_root()),
                                           cache_dir=get_store().cache_dir,
                                           progress=lambda done, total: bar.progress(done / total,
                                                                                     f"batch {done} of {total}"))
                st.session_state["lrfind"] = (cfg, finding)
            except (ValueError, FileNotFoundError) as exc:
                st.error(str(exc))
            bar.empty()
        found = st.session_state.get("lrfind")
        if not found:
            return
        tested, finding = found
        st.plotly_chart(charts.lr_finder_figure(finding.lrs, finding.losses, finding.smoothed, finding.suggestion),
                        key="lrfind_chart")
        if finding.suggestion is None:
            st.warning("Too few batches to suggest a rate.")
            return
        st.markdown(f"Suggested: **{finding.suggestion:.2g}** (steepest descent of the smoothed loss; "
                    f"lowest loss / 10: {finding.lr_min:.2g}); {len(finding.lrs)} batches in {finding.seconds:.0f} s"
                    f"{' for other settings than the form now has' if tested.replace(lr=cfg.lr) != cfg else ''}.")
        left, right = st.columns(2)
        left.button(f"Use {finding.suggestion:.2g}", key="lrfind_use", on_click=_use, args=(finding.suggestion,),
                    icon=":material/check:")
        # On AlexNet from scratch the lower rule matched the study's best rate (docs/benchmarks.md).
        right.button(f"Use {finding.lr_min:.2g} (the more careful rate)", key="lrfind_use_min", on_click=_use,
                     args=(finding.lr_min,))
