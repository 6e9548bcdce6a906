"""The study's numbers and qualitative findings, transcribed.

The product never reads the study's files at run time; tests/test_study_numbers.py checks every number here
against the study's numbers.json. A member the study gives no number for has none; nothing is guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StudyMetric:
    """A kind of number the study reports, and how close one run of ours must come to count as reproducing it."""

    label: str
    percent: bool  # the study gives percent; our runs store fractions
    single_run_tolerance: float  # |ours - study| (points, or loss units) still "reproduced" for a single run

    @property
    def tolerance_text(self) -> str:
        """The single-run tolerance in words: '1.5 points' for accuracies, '0.05' for a loss."""
        return f"{self.single_run_tolerance:g} points" if self.percent else f"{self.single_run_tolerance:g}"


# The metrics a study number can be. Accuracies: a single run within 1.5 points reproduces the study's mean
# of three; the baseline loss is given as "around 4.49", so within 0.05.
STUDY_METRICS: dict[str, StudyMetric] = {
    "val_acc": StudyMetric("validation accuracy", True, 1.5),
    "test_acc": StudyMetric("test accuracy", True, 1.5),
    # The last epoch's value: the baseline's accuracy "remains fixed at ... around 0.092" (a plateau, not a best).
    "final_val_acc": StudyMetric("final validation accuracy", True, 1.5),
    "final_train_loss": StudyMetric("final training loss", False, 0.05),
}
STUDY_REPEATS = 3  # the study's numbers are means of three runs with random splits and mini-batches
STUDY_SPLIT = {"train": 2892, "val": 2892, "test": 2893}  # Table 1: images per split, 101 classes
STUDY_CLASSES = 101

# The study's numbers per preset (percent for accuracies). Keys are the presets' member labels.
STUDY_BASELINE = {"alexnet lr=0.001": {"final_val_acc": 9.2, "final_train_loss": 4.49}}
STUDY_RETRAIN = {"alexnet best scratch": {"test_acc": 62.5}}
STUDY_TRANSFER = {"alexnet imagenet": {"val_acc": 82.54}}
STUDY_TABLE2 = {
    "all layers": {"val_acc": 82.54, "test_acc": 83.63},
    "fc only": {"val_acc": 82.34, "test_acc": 83.55},
    "conv only": {"val_acc": 34.62, "test_acc": 33.98},
}
STUDY_TABLE3 = {
    "none": {"val_acc": 82.34, "test_acc": 83.55},
    "crop": {"val_acc": 85.34, "test_acc": 84.42},
    "crop+hflip": {"val_acc": 85.12, "test_acc": 84.28},
    "crop+hflip+rotate45": {"val_acc": 84.04, "test_acc": 83.92},
}
STUDY_TABLE4 = {
    "vgg16": {"val_acc": 96.85, "test_acc": 93.6},
    "resnet18": {"val_acc": 93.35, "test_acc": 92.24},
    "resnet50": {"val_acc": 99.64, "test_acc": 95.89},
}


@dataclass(frozen=True)
class StudyRef:
    """Where a preset's results appear in the study and the study's own numbers for its members.

    `item` is the table/figure it feeds ("Table 2", "Figure 4"); `numbers` maps member label ->
    {metric (a STUDY_METRICS key): the study's value (percent for accuracies)}. Members the study gives no
    number for are absent.
    """

    item: str
    numbers: dict[str, dict[str, float]] = field(default_factory=dict)
    note: str = ""

    def __post_init__(self) -> None:
        for member, values in self.numbers.items():
            unknown = set(values) - set(STUDY_METRICS)
            if unknown:
                raise ValueError(f"{self.item} {member}: unknown study metric(s) {sorted(unknown)}")

    def numbers_for(self, member: str) -> dict[str, float]:
        return dict(self.numbers.get(member, {}))


@dataclass(frozen=True)
class Finding:
    """A qualitative finding of the study about one preset's runs; the report decides it from the store."""

    key: str
    preset: str
    item: str
    text: str


FINDINGS: tuple[Finding, ...] = (
    Finding("lr-0.1-diverges", "lr-grid", "Figure 5", "LR 0.1 diverges after a few epochs"),
    Finding("lr-1e-3-underfits", "lr-grid", "Figure 5",
            "LR 1e-3 underfits: it learns more slowly than LR 1e-2 (lower training and validation accuracy)"),
    Finding("lr-1e-2-best", "lr-grid", "Figure 5", "LR 1e-2 is the best of the LR grid on validation"),
    Finding("lr-5e-2-overfits", "more-epochs", "Figure 6",
            "At 60 epochs LR 5e-2 overfits: its validation loss climbs well above its minimum"),
    Finding("step-30-best", "step-grid", "Figure 7", "Step size 30 gives the lowest final validation loss"),
    Finding("step-above-30-overfits", "step-grid", "Figure 7",
            "Step sizes above 30 overfit more (clearly at 45): validation loss rises further from its minimum"),
    Finding("vflip-hurts", "augmentation", "Section 5",
            "Vertical flip is worse than no augmentation and the other augmentations"),
)
