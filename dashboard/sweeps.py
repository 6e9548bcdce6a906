"""Sweeps: write a sweep (W&B's format) and start it, then watch its trials: curves overlaid and coloured by a
parameter, the trials table, parameters against the metric (parallel coordinates), parameter importance, and
the best trial retrained on train+val in one click."""

from __future__ import annotations

import pandas as pd
import streamlit as st
import yaml

from caltech_core.config import ConfigError
from caltech_core.sweeps import charts, driver
from caltech_core.sweeps import sweep as sweeps
from dashboard._auth import require_password
from dashboard._shared import data_root, get_manager, get_store, missing_data_message
from dashboard._sweep_builder import SHOW

REFRESH_SECONDS = 2.0
CHOSEN = "sweep_chosen"  # session key: the sweep picked
EXAMPLE = """\
method: bayes            # grid, random or bayes (Optuna's TPE)
metric: {name: val_acc, goal: maximize}
run_cap: 8               # trials; budget_minutes: 60 also ends it
parameters:
  lr: {min: 0.0001, max: 0.1, distribution: log_uniform_values}
  optimizer: {values: [sgd, adamw]}
early_terminate: {type: median, startup: 2}   # or {type: hyperband, min_iter: 1, eta: 3}
base:                    # the settings every trial starts from
  arch: mobilenet_v3_small
  image_size: 64
  epochs: 3
  batch_size: 32
  classes: 5
"""


def builder() -> None:
    """The spec as YAML, checked before anything is stored; a good one is stored and started."""
    with st.expander("New sweep", expanded=not sweeps.list_sweeps(store.home)):
        st.caption("W&B's sweep format: `method`, `metric`, `parameters` (each with `value`, `values`, or "
                   "`min`/`max` and a `distribution`), `run_cap`, `early_terminate`; ours: `base`, "
                   "`budget_minutes`, `repeats`, `parallel` (trials at once on a Ray backend).")
        text = st.text_area("Sweep spec (YAML)", EXAMPLE, height=320, key="sweep_spec")
        if st.button("Start sweep", type="primary", key="sweep_start", icon=":material/play_arrow:"):
            try:
                data = yaml.safe_load(text)
                if not isinstance(data, dict):
                    raise ConfigError("spec", "must be a mapping of sweep keys")
                if data_root() is None:
                    raise ConfigError("dataset", missing_data_message())
                sweep = sweeps.create_sweep(store.home, data)
            except yaml.YAMLError as exc:
                st.error(f"Not valid YAML: {exc}")
                return
            except ConfigError as exc:
                st.error(f"{exc.field}: {exc.message}")
                return
            driver.start_in_background(sweep, get_manager())
            st.session_state[SHOW] = sweep.id
            st.rerun()


def picker() -> sweeps.Sweep | None:
    found = sweeps.list_sweeps(store.home)
    if not found:
        st.info("No sweep yet: write one above.")
        return None
    by_id = {s.id: s for s in found}
    if SHOW in st.session_state:  # a sweep just started here or by the Train page's sweep builder
        st.session_state[CHOSEN] = st.session_state.pop(SHOW)
    ids = list(by_id)
    chosen = st.session_state.get(CHOSEN, ids[0])
    shown = {i: s.status() for i, s in by_id.items()}  # read from the trials on every refresh of `live`
    # No key: a keyed selectbox keeps its first labels in the browser, so a status changing in them would not
    # show; unkeyed, new labels make a new widget, and `index` keeps the choice.
    pick = st.selectbox("Sweep", ids, index=ids.index(chosen) if chosen in by_id else 0,
                        format_func=lambda i: f"#{i} {by_id[i].spec.title} ({shown[i]})")
    st.session_state[CHOSEN] = pick
    return by_id[pick]


def controls(sweep: sweeps.Sweep) -> None:
    status = sweep.status()
    state = sweep.state()
    driven = driver.driving(sweep)
    running = driven and status == "running"  # the driver's thread outlives the sweep's end a little
    cap = sweep.spec.trial_cap()
    cols = st.columns([3, 1])
    cols[0].markdown(f"**{sweep.spec.method}** sweep of `{sweep.spec.metric}` ({sweep.spec.goal}), "
                     f"trials {len(sweep.study().trials)}/{cap or '∞'} · {status}"
                     f"{' · driven here' if running else ''}")
    if state.get("message"):
        st.error(state["message"])
    if running:
        if cols[1].button("Stop after running trials", key="sweep_stop", icon=":material/stop:"):
            driver.stop_in_background(sweep)
    elif status != "finished" and not driven and cols[1].button("Resume", key="sweep_resume",
                                                                 icon=":material/replay:"):
        driver.start_in_background(sweep, get_manager())
        st.rerun()


def trials_view(sweep: sweeps.Sweep) -> None:
    """Curves, table, parallel coordinates and importances: refreshed while this process drives the sweep."""
    rows = sweeps.trials(sweep, store)
    if not rows:
        st.info("No trial has started yet.")
        return
    names = [p.name for p in sweep.spec.params]
    colour = st.selectbox("Colour curves by", names, key="sweep_colour")
    curves = {f"trial {r['trial']}": store.epochs(r["run_id"]) for r in rows if r["run_id"] is not None}
    st.plotly_chart(charts.trial_curves_figure(
        curves, {f"trial {r['trial']}": r["params"].get(colour) for r in rows if r["run_id"] is not None},
        sweep.spec.metric, colour), key="sweep_curves")
    table = pd.DataFrame([{"trial": r["trial"], "state": r["state"], "run": r["run_id"], "status": r["status"],
                           **r["params"], sweep.spec.metric: r["value"], "best epoch": r["best_epoch"],
                           "val acc": r["val_acc"], "test acc": r["test_acc"]} for r in rows])
    st.dataframe(table, hide_index=True, width="stretch", key="sweep_table")
    if any(r["value"] is not None for r in rows):
        st.plotly_chart(charts.parcoords_figure(rows, names, sweep.spec.metric), key="sweep_parcoords")
    importances = sweeps.importances(sweep)
    if importances:
        st.plotly_chart(charts.importance_figure(importances), key="sweep_importance")


def retrain_best(sweep: sweeps.Sweep) -> None:
    best = sweeps.best_run(sweep, store)
    if best is None:
        return
    st.markdown(f"Best: trial {best['trial']} (run #{best['run_id']}), {sweep.spec.metric} {best['value']:.4g}, "
                f"{best['params']}")
    if st.button("Retrain the best on train+val", key="sweep_retrain", icon=":material/model_training:"):
        run_id = get_manager().submit(sweeps.retrain_config(store, best["run_id"]))
        st.success(f"Queued run #{run_id}: the best settings, then retrained on train+val.")
        st.page_link("dashboard/monitor.py", label=f"Watch run #{run_id}", icon=":material/monitoring:",
                     query_params={"run": str(run_id)})


@st.fragment(run_every=REFRESH_SECONDS)
def live() -> None:
    """The picker and the chosen sweep, redrawn every REFRESH_SECONDS (the picker's statuses too)."""
    sweep = picker()
    if sweep is None:
        return
    controls(sweep)
    trials_view(sweep)
    retrain_best(sweep)


require_password()  # also when Streamlit runs this page without the entry point (AppTest)
st.title("Sweeps")
store = get_store()
builder()
live()
