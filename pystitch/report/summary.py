"""The run summary as Markdown and HTML, linking the QC pictures.

Step timings come from the local runner, or from a Nextflow trace file
(``-with-trace``) given to ``finalize --trace``.
"""

from __future__ import annotations

import csv
import html
import re
from pathlib import Path
from typing import Any

_DURATION = re.compile(r"([\d.]+)\s*(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _seconds(text: str) -> float | None:
    """Seconds from a Nextflow duration ('1m 3s', '850ms') or a number of milliseconds."""
    text = (text or "").strip()
    if not text or text == "-":
        return None
    if re.fullmatch(r"\d+", text):
        return int(text) / 1000.0
    parts = _DURATION.findall(text)
    return sum(float(v) * _UNIT_SECONDS[u] for v, u in parts) if parts else None


def trace_timings(path: str | Path) -> dict[str, dict[str, float]]:
    """Per process: tasks, summed and longest wall time (realtime) from a Nextflow trace."""
    out: dict[str, dict[str, float]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            name = (row.get("process") or row.get("name") or "?").split(" (")[0].split(":")[-1]
            secs = _seconds(row.get("realtime") or row.get("duration") or "")
            entry = out.setdefault(name, {"tasks": 0, "seconds": 0.0, "longest_seconds": 0.0})
            entry["tasks"] += 1
            if secs is not None:
                entry["seconds"] = round(entry["seconds"] + secs, 3)
                entry["longest_seconds"] = max(entry["longest_seconds"], secs)
    return out


def _rows(summary: dict) -> list[tuple[str, str]]:
    qc = summary.get("seam_qc") or {}
    rows = [
        ("image", str(summary.get("image"))),
        ("output", str(summary.get("output"))),
        ("shape / axes", f"{summary.get('shape')} {summary.get('axes')}"),
        ("voxel size", f"{summary.get('voxel_size')} {summary.get('unit') or ''}"),
        ("backend / rule", f"{summary.get('backend', {}).get('name')} / {summary.get('rule')}"),
        ("blocks (empty)", f"{summary.get('blocks')} ({summary.get('empty_blocks')})"),
        ("block / halo", f"{summary.get('block_shape')} / {summary.get('halo')}"),
        ("objects", str(summary.get("objects"))),
        ("merges across blocks", str(summary.get("merges"))),
        ("label dtype", str(summary.get("dtype"))),
    ]
    if qc:
        verdict = "FLAGGED: seams break objects more often than block interiors" if qc["flagged"] else "ok"
        rows.append(("seam QC", f"{verdict} — seam break rate {qc['seam_break_rate']:.4f} "
                                f"({qc['seam_breaks']}/{qc['seam_objects']}) vs interior "
                                f"{qc['control_break_rate']:.4f} ({qc['control_breaks']}/{qc['control_objects']}), "
                                f"{qc['faces_checked']} faces"))
    return rows


def _timing_rows(summary: dict) -> list[tuple[str, str]]:
    rows = []
    for step, secs in (summary.get("timings_seconds") or {}).items():
        rows.append((step, f"{secs:.2f} s"))
    for proc, t in (summary.get("trace_timings") or {}).items():
        rows.append((proc, f"{int(t['tasks'])} tasks, {t['seconds']:.1f} s total, longest {t['longest_seconds']:.1f} s"))
    return rows


def write_markdown(path: Path, summary: dict, pictures: list[dict]) -> Path:
    lines = ["# pystitch run summary", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _rows(summary)]
    timing = _timing_rows(summary)
    if timing:
        lines += ["", "## Timings", "", "| step | time |", "|---|---|"] + [f"| {k} | {v} |" for k, v in timing]
    if pictures:
        lines += ["", "## Pictures", ""]
        for p in pictures:
            lines += [f"![{p['caption']}]({p['file']})", "", f"*{p['caption']}*", ""]
    lines += ["", "Regions table: `regions.csv` (and `regions.parquet`); all numbers: `summary.json`.", ""]
    path.write_text("\n".join(lines))
    return path


def write_html(path: Path, summary: dict, pictures: list[dict]) -> Path:
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>pystitch run summary</title>",
             "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}td{padding:2px 10px}"
             "figure{display:inline-block;margin:1em}img{max-width:32em;image-rendering:pixelated}"
             ".flag{color:#b00;font-weight:bold}</style></head><body><h1>pystitch run summary</h1><table>"]
    for k, v in _rows(summary):
        cls = " class='flag'" if v.startswith("FLAGGED") else ""
        parts.append(f"<tr><th align='left'>{e(k)}</th><td{cls}>{e(v)}</td></tr>")
    parts.append("</table>")
    timing = _timing_rows(summary)
    if timing:
        parts.append("<h2>Timings</h2><table>" + "".join(f"<tr><th align='left'>{e(k)}</th><td>{e(v)}</td></tr>"
                                                        for k, v in timing) + "</table>")
    if pictures:
        parts.append("<h2>Pictures</h2>")
        parts += [f"<figure><img src='{e(p['file'])}' alt='{e(p['caption'])}'><figcaption>{e(p['caption'])}"
                  "</figcaption></figure>" for p in pictures]
    parts.append("<p>Regions table: <a href='regions.csv'>regions.csv</a>; all numbers: "
                 "<a href='summary.json'>summary.json</a>.</p></body></html>")
    path.write_text("".join(parts))
    return path


def write_reports(directory: Path, summary: dict, pictures: list[dict]) -> None:
    write_markdown(directory / "summary.md", summary, pictures)
    write_html(directory / "summary.html", summary, pictures)
