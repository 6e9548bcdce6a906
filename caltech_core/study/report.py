"""Rebuild the study's tables and figures from the run store, with a verdict per study number and finding.

Each experiment section comes from one preset (caltech_core.study.experiments), its title included; which
stored runs count for which member is caltech_core.study.matching's. Finished runs give the numbers (mean and
sample standard deviation over seeds); diverged/failed runs are counted but not averaged. Experiments without
runs are marked "missing — run preset X", never filled in. caltech_core.study.export writes the Markdown.
(A little over 400 lines: sections, summary and the compact form of their tables read best in one place.)
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import plotly.graph_objects as go

from caltech_core.status import ProgressFn, RunStatus
from caltech_core.study import charts, verdicts
from caltech_core.study.experiments import PRESETS, Preset, run_test_acc, run_val_acc
from caltech_core.study.matching import (
    MemberResult,
    defining_fields,
    distinct_runs,
    member_result,
    setting_text,
)
from caltech_core.study.numbers import FINDINGS, STUDY_CLASSES, STUDY_METRICS, STUDY_SPLIT

DASH = "—"

# The experiment sections in the study's order: (preset, kind). Title and table/figure come from the preset.
# Kind "curves" draws training curves; "table" draws a bar chart of test accuracy per member beside the study's.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("baseline", "curves"),
    ("lr-grid", "curves"),
    ("more-epochs", "curves"),
    ("step-grid", "curves"),
    ("retrain", "curves"),
    ("transfer", "curves"),
    ("freezing", "table"),
    ("augmentation", "table"),
    ("architectures", "table"),
    ("best-offline", "table"),
)
# Column prefix of each study metric in a row: "<p> (ours)", "<p> (study)", "Δ <p>", "<p> verdict".
METRIC_PREFIX = {"val_acc": "val", "test_acc": "test", "final_val_acc": "final val", "final_train_loss": "final train loss"}


@dataclass
class Section:
    """One table or figure of the study, rebuilt."""

    key: str
    item: str
    title: str
    preset: str | None
    columns: list[str]
    rows: list[dict[str, Any]]
    figures: dict[str, go.Figure] = field(default_factory=dict)
    missing: bool = False
    message: str = ""
    notes: list[str] = field(default_factory=list)
    members: list[MemberResult] = field(default_factory=list)


@dataclass
class Report:
    """Every section of the study, in the study's order, and how many of its numbers we reproduce."""

    generated: float
    store_home: str
    sections: list[Section]
    notes: list[str] = field(default_factory=list)
    runs: int = 0
    compute_seconds: float = 0.0  # start to finish of every run in the store that has ended
    repeated: int = 0  # ended runs not counted: the same (config, seed, split seed) as a counted one

    def section(self, key: str) -> Section:
        return next(s for s in self.sections if s.key == key)

    @property
    def missing_presets(self) -> list[str]:
        """Presets whose experiment has no run at all (what to queue next)."""
        return [s.preset for s in self.sections if s.missing and s.preset]

    @property
    def summary(self) -> dict[str, Any]:
        """Counts of verdicts over the study's experiment numbers, apart from its dataset facts (Table 1's split
        sizes, which any copy of the dataset reproduces), over its findings, runs and compute time."""
        def verdicts_of(parts: list[Section]) -> list[str]:
            return [v for s in parts for r in s.rows for v in r.get("verdicts", {}).values()]

        numbers = verdicts_of([s for s in self.sections if s.preset])
        facts = verdicts_of([s for s in self.sections if s.key == "table1"])
        findings = [r["verdict"] for s in self.sections if s.key == "findings" for r in s.rows]
        return {"numbers": verdicts.count(numbers, verdicts.VERDICTS), "numbers_total": len(numbers),
                "dataset": verdicts.count(facts, verdicts.VERDICTS), "dataset_total": len(facts),
                "findings": verdicts.count(findings, verdicts.FINDING_VERDICTS), "findings_total": len(findings),
                "runs": self.runs, "repeated_runs": self.repeated, "compute_seconds": self.compute_seconds,
                "compute_hours": round(self.compute_seconds / 3600, 2)}


# -- numbers -------------------------------------------------------------------------------------

def mean_spread(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None when fewer than two values)."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def format_pct(mean: float | None, spread: float | None = None, n: int | None = None) -> str:
    """'61.2%', '61.2 ± 1.3% (n=3)' or '—' for a fraction in [0, 1]."""
    if mean is None:
        return DASH
    text = f"{100 * mean:.1f}"
    if spread is not None:
        text += f" ± {100 * spread:.1f}"
    text += "%"
    if n is not None and n > 1:
        text += f" (n={n})"
    return text


def _format_metric(metric: str, c: verdicts.Comparison) -> dict[str, str]:
    """The four display cells of one study metric: ours (mean ± sd, n), the study's, the difference, verdict."""
    p = METRIC_PREFIX[metric]
    if STUDY_METRICS[metric].percent:
        ours = DASH if c.mean is None else format_pct(c.mean / 100, None if c.sd is None else c.sd / 100, c.n)
        study, diff = f"{c.study:g}%", (DASH if c.difference is None else f"{c.difference:+.1f} pts")
    else:
        ours = DASH if c.mean is None else f"{c.mean:.2f}" + (f" ± {c.sd:.2f}" if c.sd is not None else "") + (
            f" (n={c.n})" if c.n > 1 else "")
        study, diff = f"{c.study:g}", (DASH if c.difference is None else f"{c.difference:+.2f}")
    return {f"{p} (ours)": ours, f"{p} (study)": study, f"Δ {p}": diff, f"{p} verdict": c.verdict}


def repeat_summary(runs: list[Any]) -> list[dict[str, Any]]:
    """One row per experiment that runs repeat (same group, name and defining config; seeds and splits vary):
    number of finished runs, their seeds, validation/test accuracy mean ± sample standard deviation (a run
    repeating another's config, seed and split seed counted once)."""
    grouped: dict[tuple[str, str, str], list[Any]] = {}
    for run in sorted(distinct_runs(runs), key=lambda r: r.id):
        if run.status != RunStatus.FINISHED:
            continue
        key = (run.group, run.name, json.dumps(defining_fields(run.config), sort_keys=True, default=str))
        grouped.setdefault(key, []).append(run)
    rows = []
    for (group, name, _), members in grouped.items():
        vals = [v for r in members if (v := run_val_acc(r)) is not None]
        tests = [t for r in members if (t := run_test_acc(r)) is not None]
        val_mean, val_sd = mean_spread(vals)
        test_mean, test_sd = mean_spread(tests)
        rows.append({
            "experiment": name or members[0].label, "group": group, "runs": len(members),
            "seeds": ", ".join(str(r.config.seed) for r in members),
            "val_acc": format_pct(val_mean, val_sd), "test_acc": format_pct(test_mean, test_sd),
            "val_acc_mean": val_mean, "val_acc_sd": val_sd, "test_acc_mean": test_mean, "test_acc_sd": test_sd,
            "run_ids": [r.id for r in members],
        })
    return rows


# -- sections ------------------------------------------------------------------------------------

def _member_row(m: MemberResult, preset: Preset, metrics: list[str]) -> dict[str, Any]:
    val_mean, val_sd = mean_spread(m.val_acc)
    test_mean, test_sd = mean_spread(m.test_acc)
    study_values = defining_fields(m.config)
    if m.needs:
        setting = f"not run: needs {m.needs}"
    elif m.missing:
        setting = f"missing — run preset {preset.name}"
    elif not m.run_ids:
        setting = "no finished run"
    elif m.differs:
        setting = "differs from the study: " + ", ".join(
            f"{k} {'/'.join(sorted(v))} (study {setting_text(study_values[k])})" for k, v in sorted(m.differs.items()))
    else:
        setting = "study setting"
    comparisons = m.comparisons()
    row: dict[str, Any] = {"experiment": m.label, "runs": len(m.run_ids)}
    for metric in metrics:
        if metric in comparisons:
            row.update(_format_metric(metric, comparisons[metric]))
        else:
            p = METRIC_PREFIX[metric]
            ours = m.ours(metric)
            if STUDY_METRICS[metric].percent:
                mean, sd = mean_spread(ours)
                shown = format_pct(mean, sd, len(ours))
            else:
                shown = f"{statistics.fmean(ours):.2f}" if ours else DASH
            row.update({f"{p} (ours)": shown, f"{p} (study)": DASH, f"Δ {p}": DASH, f"{p} verdict": DASH})
    row.update({
        "setting": setting,
        "statuses": ", ".join(f"{k} {v}" for k, v in sorted(m.statuses.items())) or DASH,
        "seeds": ", ".join(str(s) for s in sorted(set(m.seeds))) or DASH,
        # Raw numbers (fractions) for JSON consumers and charts.
        "val_acc_mean": val_mean, "val_acc_sd": val_sd, "test_acc_mean": test_mean, "test_acc_sd": test_sd,
        "study_numbers": dict(m.study), "verdicts": {k: c.verdict for k, c in comparisons.items()},
        "differences": {k: c.difference for k, c in comparisons.items()}, "needs": m.needs,
        "run_ids": list(m.run_ids),
    })
    return row


def _member_columns(metrics: list[str]) -> list[str]:
    cells = [c for metric in metrics for c in (f"{METRIC_PREFIX[metric]} (ours)", f"{METRIC_PREFIX[metric]} (study)",
                                               f"Δ {METRIC_PREFIX[metric]}", f"{METRIC_PREFIX[metric]} verdict")]
    return ["experiment", "runs", *cells, "setting", "statuses", "seeds"]


def _references(members: list[MemberResult], metric: str, scale: float) -> dict[str, float]:
    """Reference lines for the study's values of `metric` for the members with curves:
    'study [member] val 9.2%' -> value on the axis."""
    many = len(members) > 1
    members = [m for m in members if m.curves]
    return {f"study{' ' + m.label if many else ''} {METRIC_PREFIX[metric]} {m.study[metric]:g}{'%' if scale != 1 else ''}":
            m.study[metric] / scale for m in members if metric in m.study}


def _experiment_section(preset_name: str, kind: str, runs: list[Any], store: Any) -> Section:
    preset = PRESETS[preset_name]
    item, title = preset.study_ref.item, preset.title
    members = [member_result(preset, cfg, runs, store) for cfg in preset.configs]
    extra = sorted({k for m in members for k in m.study} - {"val_acc", "test_acc"}, key=list(METRIC_PREFIX).index)
    metrics = ["val_acc", "test_acc", *extra]
    rows = [_member_row(m, preset, metrics) for m in members]
    section = Section(
        key=preset_name, item=item, title=title, preset=preset_name, columns=_member_columns(metrics),
        rows=rows, members=members,
    )
    if preset.study_ref.note:
        section.notes.append(preset.study_ref.note)
    section.notes.append(
        "Ours: best validation accuracy and test accuracy, mean ± standard deviation over finished runs (n). "
        f"Verdict: {verdicts.rule_text(metrics)}.")
    if all(m.missing for m in members):
        section.missing = True
        needs = sorted({m.needs for m in members if m.needs})
        section.message = (f"not run: needs {', '.join(needs)}" if needs else
                           f"missing — run preset {preset_name} (python -m caltech_core train --preset {preset_name})")
        return section
    curves = {label: rows for m in members for label, rows in m.curves.items()}
    val_refs = _references(members, "val_acc", 100) | _references(members, "final_val_acc", 100)
    if kind == "curves" and curves:
        if len(curves) == 1:
            only = next(iter(curves.values()))
            section.figures["loss"] = _titled(charts.with_reference_lines(
                charts.loss_figure(only), _references(members, "final_train_loss", 1)), f"{item}: {title} — loss")
            section.figures["accuracy"] = _titled(charts.with_reference_lines(
                charts.accuracy_figure(only), val_refs), f"{item}: {title} — accuracy")
        else:
            section.figures["val_acc"] = _titled(
                charts.with_reference_lines(charts.val_curves_figure(curves, "val_acc"), val_refs), f"{item}: {title}")
            section.figures["val_loss"] = _titled(
                charts.val_curves_figure(curves, "val_loss"), f"{item}: {title} — validation loss")
            if loss_refs := _references(members, "final_train_loss", 1):
                section.figures["train_loss"] = _titled(charts.with_reference_lines(
                    charts.val_curves_figure(curves, "train_loss"), loss_refs), f"{item}: {title} — training loss")
    if kind == "table":
        labels = [m.label for m in members]
        values = [r["test_acc_mean"] for r in rows]
        if any(v is not None for v in values):
            study = [m.study["test_acc"] / 100 if "test_acc" in m.study else None for m in members]
            section.figures["test_acc"] = _titled(
                charts.accuracy_bar_figure(labels, values, "Test accuracy", study=study),
                f"{item}: {title} — test accuracy")
        if curves:
            section.figures["val_acc"] = _titled(charts.with_reference_lines(
                charts.val_curves_figure(curves, "val_acc"), val_refs), f"{item}: {title} — validation accuracy")
    return section


def _findings_section(experiments: dict[str, Section]) -> Section:
    rows = []
    for finding in FINDINGS:
        members = {m.label: m for m in experiments[finding.preset].members}
        verdict, evidence = verdicts.decide(finding, members)
        rows.append({"finding": finding.text, "source": finding.item, "preset": finding.preset,
                     "verdict": verdict, "evidence": evidence, "rule": verdicts.RULES[finding.key].when})
    return Section(
        "findings", "Findings", "The study's qualitative findings, decided from our runs", None,
        ["finding", "source", "preset", "verdict", "evidence", "rule"], rows,
        notes=[f"Overfitting: the validation loss ends {verdicts.OVERFIT_RISE:.0%} or more above its minimum."],
    )


def _titled(fig: go.Figure, title: str) -> go.Figure:
    fig.update_layout(title=title)
    return fig


def _exact_verdict(ours: int | None, study: int) -> str:
    if ours is None:
        return "not run"
    return "reproduced" if ours == study else ("higher" if ours > study else "lower")


def _table1_rows(counts: dict[str, int | None]) -> list[dict[str, Any]]:
    study = {**STUDY_SPLIT, "classes": STUDY_CLASSES}
    return [{"split": k, "images": DASH if counts.get(k) is None else counts[k], "study": study[k],
             "verdict": _exact_verdict(counts.get(k), study[k]),
             "verdicts": {"images": _exact_verdict(counts.get(k), study[k])}} for k in study]


def _dataset_sections(data_root: Any) -> list[Section]:
    from caltech_core.data import scan  # imported lazily: the report of an empty store needs no dataset

    columns = ["split", "images", "study", "verdict"]
    try:
        summary = scan.dataset_summary(data_root, scan=False)
    except (FileNotFoundError, ValueError) as exc:
        message = f"missing — dataset not available: {exc}"
        return [
            Section("table1", "Table 1", "Dataset split sizes", None, columns, _table1_rows({}), missing=True,
                    message=message),
            Section("figure2", "Figure 2", "Images per class", None, ["class", "images"], [], missing=True,
                    message=message),
        ]
    splits = summary["splits"]
    table1 = Section(
        "table1", "Table 1", "Dataset split sizes", None, columns,
        _table1_rows({**{k: int(splits[k]) for k in ("train", "val", "test")}, "classes": int(summary["num_classes"])}),
        notes=[f"Dataset at {summary['root']}; {len(summary.get('skipped', []))} split-file lines skipped "
               "(missing or non-image files). Train/validation: the official training list halved per class."],
    )
    per_class = summary["images_per_class"]
    counts = sorted(per_class.values())
    figure2 = Section(
        "figure2", "Figure 2", "Images per class", None, ["statistic", "images"],
        [{"statistic": "classes", "images": len(counts)},
         {"statistic": "fewest", "images": counts[0] if counts else 0},
         {"statistic": "median", "images": statistics.median(counts) if counts else 0},
         {"statistic": "most", "images": counts[-1] if counts else 0}],
        figures={"histogram": _titled(charts.class_counts_figure(per_class), "Figure 2: images per class")},
    )
    return [table1, figure2]


def build_report(store: Any, data_root: Any = None, progress: ProgressFn | None = None) -> Report:
    """Rebuild every table and figure of the study from `store` (and the dataset for Table 1 / Figure 2),
    with a verdict per study number and per finding; `progress` counts the sections built."""
    runs = store.list_runs(newest_first=False)
    counted = distinct_runs(runs)
    sections = _dataset_sections(data_root)
    experiments = {}
    for done, (name, kind) in enumerate(SECTIONS, 1):
        experiments[name] = _experiment_section(name, kind, counted, store)
        if progress is not None:
            progress(done, len(SECTIONS))
    sections += [*experiments.values(), _findings_section(experiments)]
    ended = [r.finished - r.started for r in runs if r.started is not None and r.finished is not None]
    return Report(generated=time.time(), store_home=str(getattr(store, "home", "")), sections=sections,
                  runs=len(runs), compute_seconds=float(sum(ended)), repeated=len(runs) - len(counted))


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    return value


def report_summary(report: Report) -> dict[str, Any]:
    """The report as plain JSON-able data (no figures); `summary` counts the verdicts."""
    return _jsonable({
        "generated": report.generated,
        "store": report.store_home,
        "summary": report.summary,
        "missing_presets": report.missing_presets,
        "notes": list(report.notes),
        "sections": [
            {"key": s.key, "item": s.item, "title": s.title, "preset": s.preset, "missing": s.missing,
             "message": s.message, "columns": s.columns, "rows": s.rows, "notes": s.notes,
             "figures": sorted(s.figures)}
            for s in report.sections
        ],
    })


def summary_lines(report: Report) -> list[str]:
    """The verdict counts in words (the top of the Report page and of report.md)."""
    s = report.summary
    numbers = ", ".join(f"{n} {k}" for k, n in s["numbers"].items())
    findings = ", ".join(f"{n} {k}" for k, n in s["findings"].items())
    dataset = ", ".join(f"{n} {k}" for k, n in s["dataset"].items() if n)
    repeated = (f"; {s['repeated_runs']} repeating another's config, seed and split seed, counted once"
                if s["repeated_runs"] else "")
    return [f"Of the study's {s['numbers_total']} experiment numbers: {numbers}.",
            f"Of its {s['findings_total']} qualitative findings: {findings}.",
            f"Dataset facts (Table 1, {s['dataset_total']} split sizes and classes): {dataset or 'none'}.",
            f"{s['runs']} run(s) in the store{repeated}; {s['compute_hours']:.2f} h of compute (start to end of "
            "every ended run)."]


# -- compact tables -------------------------------------------------------------------------------------------

def compact_rows(part: Section) -> tuple[list[str], list[dict[str, Any]]]:
    """The short form of a section's table: (columns, rows) with ours, the study's and the verdict per row;
    every other column stays in `part.rows` (the details)."""
    if part.key == "findings":
        columns = ["finding", "source", "verdict"]
        return columns, [{k: r[k] for k in columns} for r in part.rows]
    if not part.preset:
        return part.columns, part.rows
    rows = []
    for r in part.rows:
        metrics = [m for m in METRIC_PREFIX if f"{METRIC_PREFIX[m]} (ours)" in r]
        judged = [m for m in metrics if r[f"{METRIC_PREFIX[m]} verdict"] != DASH] or metrics[:1]
        verdict = {r[f"{METRIC_PREFIX[m]} verdict"] for m in judged}
        rows.append({"experiment": r["experiment"], "runs": r["runs"], "ours": _cells(r, judged, "(ours)"),
                     "study": _cells(r, judged, "(study)"),
                     "verdict": verdict.pop() if len(verdict) == 1 else _cells(r, judged, "verdict")})
    return ["experiment", "runs", "ours", "study", "verdict"], rows


def _cells(row: dict[str, Any], metrics: list[str], kind: str) -> str:
    """One kind of cell ('(ours)', '(study)', 'verdict') of several metrics: 'val 82.1% · test 83.0%'."""
    return " · ".join(f"{METRIC_PREFIX[m]} {row[f'{METRIC_PREFIX[m]} {kind}']}" for m in metrics)
