"""Does our store reproduce the study? A verdict per number of the study and per qualitative finding.

A number is *reproduced* when the study's value lies within our mean ± 2 standard errors (two or more runs;
at least the study's own rounding), or within the metric's single-run tolerance of our one run
(`StudyMetric.single_run_tolerance`; `rule_text` says it in words); otherwise ours is *higher* or *lower*;
runs at other settings than the study's (a reduced scale) are *other setting*, shown but not compared;
with no finished run it is *not run*. Findings (`numbers.FINDINGS`) are decided by one rule each from the
curves and statuses of the preset's runs: *reproduced*, *not reproduced* or *not run*.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from caltech_core.status import RunStatus
from caltech_core.study.numbers import FINDINGS, STUDY_METRICS, STUDY_REPEATS, Finding

VERDICTS: tuple[str, ...] = ("reproduced", "higher", "lower", "other setting", "not run")
FINDING_VERDICTS: tuple[str, ...] = ("reproduced", "not reproduced", "not run")
OVERFIT_RISE = 0.10  # a validation loss ending 10% or more above its minimum counts as overfitting


@dataclass(frozen=True)
class Comparison:
    """Our runs against one number of the study, in the study's units (percent for accuracies)."""

    study: float
    verdict: str
    mean: float | None = None
    sd: float | None = None
    n: int = 0

    @property
    def difference(self) -> float | None:
        """Ours minus the study's (points for accuracies)."""
        return None if self.mean is None else self.mean - self.study


def compare(metric: str, study: float, ours: Sequence[float], comparable: bool = True) -> Comparison:
    """Verdict for the study's `study` value of `metric` given our runs' values (fractions for accuracies);
    runs that are not `comparable` (trained at other settings than the study's) get "other setting"."""
    spec = STUDY_METRICS[metric]
    values = [100 * v if spec.percent else v for v in ours]
    if not values:
        return Comparison(study, "not run")
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else None
    if not comparable:
        return Comparison(study, "other setting", mean, sd, len(values))
    # The study's number is itself rounded (9.2 stands for 9.15-9.25): identical repeats (sd 0) that round
    # to it reproduce it.
    margin = spec.single_run_tolerance if sd is None else max(2 * sd / math.sqrt(len(values)), _half_unit(study))
    reproduced = abs(mean - study) <= margin + 1e-9
    verdict = "reproduced" if reproduced else ("higher" if mean > study else "lower")
    return Comparison(study, verdict, mean, sd, len(values))


def rule_text(metrics: Iterable[str] = STUDY_METRICS) -> str:
    """When a number of `metrics` counts as reproduced, in words, each single-run tolerance from STUDY_METRICS."""
    labels: dict[str, list[str]] = {}  # tolerance text -> labels of the metrics it applies to
    for metric in metrics:
        spec = STUDY_METRICS[metric]
        labels.setdefault(spec.tolerance_text, []).append(spec.label)
    first, *others = labels
    exceptions = "; ".join(f"{text} for the {' and '.join(labels[text])}" for text in others)
    return (f"reproduced when the study's number (a mean of {STUDY_REPEATS} runs) lies within our mean ± 2 "
            f"standard errors, or within {first}{f' ({exceptions})' if exceptions else ''} of a single run; "
            "else higher or lower; runs at other settings than the study's (a reduced scale) are shown as "
            "'other setting', not compared")


def _half_unit(value: float) -> float:
    """Half a unit of the last decimal `value` is written with (9.2 -> 0.05, 95.89 -> 0.005)."""
    text = repr(float(value))
    decimals = len(text.split(".")[1].rstrip("0")) if "." in text else 0
    return 0.5 * 10.0 ** -decimals


# -- findings -------------------------------------------------------------------------------------------
# Each rule reads members: {member label: object with `statuses` ({status: count}), `curves` ({legend: epoch
# rows} of finished runs), `val_acc` and `test_acc` (lists of fractions)} and returns (verdict, evidence).

Members = Mapping[str, Any]


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def final_values(member: Any, key: str) -> list[float]:
    """The last epoch's `key` of each finished run (finite values only)."""
    out = []
    for rows in member.curves.values():
        value = rows[-1].get(key) if rows else None
        if value is not None and math.isfinite(value):
            out.append(float(value))
    return out


def _rise(member: Any) -> list[float]:
    """Per finished run: how far the last validation loss ends above the run's lowest (0.25 = 25% above)."""
    out = []
    for rows in member.curves.values():
        losses = [r["val_loss"] for r in rows if r.get("val_loss") is not None and math.isfinite(r["val_loss"])]
        if losses and min(losses) > 0:
            out.append(losses[-1] / min(losses) - 1)
    return out


def _finished(member: Any | None) -> bool:
    return member is not None and bool(member.curves)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _lr_01_diverges(m: Members) -> tuple[str, str]:
    member = m.get("lr=0.1")
    diverged = member.statuses.get(RunStatus.DIVERGED, 0) if member else 0
    rising = [r for r in _rise(member) if r >= OVERFIT_RISE] if member else []
    runs = diverged + (len(member.curves) if member else 0)
    if not runs:
        return "not run", "no finished or diverged run at LR 0.1"
    yes = diverged + len(rising)
    verdict = "reproduced" if 2 * yes > runs else "not reproduced"
    return verdict, f"{diverged} of {runs} runs diverged, {len(rising)} more ended with a rising validation loss"


def _lr_1e3_underfits(m: Members) -> tuple[str, str]:
    low, best = m.get("lr=0.001"), m.get("lr=0.01")
    if not (_finished(low) and _finished(best)):
        return "not run", "needs finished runs at LR 1e-3 and LR 1e-2"
    train_low, train_best = _mean(final_values(low, "train_acc")), _mean(final_values(best, "train_acc"))
    val_low, val_best = _mean(low.val_acc), _mean(best.val_acc)
    slower = None not in (train_low, train_best, val_low, val_best) and train_low < train_best and val_low < val_best
    return ("reproduced" if slower else "not reproduced",
            f"LR 1e-3: train {_pct(train_low)}, val {_pct(val_low)}; LR 1e-2: train {_pct(train_best)}, "
            f"val {_pct(val_best)}")


def _lr_1e2_best(m: Members) -> tuple[str, str]:
    unrun = [label for label, member in m.items() if not member.statuses]
    if unrun or not _finished(m.get("lr=0.01")):
        return "not run", "needs a run of every learning rate: " + (", ".join(unrun) or "lr=0.01 finished")
    means = {label: _mean(member.val_acc) for label, member in m.items() if member.val_acc}
    best = max(means, key=lambda k: means[k])
    evidence = ", ".join(f"{k} {_pct(v)}" for k, v in means.items())
    return ("reproduced" if best == "lr=0.01" else "not reproduced"), f"best validation: {best} ({evidence})"


def _lr_5e2_overfits(m: Members) -> tuple[str, str]:
    member = m.get("lr=0.05")
    if not _finished(member):
        diverged = member.statuses.get(RunStatus.DIVERGED, 0) if member else 0
        if diverged:
            return "not reproduced", f"{diverged} run(s) diverged instead of training"
        return "not run", "needs a finished run at LR 5e-2 (60 epochs)"
    rise = _mean(_rise(member))
    if rise is None:
        return "not run", "no validation loss recorded"
    verdict = "reproduced" if rise >= OVERFIT_RISE else "not reproduced"
    return verdict, f"validation loss ends {100 * rise:.0f}% above its minimum (overfitting: {OVERFIT_RISE:.0%} or more)"


def _step_30_best(m: Members) -> tuple[str, str]:
    finals = {label: _mean(final_values(member, "val_loss")) for label, member in m.items() if _finished(member)}
    finals = {k: v for k, v in finals.items() if v is not None}
    missing = [label for label in m if label not in finals]
    if missing:
        return "not run", "needs finished runs of " + ", ".join(missing)
    best = min(finals, key=lambda k: finals[k])
    evidence = ", ".join(f"{k} {v:.3f}" for k, v in finals.items())
    return ("reproduced" if best == "step_size=30" else "not reproduced"), f"final validation loss: {evidence}"


def _step_above_30_overfits(m: Members) -> tuple[str, str]:
    at30, at45 = m.get("step_size=30"), m.get("step_size=45")
    if not (_finished(at30) and _finished(at45)):
        return "not run", "needs finished runs with step size 30 and 45"
    rise30, rise45 = _mean(_rise(at30)), _mean(_rise(at45))
    if rise30 is None or rise45 is None:
        return "not run", "no validation loss recorded"
    return ("reproduced" if rise45 > rise30 else "not reproduced",
            f"validation loss ends {100 * rise30:.0f}% (step 30) and {100 * rise45:.0f}% (step 45) above its minimum")


def _vflip_hurts(m: Members) -> tuple[str, str]:
    def score(member: Any) -> float | None:
        return _mean(member.test_acc) if member.test_acc else _mean(member.val_acc)

    vflip = m.get("vflip")
    others = {label: score(member) for label, member in m.items() if label != "vflip" and _finished(member)}
    others = {k: v for k, v in others.items() if v is not None}
    if not _finished(vflip) or score(vflip) is None or not others:
        return "not run", "needs finished runs with vertical flip and at least one other augmentation"
    ours = score(vflip)
    evidence = f"vflip {_pct(ours)} vs " + ", ".join(f"{k} {_pct(v)}" for k, v in others.items())
    return ("reproduced" if all(ours < v for v in others.values()) else "not reproduced"), evidence


@dataclass(frozen=True)
class Rule:
    """How one finding is decided: `when` says in words when it counts as reproduced (shown beside it)."""

    when: str
    decide: Callable[[Members], tuple[str, str]]


_RISE = f"the validation loss ends {OVERFIT_RISE:.0%} or more above its minimum"
RULES: dict[str, Rule] = {
    "lr-0.1-diverges": Rule(f"most LR 0.1 runs diverge (stopped as 'diverged') or end rising: {_RISE}",
                            _lr_01_diverges),
    "lr-1e-3-underfits": Rule("LR 1e-3 ends with lower training accuracy and lower best validation accuracy than "
                              "LR 1e-2 (means over runs)", _lr_1e3_underfits),
    "lr-1e-2-best": Rule("every learning rate has run, and LR 1e-2 has the highest mean best validation accuracy",
                         _lr_1e2_best),
    "lr-5e-2-overfits": Rule(f"at 60 epochs, LR 5e-2 trains to the end and {_RISE} (mean over runs)",
                             _lr_5e2_overfits),
    "step-30-best": Rule("every step size has finished, and step 30 ends with the lowest mean final validation loss",
                         _step_30_best),
    "step-above-30-overfits": Rule("the validation loss ends further above its minimum at step 45 than at step 30 "
                                   "(means over runs)", _step_above_30_overfits),
    "vflip-hurts": Rule("vertical flip has a lower mean test accuracy (validation when no test) than every other "
                        "finished augmentation row", _vflip_hurts),
}
if set(RULES) != {f.key for f in FINDINGS}:  # one rule per finding, no more: fail loudly at import
    raise RuntimeError(f"findings without a rule or rules without a finding: {set(RULES) ^ {f.key for f in FINDINGS}}")


def decide(finding: Finding, members: Members) -> tuple[str, str]:
    """(verdict, evidence) for `finding` from its preset's members (see the rules above)."""
    return RULES[finding.key].decide(members)


def count(verdicts: Sequence[str], kinds: Sequence[str]) -> dict[str, int]:
    """How many of each verdict kind (every kind listed, zeros included)."""
    return {kind: sum(1 for v in verdicts if v == kind) for kind in kinds}
