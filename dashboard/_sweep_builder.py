"""The Train page's sweep builder: the form's settings are the base, some of them are varied (a list of values, a
range, or choices), with a strategy, a budget, repeats and pruning. It writes the same W&B-format spec the Sweeps
page's YAML box and the CLI read, checked by the same `sweeps.spec.parse_spec` before anything is stored, shows
it as YAML for the CLI, and starts it on the Sweeps page."""

from __future__ import annotations

from typing import Any

import streamlit as st
import yaml

from caltech_core.config import SETTINGS, ConfigError, Setting, TrainConfig, split_list
from caltech_core.runs import backend as job_backend
from caltech_core.sweeps import driver
from caltech_core.sweeps import spec as sweep_spec
from caltech_core.sweeps import sweep as sweeps
from dashboard._shared import backend, data_root, get_manager, get_store, missing_data_message

SHOW = "sweep_show"  # session key: the sweep the Sweeps page selects when it opens
KEY = "sw_"  # every widget of the builder
STRATEGIES = {"grid": "Grid: every combination", "random": "Random", "bayes": "Bayesian (Optuna's TPE)"}
PRUNING = {"none": "None", "median": "Median: below the median of earlier trials at that epoch",
           "hyperband": "Successive halving (W&B's hyperband)"}
# (scale, number type) of a range -> its W&B distribution; the spec refuses a log range of a whole-number setting
DISTRIBUTION = {("linear", "int"): "int_uniform", ("linear", "float"): "uniform",
                ("log", "float"): "log_uniform_values", ("log", "int"): "log_uniform_values"}


def sweepable() -> list[str]:
    """Every setting a sweep may vary (not the name and group it gives its runs)."""
    return [name for name in SETTINGS if name not in sweep_spec.SWEEP_OWNED]


def sweep_builder(cfg: TrainConfig | None) -> None:
    """The builder in an expander under the single-run form."""
    with st.expander("Sweep: vary some of these settings", icon=":material/tune:"):
        if cfg is None:
            st.info("Fix the form's problem above first: its settings are the sweep's base.")
            return
        st.caption("Every trial is an ordinary run of the queue with the form's settings, except the ones varied "
                   "here. The Sweeps page shows its trials as they train.")
        names = st.multiselect("Settings to vary", sweepable(), key=KEY + "vary",
                               format_func=lambda n: SETTINGS[n].label)
        data, problem = spec_data(cfg, names)
        checked = None
        if not names:
            st.info("Pick at least one setting to vary.")
        elif problem is None:
            try:
                checked = sweep_spec.parse_spec(data)
            except ConfigError as exc:
                problem = exc
        if problem is not None:
            st.error(f"**{problem.field}**: {problem.message}", icon=":material/error:")
        elif checked is not None:
            st.markdown(_count(checked))
        with st.popover("Show as YAML", icon=":material/code:"):
            st.caption("Save it as sweep.yaml and run `python -m caltech_core sweep sweep.yaml`.")
            st.code(yaml.safe_dump(data, sort_keys=False), language="yaml")
        if st.button("Start sweep", type="primary", key=KEY + "start", icon=":material/play_arrow:",
                     disabled=checked is None):
            _start(cfg, data)


def spec_data(cfg: TrainConfig, names: list[str]) -> tuple[dict[str, Any], ConfigError | None]:
    """The builder's widgets as a W&B-format spec (ours: base, budget_minutes, repeats, parallel), and the first
    value that could not even be read (a word in a list of numbers)."""
    parameters, problem = {}, None
    for name in names:
        try:
            parameters[name] = _parameter(SETTINGS[name], getattr(cfg, name))
        except ConfigError as exc:
            problem = problem or exc
    data: dict[str, Any] = {**_strategy(), "parameters": parameters}
    defaults = TrainConfig().to_dict()
    data["base"] = {k: v for k, v in cfg.to_dict().items()
                    if v != defaults[k] and k not in names and k not in sweep_spec.SWEEP_OWNED}
    return data, problem


def _parameter(setting: Setting, current: Any) -> dict[str, Any]:
    """One varied setting's widgets as its W&B body: values, or min/max with a distribution."""
    key = f"{KEY}p_{setting.name}_"
    st.markdown(f"**{setting.label}** (now {_text(current)})")
    if setting.kind == "bool":
        return {"values": st.multiselect("Values", [True, False], default=[True, False], key=key + "values")}
    if setting.choices and setting.kind != "tuple":
        labels = setting.labels or {}
        return {"values": st.multiselect("Choices", list(setting.choices), default=[current], key=key + "values",
                                         format_func=lambda c: labels.get(c, c))}
    if setting.kind == "tuple":
        text = st.text_area("Values, one per line (items separated by commas; `none` for an empty one)",
                            _text(current) or "none", key=key + "values", height=80)
        return {"values": [list(split_list(line)) for line in text.splitlines() if line.strip()]}
    if setting.kind not in ("int", "float"):
        text = st.text_input("Values (comma-separated)", str(current or ""), key=key + "values")
        return {"values": [v.strip() for v in text.split(",") if v.strip()]}
    how = st.radio("Vary it by", ("values", "range"), horizontal=True, key=key + "how",
                   format_func={"values": "a list of values", "range": "a range (min, max)"}.get)
    if how == "values":
        text = st.text_input("Values (comma-separated)", _text(current), key=key + "values")
        return {"values": [_number(setting, item) for item in text.split(",") if item.strip()]}
    low_col, high_col, scale_col, type_col = st.columns(4)
    low_default, high_default = _range_around(setting, current)
    low = low_col.number_input("Min", value=low_default, key=key + "min", format="%g")
    high = high_col.number_input("Max", value=high_default, key=key + "max", format="%g")
    scale = scale_col.radio("Scale", ("linear", "log"), key=key + "scale", horizontal=True,
                            index=1 if setting.kind == "float" and 0 < low_default * 100 <= high_default else 0)
    kind = type_col.radio("Numbers", ("int", "float"), key=key + "type", horizontal=True,
                          index=0 if setting.kind == "int" else 1)
    if kind == "int":
        low, high = int(low), int(high)
    return {"min": low, "max": high, "distribution": DISTRIBUTION[(scale, kind)]}


def _range_around(setting: Setting, current: Any) -> tuple[float, float]:
    """A default range around the form's value: a tenth to ten times it (halving to doubling for whole numbers),
    inside the setting's allowed range."""
    low_limit = setting.low if setting.low is not None else float("-inf")
    high_limit = setting.high if setting.high is not None else float("inf")
    current = float(current or 0)
    factor = 2 if setting.kind == "int" else 10
    low = max(low_limit, current / factor) if current > 0 else low_limit if low_limit > float("-inf") else 0.0
    high = min(high_limit, current * factor) if current > 0 else min(high_limit, 1.0)
    if setting.low_open and low <= setting.low:
        low = high / 100
    return float(round(low) if setting.kind == "int" else low), float(round(high) if setting.kind == "int" else high)


def _number(setting: Setting, item: str) -> int | float:
    try:
        value = float(item)
    except ValueError:
        raise ConfigError(f"parameters.{setting.name}", f"{item.strip()!r} is not a number") from None
    return int(value) if setting.kind == "int" and value.is_integer() else value


def _text(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, tuple | list) else f"{value:g}" \
        if isinstance(value, float) else str(value)


def _strategy() -> dict[str, Any]:
    """Strategy, metric, budget, repeats, pruning and parallel trials as spec keys (limits of 0 are left out)."""
    cols = st.columns(4)
    out: dict[str, Any] = {"method": cols[0].selectbox("Strategy", list(STRATEGIES), key=KEY + "method",
                                                       format_func=STRATEGIES.get)}
    metric = cols[1].selectbox("Scored on", list(sweep_spec.METRICS), key=KEY + "metric",
                               format_func={"val_acc": "validation accuracy (max)",
                                            "val_loss": "validation loss (min)"}.get)
    out["metric"] = {"name": metric, "goal": sweep_spec.METRICS[metric]}
    trials = cols[2].number_input("Trials at most (0 = no cap)", min_value=0, value=0, step=1, key=KEY + "run_cap",
                                  help="A grid runs each point once; random and Bayesian sweeps need a cap or "
                                       "minutes.")
    minutes = cols[3].number_input("Minutes at most (0 = no limit)", min_value=0.0, value=0.0, step=5.0,
                                   key=KEY + "minutes", help="No new trial starts after this much sweep time.")
    out.update({k: v for k, v in (("run_cap", int(trials)), ("budget_minutes", float(minutes))) if v})
    cols = st.columns(4)
    repeats = cols[0].number_input("Repeats per point", min_value=1, value=1, step=1, key=KEY + "repeats",
                                   help="Runs per trial with new seeds; the trial's value is their mean.")
    if repeats > 1:
        out["repeats"] = int(repeats)
    pruning = cols[1].selectbox("Stop bad trials early", list(PRUNING), key=KEY + "pruning", format_func=PRUNING.get)
    if pruning != "none":
        rule: dict[str, Any] = {"type": pruning, "min_iter": int(cols[2].number_input(
            "From epoch", min_value=1, value=1, step=1, key=KEY + "min_iter"))}
        if pruning == "median":
            rule["startup"] = int(cols[3].number_input("After trials", min_value=0, value=2, step=1,
                                                       key=KEY + "startup"))
        else:
            rule["eta"] = int(cols[3].number_input("Keep 1 in", min_value=2, value=3, step=1, key=KEY + "eta"))
        out["early_terminate"] = rule
    if backend() != job_backend.LOCAL:
        parallel = st.number_input("Trials at once (Ray)", min_value=1, value=2, step=1, key=KEY + "parallel")
        if parallel > 1:
            out["parallel"] = int(parallel)
    else:
        st.caption("Trials train one at a time in this process; pick the Ray backend in the sidebar to run them "
                   "side by side.")
    return out


def _count(spec: sweep_spec.SweepSpec) -> str:
    cap = spec.trial_cap()
    runs = f" × {spec.repeats} repeats = {cap * spec.repeats} runs" if cap and spec.repeats > 1 else ""
    grid = f" (the grid has {spec.grid_size()} points)" if spec.method == "grid" and cap != spec.grid_size() else ""
    if cap is None:
        return f"Will queue trials until {spec.budget_minutes:g} minutes are spent."
    limit = f", or fewer if {spec.budget_minutes:g} minutes run out" if spec.budget_minutes else ""
    return f"Will queue **{cap} trial{'s' if cap > 1 else ''}**{runs}{grid}{limit}."


def _start(cfg: TrainConfig, data: dict[str, Any]) -> None:
    """Store the sweep, drive it in this process and open the Sweeps page on it."""
    if data_root() is None and not cfg.dataset:
        st.error(missing_data_message())
        return
    try:
        sweep = sweeps.create_sweep(get_store().home, data)
    except ConfigError as exc:  # checked above already; kept for a spec that changed in between
        st.error(f"**{exc.field}**: {exc.message}")
        return
    driver.start_in_background(sweep, get_manager())
    st.session_state[SHOW] = sweep.id
    st.switch_page("dashboard/sweeps.py")
