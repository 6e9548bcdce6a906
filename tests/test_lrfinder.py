"""The learning-rate range test: a sensible suggestion on a small real problem, and nothing changed afterwards."""

from __future__ import annotations

import math

import pytest
import torch

from caltech_core.cli.app import main
from caltech_core.study.charts import lr_finder_figure
from caltech_core.training import engine, lrcurve, lrfinder

GRID = (1e-3, 1e-2, 1e-1, 1.0)  # a decade apart: the suggestion must land within one of the best


@pytest.fixture(scope="module")
def problem(tiny_config):
    """The mini tree's three classes at 64 px, trained long enough for the learning rate to matter."""
    return tiny_config(epochs=3, lr_schedule="cosine")


@pytest.mark.slow  # a range test and four 3-epoch trainings: 20-50 s on two shared cores
def test_suggestion_is_near_the_best_of_a_grid(problem, splits, cache_dir, tmp_path):
    finding = lrfinder.find_lr(problem, splits, cache_dir=cache_dir, num_steps=40)
    assert finding.suggestion is not None and finding.lr_min is not None
    assert lrcurve.START_LR <= finding.suggestion <= lrcurve.END_LR
    assert len(finding.smoothed) <= len(finding.losses) <= 40
    # The grid: the same model trained for a few epochs at each rate; best = lowest final training loss.
    final = {}
    for lr in GRID:
        result = engine.train(problem.replace(lr=lr), splits, workdir=tmp_path / str(lr), cache_dir=cache_dir)
        loss = result.epochs[-1].train_loss if result.epochs else math.inf
        final[lr] = loss if math.isfinite(loss) else math.inf
    best = min(final, key=final.get)
    assert best / 10 <= finding.suggestion <= best * 10, (finding.suggestion, final)


def test_weights_and_optimizer_are_restored(splits, cache_dir):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.123, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    # A least-squares fit: past a learning rate of about 2 / (largest curvature) every step overshoots.
    batches = [(torch.randn(4, 3, 8, 8, generator=generator), torch.randn(4, 3, generator=generator))
               for _ in range(3)]
    finding = lrfinder.lr_range_test(model, optimizer, batches, torch.nn.MSELoss(),
                                     device=torch.device("cpu"), num_steps=30, end_lr=1e6)
    assert finding.stopped_early  # rates up to 1e6 make this loss blow up before step 30
    assert len(finding.lrs) < 30 and finding.lrs == sorted(finding.lrs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert optimizer.param_groups[0]["lr"] == 0.123 and not optimizer.state
    fig = lr_finder_figure(finding.lrs, finding.losses, finding.smoothed, finding.suggestion)
    assert fig.layout.xaxis.type == "log" and len(fig.data) == 2
    with pytest.raises(ValueError, match="start_lr < end_lr"):
        lrfinder.lr_range_test(model, optimizer, batches, torch.nn.CrossEntropyLoss(), device=torch.device("cpu"),
                               start_lr=1.0, end_lr=0.1)


def test_cli_lr_find(mini_root, tmp_path, capsys):
    code = main(["lr-find", "--store", str(tmp_path), "--root", str(mini_root), "--arch", "mobilenet_v3_small",
                 "--image-size", "64", "--batch-size", "8", "--device", "cpu", "--steps", "16"])
    out = capsys.readouterr().out
    assert code == 0 and "suggested learning rate:" in out
    assert main(["lr-find", "--store", str(tmp_path), "--root", str(mini_root), "--start-lr", "1",
                 "--end-lr", "0.1"]) == 2
    assert "start_lr < end_lr" in capsys.readouterr().err


def test_settings_used_leave_out_what_the_test_does_not_read(problem) -> None:
    """The Train page keys its background range test by these: a new rate, schedule or epoch count keeps the
    result; a new batch size or optimizer does not."""
    used = lrcurve.settings_used(problem)
    assert lrcurve.settings_used(problem.replace(lr=0.5, epochs=9, lr_schedule="step", name="x")) == used
    assert lrcurve.settings_used(problem.replace(batch_size=problem.batch_size + 1)) != used
    assert lrcurve.settings_used(problem.replace(optimizer="adamw")) != used
