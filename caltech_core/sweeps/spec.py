"""A sweep's specification: W&B's sweep format as people already write it, plus a few keys of our own, checked
completely before anything is queued.

W&B keys: `method` (grid, random, bayes), `metric` (`name`: val_acc or val_loss, `goal`: maximize or
minimize), `parameters` (each a `TrainConfig` setting with `value`, `values`, or `min`/`max` and an optional
`distribution`: constant, categorical, int_uniform, uniform, log_uniform_values, or log_uniform whose min/max
are natural-log exponents, as in W&B), `run_cap`, `early_terminate` (`type: hyperband` with `min_iter` and `eta`
= Optuna's successive-halving pruner; our `type: median` with `min_iter` and `startup` = Optuna's median
pruner). `name`, `description`, `program`, `command`, `entity` and `project` are read and ignored.
Ours: `base` (the settings every trial starts from, e.g. the Train form's), `budget_minutes` (no new trial
starts after that much sweep time), `repeats` (runs per point, new seeds; the trial's value is their mean),
`parallel` (trials at once: keep 1 on the thread backend, more on Ray) and `seed` (the sampler's).

Every problem is a `ConfigError` whose field names the parameter (`parameters.lr`, `run_cap`, ...).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caltech_core.config import SETTINGS, ConfigError, TrainConfig

METHODS = ("grid", "random", "bayes")
METRICS = {"val_acc": "maximize", "val_loss": "minimize"}  # per-epoch columns a trial is scored and pruned on
GOALS = ("maximize", "minimize")
DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "uniform", "log_uniform_values", "log_uniform")
PRUNERS = ("hyperband", "median")
IGNORED = ("name", "description", "program", "command", "entity", "project")
OURS = ("base", "budget_minutes", "repeats", "parallel", "seed")
SWEEP_OWNED = ("name", "group")  # set by the sweep on every trial's runs
GRID_LIMIT = 1000  # points at most in a grid (an int_uniform range is enumerated)


@dataclass(frozen=True)
class Param:
    """One swept setting: fixed (`values` of one), a list of values, or a range."""

    name: str
    distribution: str
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None

    @property
    def log(self) -> bool:
        return self.distribution.startswith("log_")

    def grid_values(self) -> list[Any]:
        """Every value this parameter takes in a grid (ConfigError for a continuous range)."""
        if self.distribution == "int_uniform":
            return list(range(int(self.low), int(self.high) + 1))
        if self.values:
            return list(self.values)
        raise ConfigError(f"parameters.{self.name}", "a grid needs `values` or an int_uniform range, not a "
                                                     f"{self.distribution} range")


@dataclass(frozen=True)
class SweepSpec:
    method: str
    metric: str
    goal: str
    params: tuple[Param, ...]
    base: TrainConfig
    run_cap: int | None
    budget_minutes: float | None
    repeats: int
    parallel: int
    pruner: Mapping[str, Any] | None
    seed: int
    raw: Mapping[str, Any]  # what was given (stored as the sweep's spec.json)

    @property
    def title(self) -> str:
        return str(self.raw.get("name") or f"{self.method} over {', '.join(p.name for p in self.params)}")

    def grid_size(self) -> int:
        return math.prod(len(p.grid_values()) for p in self.params)

    def trial_cap(self) -> int | None:
        """Trials at most: run_cap, and for a grid its size."""
        caps = [c for c in (self.run_cap, self.grid_size() if self.method == "grid" else None) if c is not None]
        return min(caps) if caps else None


def load_spec(path: str | Path) -> dict[str, Any]:
    """A spec file's contents: YAML (.yaml/.yml) or JSON; ConfigError for unreadable or malformed files."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError("spec", f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError, with the line they stopped at
        raise ConfigError("spec", f"{path.name} is not valid {path.suffix.lstrip('.').upper()}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("spec", f"{path.name} must hold a mapping of sweep keys")
    return data


def parse_spec(data: Mapping[str, Any]) -> SweepSpec:
    """Check `data` completely and return the spec; ConfigError naming the first bad key or parameter."""
    unknown = sorted(set(data) - {"method", "metric", "parameters", "run_cap", "early_terminate", *IGNORED, *OURS})
    if unknown:
        raise ConfigError(unknown[0], "unknown sweep key (known: method, metric, parameters, run_cap, "
                                      f"early_terminate, {', '.join(OURS)})")
    method = data.get("method", "random")
    if method not in METHODS:
        raise ConfigError("method", f"{method!r} is not one of {', '.join(METHODS)}")
    metric, goal = _metric(data.get("metric", {}))
    base = _base(data.get("base", {}))
    params = data.get("parameters")
    if not isinstance(params, dict) or not params:
        raise ConfigError("parameters", "give at least one setting to sweep")
    parsed = tuple(_param(name, body, base) for name, body in params.items())
    run_cap = _positive(data, "run_cap", int)
    budget = _positive(data, "budget_minutes", float)
    if method != "grid" and run_cap is None and budget is None:
        raise ConfigError("run_cap", f"a {method} sweep needs run_cap (trials) or budget_minutes to end")
    spec = SweepSpec(method=method, metric=metric, goal=goal, params=parsed, base=base, run_cap=run_cap,
                     budget_minutes=budget, repeats=_positive(data, "repeats", int) or 1,
                     parallel=_positive(data, "parallel", int) or 1, pruner=_pruner(data.get("early_terminate")),
                     seed=_seed(data.get("seed", base.seed)), raw=dict(data))
    if method == "grid" and spec.grid_size() > GRID_LIMIT:
        raise ConfigError("parameters", f"the grid has {spec.grid_size()} points (at most {GRID_LIMIT})")
    return spec


def _metric(body: Any) -> tuple[str, str]:
    if not isinstance(body, dict) or set(body) - {"name", "goal"}:
        raise ConfigError("metric", "must be a mapping with name and goal")
    name = body.get("name", "val_acc")
    if name not in METRICS:
        raise ConfigError("metric.name", f"{name!r} is not one of {', '.join(METRICS)}")
    goal = body.get("goal", METRICS[name])
    if goal not in GOALS:
        raise ConfigError("metric.goal", f"{goal!r} is not one of {', '.join(GOALS)}")
    return name, goal


def _base(body: Any) -> TrainConfig:
    if not isinstance(body, dict):
        raise ConfigError("base", "must be a mapping of TrainConfig settings")
    try:
        return TrainConfig.from_dict(body)
    except ConfigError as exc:
        raise ConfigError(f"base.{exc.field}", exc.message) from exc


def _param(name: str, body: Any, base: TrainConfig) -> Param:
    field = f"parameters.{name}"
    if name not in SETTINGS:
        raise ConfigError(field, "unknown setting (known: " + ", ".join(s for s in SETTINGS if s not in SWEEP_OWNED)
                          + ")")
    if name in SWEEP_OWNED:
        raise ConfigError(field, "is set by the sweep itself")
    if not isinstance(body, dict):
        raise ConfigError(field, "must be a mapping with value, values, or min and max")
    setting = SETTINGS[name]
    distribution = body.get("distribution")
    if "value" in body:
        param = Param(name, "constant", (body["value"],))
    elif "values" in body:
        values = body["values"]
        if not isinstance(values, list) or not values:
            raise ConfigError(field, "values must be a non-empty list")
        param = Param(name, "categorical", tuple(_hashable(v) for v in values))
    elif "min" in body or "max" in body:
        low, high = body.get("min"), body.get("max")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
            raise ConfigError(field, "needs both min and max, as numbers")
        if distribution is None:  # W&B's rule: whole-number bounds mean int_uniform
            distribution = "int_uniform" if isinstance(low, int) and isinstance(high, int) else "uniform"
        if distribution not in DISTRIBUTIONS[2:]:
            raise ConfigError(field, f"distribution {distribution!r} for a range is not one of "
                                     f"{', '.join(DISTRIBUTIONS[2:])}")
        if low > high:
            raise ConfigError(field, f"min {low:g} is greater than max {high:g}")
        if low == high:
            raise ConfigError(field, f"the range from {low:g} to {high:g} is empty; use value: {low:g} to fix it")
        if distribution == "log_uniform":  # W&B: min/max are exponents of e
            low, high = math.exp(low), math.exp(high)
        elif distribution == "log_uniform_values" and low <= 0:
            raise ConfigError(field, f"a log range must stay above 0 (min is {low:g})")
        if setting.kind not in ("int", "float"):
            raise ConfigError(field, f"is a {setting.kind} setting: give values, not a range")
        if setting.kind == "int" and distribution != "int_uniform":
            raise ConfigError(field, "is a whole-number setting: use int_uniform (whole min and max) or values")
        param = Param(name, distribution, (), float(low), float(high))
    else:
        raise ConfigError(field, "needs value, values, or min and max")
    if distribution is not None and param.distribution in ("constant", "categorical") \
            and distribution != param.distribution:
        raise ConfigError(field, f"distribution {distribution!r} does not go with "
                                 f"{'value' if param.distribution == 'constant' else 'values'}")
    for value in (*param.values, *(() if param.low is None else (param.low, param.high))):
        _check_value(base, param, value)
    return param


def _hashable(value: Any) -> Any:
    """A list value (e.g. augmentations) as the comma-separated text the config also reads."""
    return ",".join(map(str, value)) if isinstance(value, list) else value


def _check_value(base: TrainConfig, param: Param, value: Any) -> None:
    """The value as TrainConfig would take it; its ConfigError, named after the parameter."""
    if param.distribution == "int_uniform":
        value = int(value)
    try:
        TrainConfig.from_dict({**base.to_dict(), param.name: value}) if param.name != "arch" else \
            base.replace(arch=value)
    except ConfigError as exc:
        raise ConfigError(f"parameters.{param.name}", f"{value!r} is refused: {exc}") from exc
    except TypeError as exc:
        raise ConfigError(f"parameters.{param.name}", f"{value!r} is refused: {exc}") from exc


def _positive(data: Mapping[str, Any], key: str, kind: type) -> Any:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ConfigError(key, f"must be a {'whole ' if kind is int else ''}number (got {value!r})")
    if value <= 0:
        raise ConfigError(key, f"must be more than 0 (got {value!r}); leave it out for no limit")
    return kind(value)


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError("seed", f"must be a whole number from 0 (got {value!r})")
    return value


def _pruner(body: Any) -> Mapping[str, Any] | None:
    if body is None:
        return None
    if not isinstance(body, dict) or body.get("type") not in PRUNERS:
        raise ConfigError("early_terminate", f"type must be one of {', '.join(PRUNERS)}")
    allowed = {"type", "min_iter", "eta", "startup", "max_iter", "s"}  # max_iter, s: W&B's, not needed here
    extra = sorted(set(body) - allowed)
    if extra:
        raise ConfigError(f"early_terminate.{extra[0]}", "unknown key (known: min_iter, eta, startup)")
    for key, low in (("min_iter", 1), ("eta", 2), ("startup", 0)):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ConfigError(f"early_terminate.{key}", f"must be a whole number from {low} (got {value!r})")
    return dict(body)


def trial_config(spec: SweepSpec, values: Mapping[str, Any], *, sweep_id: int, number: int) -> TrainConfig:
    """The config of trial `number`: the base with the trial's values, named so the trial's runs are found."""
    cfg = spec.base.replace(**{k: v for k, v in values.items() if k == "arch"})
    changes = {k: v for k, v in values.items() if k != "arch"}
    return TrainConfig.from_dict({**cfg.to_dict(), **changes, "group": group_name(sweep_id),
                                  "name": trial_name(sweep_id, number)})


def group_name(sweep_id: int) -> str:
    return f"sweep-{sweep_id}"


def trial_name(sweep_id: int, number: int) -> str:
    return f"sweep {sweep_id} trial {number}"
