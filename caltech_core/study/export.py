"""Export a rebuilt report as Markdown with its figures (interactive HTML, PNG when possible), or as a zip."""

from __future__ import annotations

import io
import re
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from caltech_core.study import verdicts
from caltech_core.study.report import DASH, Report, Section, compact_rows, summary_lines

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str, default: str = "figure") -> str:
    """A file name made of letters, digits, '.', '_' and '-' only, never hidden, never a path."""
    cleaned = _UNSAFE.sub("-", str(name)).strip(".-_")[:80]
    return cleaned or default


def safe_path(folder: Path, name: str, suffix: str = "") -> Path:
    """`folder/<sanitised name><suffix>`, guaranteed to stay inside `folder` (ValueError otherwise)."""
    folder = Path(folder).resolve()
    path = (folder / (safe_filename(name) + suffix)).resolve()
    if not path.is_relative_to(folder) or path == folder:
        raise ValueError(f"export path {name!r} would leave {folder}")
    return path


def _md_cell(value: Any) -> str:
    return str(value if value is not None else DASH).replace("|", "\\|").replace("\n", " ")


def _md_table(columns: list[str], rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_md_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return lines


def _write_pngs(figures: list[tuple[go.Figure, Path]]) -> str | None:
    """Write PNGs with kaleido (one Chrome for all); returns why it failed, or None on success."""
    if not figures:
        return None
    import plotly.io as pio

    try:
        pio.write_images([f for f, _ in figures], [p for _, p in figures], format="png", width=900, height=450)
    except Exception as exc:  # kaleido missing, Chrome missing or crashed: fall back to HTML figures only
        for _, path in figures:
            path.unlink(missing_ok=True)
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return None


def export_markdown(report: Report, out_dir: str | Path, *, png: bool | None = None) -> Path:
    """Write `out_dir/report.md` and `out_dir/figures/` (interactive HTML, plus PNG when possible).

    HTML figures share one offline `figures/plotly.min.js`. PNGs need kaleido and a Chrome/Chromium;
    `png=None` tries and notes why when it cannot, `png=True` raises instead, `png=False` skips them.
    Returns the path of report.md.
    """
    import plotly.offline

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    planned: list[tuple[Section, str, go.Figure, Path]] = []
    used: set[str] = set()
    for section in report.sections:
        for key, fig in section.figures.items():
            stem = safe_filename(f"{section.item}-{section.key}-{key}")
            while stem in used:
                stem += "-x"
            used.add(stem)
            planned.append((section, key, fig, safe_path(fig_dir, stem)))
    if planned:
        (fig_dir / "plotly.min.js").write_text(plotly.offline.get_plotlyjs(), encoding="utf-8")
    for _, _, fig, stem_path in planned:
        fig.write_html(stem_path.with_suffix(".html"), include_plotlyjs="plotly.min.js", full_html=True)
    png_note = None
    if png is not False:
        png_note = _write_pngs([(fig, p.with_suffix(".png")) for _, _, fig, p in planned])
        if png_note and png:
            raise RuntimeError(f"PNG export failed ({png_note}); install kaleido and Chrome/Chromium")

    lines = [
        "# Caltech-101 CNN study — rebuilt from the run store",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(report.generated))} "
        f"from `{report.store_home}`. Accuracies are mean ± sample standard deviation over finished runs "
        f"(n = number of runs); '{DASH}' means no value. Verdict: {verdicts.rule_text()}; not run without runs.",
        "",
        "## Summary",
        "",
        *[f"- {line}" for line in summary_lines(report)],
        "",
    ]
    if png_note:
        lines += [f"> PNG figures unavailable here ({png_note}); the figures are interactive HTML files.", ""]
    lines += [f"> {n}" for n in report.notes]
    by_section: dict[str, list[tuple[str, Path]]] = {}
    for section, key, _, stem_path in planned:
        by_section.setdefault(section.key, []).append((key, stem_path))
    for section in report.sections:
        lines += [f"## {section.item}: {section.title}", ""]
        if section.missing:
            lines += [f"**{section.message}**", ""]
        if section.rows:
            columns, rows = compact_rows(section)
            lines += _md_table(columns, rows) + [""]
            if columns != section.columns:  # the full table, folded (GitHub and most viewers render <details>)
                lines += ["<details><summary>Details</summary>", "", *_md_table(section.columns, section.rows),
                          "", "</details>", ""]
        for key, stem_path in by_section.get(section.key, []):
            png_file = stem_path.with_suffix(".png")
            rel = f"figures/{stem_path.name}"
            if png_file.exists():
                lines.append(f"![{section.item} {key}]({rel}.png)")
            lines += [f"[{section.item} — {key} (interactive)]({rel}.html)", ""]
        lines += [f"*{n}*" for n in section.notes] + [""]
    md = safe_path(out, "report", ".md")
    md.write_text("\n".join(lines), encoding="utf-8")
    return md


def export_zip(report: Report, *, png: bool | None = None) -> bytes:
    """The exported bundle (report.md + figures/) as the bytes of a zip file."""
    tmp = Path(tempfile.mkdtemp(prefix="caltech-report-"))
    try:
        export_markdown(report, tmp, png=png)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(tmp.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(tmp).as_posix())
        return buffer.getvalue()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
