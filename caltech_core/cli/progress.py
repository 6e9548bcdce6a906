"""The CLI's progress bars, on stderr: a count (images checked) and a training run (epochs, phase, its end)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from caltech_core.status import Phase, ProgressFn, RunStatus

if TYPE_CHECKING:
    from caltech_core.status import Progress

REDRAW_SECONDS = 0.25  # the engine reports every image while caching; a run's bar redraws a few times a second


@contextmanager
def count_bar(desc: str, unit: str) -> Iterator[ProgressFn]:
    """A bar counting `unit`s, erased when the block ends; yields the (done, total) callback feeding it."""
    from tqdm import tqdm

    with tqdm(desc=desc, unit=unit, file=sys.stderr, leave=False, mininterval=0.5) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)  # update() honours mininterval; refresh() would redraw per image

        yield progress


class RunBar:
    """One run's bar: epochs done (fractional) and what the run is doing; `update` is run_job's on_progress.

    The end is drawn by `close(status)` from the status run_job returned, not from the tracker's last phase:
    a finished run fills the bar, any other stays where it stopped and says how it ended ("failed").
    """

    def __init__(self, epochs: int, label: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=epochs, desc=label, unit="epoch", file=sys.stderr, dynamic_ncols=True,
                        bar_format="{desc} {percentage:3.0f}%|{bar}| {n:.2f}/{total} epochs "
                                   "[{elapsed}<{remaining}{postfix}]")
        self._phase: Phase | None = None
        self._drawn_at = 0.0

    def update(self, p: Progress) -> None:
        phase = p.phase
        if phase in (Phase.DONE, Phase.FAILED):
            return  # close() draws the end, knowing how the run ended
        now = time.monotonic()
        if phase == self._phase and now - self._drawn_at < REDRAW_SECONDS:
            return
        self._phase, self._drawn_at = phase, now
        self.bar.n = round(p.fraction * p.epochs, 2)
        self.bar.set_postfix_str(f"{phase.label} {_detail(phase, p)}".strip(), refresh=False)
        self.bar.refresh()

    def close(self, status: str) -> None:
        """Draw how the run ended and leave the bar on the terminal."""
        if status == RunStatus.FINISHED:
            self.bar.n = self.bar.total
            self.bar.set_postfix_str(Phase.DONE.label, refresh=False)
        else:
            self.bar.set_postfix_str(status, refresh=False)
        self.bar.close()


def _detail(phase: Phase, p: Progress) -> str:
    """The count within the phase: batches while training, megabytes downloaded, images cached."""
    if phase in (Phase.TRAINING, Phase.VALIDATING):
        return f"batch {p.batch}/{p.batches}"
    if phase.unit == "bytes":
        return f"{p.phase_done / 2**20:.1f}/{p.phase_total / 2**20:.1f} MB"
    if phase.unit == "images" and p.phase_total:
        return f"{p.phase_done}/{p.phase_total}"
    return ""
