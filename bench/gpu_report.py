"""The check's summary as Markdown, JUnit counts of the CUDA tests, and the candidate chosen per group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpu_plans import TARGET_LITE, TARGET_SCRATCH_AUG

from caltech_core.study.numbers import STUDY_RETRAIN, STUDY_TABLE4

STUDY_RETRAIN_TEST = STUDY_RETRAIN["alexnet best scratch"]["test_acc"]  # tuned from scratch, train+val retrain
STUDY_BEST_TEST = STUDY_TABLE4["resnet50"]["test_acc"]  # the study's best model


def chosen_on_val(rows: list[dict[str, Any]], targets: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per candidate group, the run with the best validation accuracy among those whose training phase ran
    all its epochs (if none did, among all that validated: `complete` False), and its test accuracy after
    retraining on train+val against the group's target (%)."""
    chosen = {}
    for group, target in targets.items():
        members = [r for r in rows if r["group"] == group and r["best_val_acc"] is not None]
        complete = [r for r in members if r["epochs_done"] == r["epochs"]]
        pick = max(complete or members, key=lambda r: r["best_val_acc"], default=None)
        entry: dict[str, Any] = {"target": target, "candidates": len([r for r in rows if r["group"] == group]),
                                 "complete": bool(complete)}
        if pick is not None:
            test = pick["retrain_test_acc"]
            entry |= {k: pick[k] for k in ("run_id", "name", "status", "best_val_acc", "best_epoch", "test_acc",
                                           "retrain_test_acc", "seconds")}
            entry["met"] = None if test is None else 100 * test >= target
        chosen[group] = entry
    return chosen



def junit_summary(path: Path, returncode: int | None) -> dict[str, Any]:
    """Counts and failures from pytest's JUnit XML."""
    import xml.etree.ElementTree as ET

    if not path.is_file():
        return {"returncode": returncode, "error": "pytest wrote no report (see cuda_tests.log)"}
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    cases = []
    for case in suite.iter("testcase"):
        outcome = "passed"
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                detail = (node.get("message") or "")[:300]
                break
        else:
            detail = ""
        properties = {p.get("name"): p.get("value") for p in case.iter("property")}
        cases.append({"test": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0)),
                      "detail": detail, **({"properties": properties} if properties else {})})
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    return {"returncode": returncode, **counts, "cases": cases}


def markdown(summary: dict[str, Any]) -> str:
    """The summary as a short report."""
    parts = summary["parts"]
    lines = ["# GPU check", ""]
    machine = parts.get("machine", {})
    if machine:
        lines += [f"- device: {machine.get('device')}", f"- torch {machine.get('torch')}, CUDA {machine.get('cuda')}, "
                  f"Python {machine.get('python')}, {machine.get('cores')} cores",
                  f"- splits: {machine.get('splits')}; image cache build (s, by shorter side): "
                  f"{machine.get('cache_build_s')}",
                  f"- elapsed {summary.get('elapsed_s')} s of a {summary['budget_s']} s budget", ""]
    tests = parts.get("cuda_tests")
    if tests:
        lines += ["## CUDA tests", "", f"passed {tests.get('passed', 0)}, failed {tests.get('failed', 0)}, "
                  f"errors {tests.get('error', 0)}, skipped {tests.get('skipped', 0)}"]
        lines += [f"- {c['outcome']}: {c['test']} {c['detail']}" for c in tests.get("cases", [])
                  if c["outcome"] != "passed"]
        lines.append("")
    tp = parts.get("throughput")
    if tp and tp.get("skipped"):
        lines += ["## Training throughput", "", f"skipped: {tp['skipped']}", ""]
    elif tp:
        from gpu_throughput import markdown_table

        measured = [r for r in tp["rows"] if "synthetic" in r]
        lines += ["## Training throughput (real loader vs synthetic batch on the GPU)", "",
                  f"batch {tp['batch_size']}, {tp['image_size']} px, augment {tp['augment']}, "
                  f"{tp['warmup']} warm-up + {tp['iters']} timed steps", "", markdown_table(measured), ""]
        lines += [f"- {r['arch']}: {r.get('error') or r.get('skipped')}" for r in tp["rows"] if "synthetic" not in r]
    settings = parts.get("settings")
    if settings and settings["rows"]:
        from gpu_throughput import settings_table

        lines += ["## GPU settings, one at a time (synthetic batch, img/s and speed-up over fp32)", "",
                  f"batch {settings['batch_size']}, {settings['image_size']} px", "",
                  settings_table(settings["rows"]), ""]
    loader = parts.get("loader")
    if loader:
        from gpu_throughput import loader_table

        lines += ["## Loader: flips on the GPU vs on the host (img/s)", "",
                  f"batch {loader['batch_size']}, {loader['image_size']} px, augment {loader['augment']}, "
                  f"{loader['warmup']} warm-up + {loader['iters']} timed steps; ratio = real / synthetic "
                  f"(target >= 0.90)", ""] + _table(loader["rows"], loader_table, "synthetic")
    compiled = parts.get("compile")
    if compiled:
        from gpu_throughput import compile_table

        lines += ["## torch.compile (after the runs)", "",
                  f"backend {compiled['backend']}, same batches; compile = the first step's seconds less one "
                  f"steady step", ""] + _table(compiled["rows"], compile_table, "compile_s")
    exp = parts.get("experiments")
    if exp and exp.get("chosen"):
        lines += ["## Chosen on validation (then retrained on train+val, tested once)", "",
                  "| group | candidates | chosen | best val | test (train only) | test after train+val retrain | "
                  "target | met |", "|---|---|---|---|---|---|---|---|"]
        for group, c in exp["chosen"].items():
            if "run_id" not in c:
                lines.append(f"| {group} | {c['candidates']} | none validated | - | - | - | {c['target']}% | - |")
                continue
            note = "" if c["complete"] else " (training cut by the budget)"
            met = "-" if c["met"] is None else ("yes" if c["met"] else "no")
            lines.append(f"| {group} | {c['candidates']} | #{c['run_id']} {c['name']}{note} | "
                         f"{_pct(c['best_val_acc'])} (epoch {c['best_epoch']}) | {_pct(c['test_acc'])} | "
                         f"{_pct(c['retrain_test_acc'])} | {c['target']}% | {met} |")
        lines.append("")
    if exp:
        lines += ["## Experiments (full split; several runs side by side on the one GPU)", "",
                  "| run | name | status | epochs | best val | test | test after train+val retrain | minutes |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in exp["rows"]:
            lines.append(f"| #{r['run_id']} | {r['name']} | {r['status']} | {r['epochs_done']}/{r['epochs']} | "
                         f"{_pct(r['best_val_acc'])} | {_pct(r['test_acc'])} | {_pct(r['retrain_test_acc'])} | "
                         f"{(r['seconds'] or 0) / 60:.1f} |")
        lines += ["", f"Study: tuned AlexNet from scratch retrained on train+val {STUDY_RETRAIN_TEST}% test "
                  f"(target with crop + flip: >= {TARGET_SCRATCH_AUG}%); best model ResNet-50 "
                  f"{STUDY_BEST_TEST}% (target for the Lite fine-tune: >= {TARGET_LITE}%)."]
    return "\n".join(lines) + "\n"


def _table(rows: list[dict], render, measured_key: str) -> list[str]:
    """Markdown lines: the measured rows as a table, then the skipped or failed ones as a list."""
    measured = [r for r in rows if measured_key in r]
    others = [f"- {r['arch']}: {r.get('error') or r.get('skipped')}" for r in rows if measured_key not in r]
    return [render(measured) if measured else "(none measured)", "", *others, *([""] if others else [])]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"
