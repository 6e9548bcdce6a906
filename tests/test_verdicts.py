"""Verdicts on the study's numbers and the rules deciding its qualitative findings."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest

from caltech_core.study.experiments import PRESETS
from caltech_core.study.numbers import FINDINGS
from caltech_core.study.verdicts import RULES, compare, count, decide, rule_text


def test_a_single_run_reproduces_within_one_and_a_half_points() -> None:
    assert compare("test_acc", 62.5, [0.635]).verdict == "reproduced"  # +1.0 point
    assert compare("test_acc", 62.5, [0.61]).verdict == "reproduced"  # -1.5 points, the edge
    assert compare("test_acc", 62.5, [0.641]).verdict == "higher"
    high = compare("test_acc", 62.5, [0.60])
    assert (high.verdict, high.n, high.sd) == ("lower", 1, None)
    assert high.difference == pytest.approx(-2.5)
    assert compare("val_acc", 82.54, []).verdict == "not run"


def test_repeats_reproduce_within_two_standard_errors() -> None:
    runs = [0.60, 0.62, 0.64]  # mean 62, sd 2, standard error 2 / sqrt(3) = 1.155: reproduced within 2.31 points
    assert compare("test_acc", 64.2, runs).verdict == "reproduced"
    assert compare("test_acc", 64.4, runs).verdict == "lower"
    tight = [0.62, 0.62]  # no spread: only the exact number is reproduced, even when a single run would pass
    assert compare("test_acc", 63.0, tight).verdict == "lower"
    assert compare("test_acc", 62.0, tight).verdict == "reproduced"
    c = compare("test_acc", 59.5, runs)
    assert (c.mean, c.sd, c.n, c.verdict) == (pytest.approx(62.0), pytest.approx(2.0), 3, "higher")


def test_losses_are_compared_in_their_own_units() -> None:
    assert compare("final_train_loss", 4.49, [4.52]).verdict == "reproduced"
    assert compare("final_train_loss", 4.49, [4.60]).verdict == "higher"
    assert compare("final_train_loss", 4.49, [4.54]).verdict == "reproduced"  # +0.05, the edge
    assert count(["reproduced", "lower", "lower"], ("reproduced", "higher", "lower")) == {
        "reproduced": 1, "higher": 0, "lower": 2}


def test_the_rule_in_words_states_each_metric_s_own_tolerance() -> None:
    assert "within 1.5 points of a single run" in rule_text(["val_acc", "test_acc"])
    assert "within 0.05 of a single run" in rule_text(["final_train_loss"])
    assert "within 1.5 points (0.05 for the final training loss) of a single run" in rule_text()


@dataclass
class Member:
    """What the rules read of a report row: statuses, finished runs' epoch rows and accuracies."""

    statuses: dict[str, int] = field(default_factory=dict)
    curves: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    val_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)


def run(val_losses: list[float], train_acc: float = 0.5, val: float = 0.5, test: float | None = None) -> Member:
    rows = [{"epoch": i + 1, "val_loss": v, "train_acc": train_acc} for i, v in enumerate(val_losses)]
    return Member({"finished": 1}, {"run": rows}, [val], [] if test is None else [test])


def finding(key: str) -> Any:
    return next(f for f in FINDINGS if f.key == key)


def test_every_finding_has_a_rule_on_a_real_preset() -> None:
    assert set(RULES) == {f.key for f in FINDINGS}
    for f in FINDINGS:
        assert f.preset in PRESETS
        assert decide(f, {PRESETS[f.preset].member_label(c): Member() for c in PRESETS[f.preset].configs})[0] == "not run"


def test_lr_findings() -> None:
    diverged = Member({"diverged": 2})
    assert decide(finding("lr-0.1-diverges"), {"lr=0.1": diverged})[0] == "reproduced"
    assert decide(finding("lr-0.1-diverges"), {"lr=0.1": run([2.0, 1.5, 1.2])})[0] == "not reproduced"
    assert decide(finding("lr-0.1-diverges"), {"lr=0.1": run([2.0, 1.5, math.inf, 3.0])})[0] == "reproduced"

    slow, good = run([4.5, 4.4], train_acc=0.1, val=0.09), run([4.0, 3.0], train_acc=0.6, val=0.5)
    assert decide(finding("lr-1e-3-underfits"), {"lr=0.001": slow, "lr=0.01": good})[0] == "reproduced"
    assert decide(finding("lr-1e-3-underfits"), {"lr=0.001": good, "lr=0.01": slow})[0] == "not reproduced"

    grid = {"lr=0.005": run([3.0], val=0.3), "lr=0.001": slow, "lr=0.05": run([3.0], val=0.4),
            "lr=0.01": good, "lr=0.1": diverged}
    verdict, evidence = decide(finding("lr-1e-2-best"), grid)
    assert verdict == "reproduced" and "best validation: lr=0.01" in evidence
    assert decide(finding("lr-1e-2-best"), {**grid, "lr=0.05": run([3.0], val=0.6)})[0] == "not reproduced"
    assert decide(finding("lr-1e-2-best"), {**grid, "lr=0.005": Member()})[0] == "not run"


def test_overfitting_findings() -> None:
    assert decide(finding("lr-5e-2-overfits"), {"lr=0.05": run([3.0, 2.0, 2.6])})[0] == "reproduced"  # +30%
    assert decide(finding("lr-5e-2-overfits"), {"lr=0.05": run([3.0, 2.0, 2.05])})[0] == "not reproduced"
    assert decide(finding("lr-5e-2-overfits"), {"lr=0.05": Member({"diverged": 1})})[0] == "not reproduced"

    steps = {f"step_size={s}": run([3.0, 2.0, 2.0 + s / 100]) for s in (25, 30, 35, 40, 45)}
    assert decide(finding("step-above-30-overfits"), steps)[0] == "reproduced"
    assert decide(finding("step-30-best"), steps)[0] == "not reproduced"  # 25 ends lowest here
    steps["step_size=30"] = run([3.0, 2.0, 2.1])
    assert decide(finding("step-30-best"), steps)[0] == "reproduced"
    steps["step_size=45"] = run([3.0, 2.0, 2.0])
    assert decide(finding("step-above-30-overfits"), steps)[0] == "not reproduced"


def test_vertical_flip_finding() -> None:
    rows = {"none": run([1.0], test=0.80), "crop": run([1.0], test=0.84), "vflip": run([1.0], test=0.75)}
    assert decide(finding("vflip-hurts"), rows)[0] == "reproduced"
    rows["vflip"] = run([1.0], test=0.82)
    verdict, evidence = decide(finding("vflip-hurts"), rows)
    assert verdict == "not reproduced" and "vflip 82.0%" in evidence
    assert decide(finding("vflip-hurts"), {"none": rows["none"], "vflip": Member()})[0] == "not run"


def test_identical_repeats_reproduce_the_number_they_round_to():
    """The study's 9.2 stands for 9.15-9.25: two identical runs at 9.197% reproduce it, at 9.3% do not."""
    assert compare("final_val_acc", 9.2, [0.09197, 0.09197]).verdict == "reproduced"
    assert compare("final_val_acc", 9.2, [0.093, 0.093]).verdict == "higher"
    assert compare("test_acc", 95.89, [0.95887, 0.95887]).verdict == "reproduced"
