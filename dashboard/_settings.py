"""The Train form's widgets, generated from TrainConfig's Settings (label, help, choices, step, section).

Not a page itself. Every field's widget has the key `f_<field>`; `to_widgets` / `from_widgets` convert between a
TrainConfig and those widget values (number and text widgets cannot be empty, so a Setting's `unset` value,
e.g. 0, stands for None).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import streamlit as st

from caltech_core.config import SETTINGS, Setting, TrainConfig

KEY_PREFIX = "f_"


def in_group(group: str) -> list[Setting]:
    """The settings of one form section, in declaration order."""
    return [s for s in SETTINGS.values() if s.group == group]


def to_widgets(cfg: TrainConfig) -> dict[str, Any]:
    """A config's values as the form's session-state entries."""
    values = {}
    for name, value in cfg.to_dict().items():
        if value is None and SETTINGS[name].unset is not None:
            value = SETTINGS[name].unset
        values[KEY_PREFIX + name] = value
    return values


def from_widgets(state: Mapping[str, Any]) -> TrainConfig:
    """The form's values as a TrainConfig (ConfigError names the field and its range)."""
    values: dict[str, Any] = {}
    for name, setting in SETTINGS.items():
        value = state[KEY_PREFIX + name]
        if setting.unset is not None:
            value = value.strip() if isinstance(value, str) else value
            value = None if value == setting.unset else value
        values[name] = tuple(value) if setting.kind == "tuple" else value
    return TrainConfig.from_dict(values)


def widget(setting: Setting, *, help_prefix: str = "", options: list[str] | None = None, **extra: Any) -> Any:
    """Draw the widget of one setting (its kind picks checkbox, select, multiselect, number or text input);
    `help_prefix` and `options` add what only the page knows (the chosen architecture, the dataset's classes)."""
    key = KEY_PREFIX + setting.name
    help_text = " ".join(t for t in (help_prefix, setting.help_text) if t) or None
    labels = setting.labels
    format_func = labels.get if labels else str
    if setting.kind == "bool":
        return st.checkbox(setting.label, key=key, help=help_text, **extra)
    if setting.kind == "tuple":
        return st.multiselect(setting.label, options if options is not None else setting.choices, key=key,
                              format_func=format_func, help=help_text, **extra)
    if setting.choices:
        return st.selectbox(setting.label, setting.choices, key=key, format_func=format_func, help=help_text,
                            **extra)
    if setting.kind in ("int", "float"):
        return st.number_input(setting.label, key=key, step=setting.step, format=setting.fmt, help=help_text,
                               **extra)
    return st.text_input(setting.label, key=key, help=help_text, **extra)
