"""The Report page's "Reproduce the study" panel: the plan (runs, minutes each, total, what does not fit or
needs weights) and one button that queues what is missing. Planning and queueing are library calls
(caltech_core.study.plan); queueing again continues, it never repeats a finished run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from caltech_core.study.plan import SCALES, Estimator, plan_study, probe_estimator, queue_plan
from dashboard._shared import data_root, get_manager, get_store


@st.cache_resource(show_spinner=False)
def _estimator(root: str) -> Estimator:
    """One estimator per dataset root and process: it times each model once, then answers from memory."""
    return probe_estimator(Path(root) if root else None)


def reproduce_panel() -> None:
    """Scale, repeats and budget; the plan once asked for; the button that queues it."""
    with st.expander("Reproduce the study", expanded=st.session_state.get("reproduce_planned", False)):
        st.caption("Every experiment of the study, each repeated with new seeds and train/validation splits, "
                   "queued on the job manager. Runs already in the store count (finished ones are never run "
                   "again, interrupted ones resume); the report below fills in as they finish. The same "
                   "from the command line: `python -m caltech_core reproduce`.")
        scale_col, repeats_col, budget_col = st.columns(3)
        scale = scale_col.selectbox("Scale", list(SCALES), key="reproduce_scale",
                                    help=" · ".join(f"{s.name}: {s.why}" for s in SCALES.values()))
        repeats = int(repeats_col.number_input(
            "Repeats", min_value=1, max_value=100, value=SCALES[scale].repeats, step=1, key=f"reproduce_repeats_{scale}",
            help="The study's numbers are means of 3 runs."))
        budget = budget_col.number_input("Budget (minutes, 0 = none)", min_value=0.0, value=0.0, step=30.0,
                                         key="reproduce_budget",
                                         help="Only what fits is queued, in order; the rest is listed.")
        if st.button("Plan (times this machine briefly)", key="reproduce_plan"):
            st.session_state["reproduce_planned"] = True
        if not st.session_state.get("reproduce_planned"):
            return
        root = data_root()
        with st.spinner("Timing one training step of each model on this machine…"):
            plan = plan_study(get_store(), _estimator(str(root or "")), scale=scale, repeats=repeats,
                              budget_minutes=budget or None)
        st.dataframe(pd.DataFrame(plan.to_dict()["runs"]), hide_index=True, width="stretch")
        st.caption(plan.summary() + ". Minutes are estimates from one timed step of each model (random "
                                    "pixels); a run on a GPU shares it with any other running run.")
        if not plan.todo:
            st.success("Nothing left to run at this scale: every planned run is in the store.")
            return
        if not plan.to_queue:
            st.info(f"All {len(plan.todo)} run(s) left are queued or running; follow them on the Monitor page.")
            return
        if root is None:
            st.warning("The dataset is not available: see the Data page before reproducing.")
            return
        if st.button(f"Reproduce the study: queue {len(plan.to_queue)} run(s)", type="primary", key="reproduce_go"):
            queued = plan.to_queue
            queue_plan(plan, get_manager())
            st.success(f"Queued {len(queued)} run(s) ({', '.join(f'#{r.run_id}' for r in queued)}); follow them on "
                       "the Monitor page. Come back here any time: the plan shows what is done.")
