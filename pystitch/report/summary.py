"""The run summary as Markdown and HTML, linking the QC pictures.

A report that stands on its own: the result and the seam QC (with the
likely remedy when flagged), the command that computes the same plan again,
every setting and every value derived from the image (a computed Otsu
threshold, normalisation percentiles, ...), the workers and the wall time of
each step, the date, the machine and the versions.  Step timings come from
the local runner, or from a Nextflow trace file (``-with-trace``) given to
``finalize --trace``.
"""

from __future__ import annotations

import csv
import html
import json
import re
import shlex
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


def environment() -> dict:
    """Where and when the report was made: date (UTC), machine, and the versions
    of Python and of the packages that compute results (read from their
    metadata, nothing is imported)."""
    import datetime as dt
    import os
    import platform
    import socket
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("pystitch", "numpy", "scipy", "zarr", "numcodecs", "tifffile", "imagecodecs", "cellpose", "torch"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2 ** 30
    except (ValueError, OSError, AttributeError):
        memory = None
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"host": socket.gethostname(), "platform": platform.platform(), "cpus": os.cpu_count(),
                    "memory_gib": round(memory, 1) if memory else None},
        "versions": versions,
    }


def _flag_value(value: Any) -> str | None:
    if value is None or value == [] or value == {}:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, float):
        return f"{value:.12g}"
    return str(value)


def command_line(summary: dict) -> str:
    """The ``pystitch run`` command that computes this result again (same plan
    hash): the requested settings, before the image scan resolved them (e.g.
    ``--threshold otsu``, not the value it computed)."""
    from ..params import backend_options

    plan = summary.get("plan") or {}
    image = plan.get("image") or {}
    uri = str(image.get("uri") or "IMAGE")
    if uri.startswith("memory://"):
        uri = "IMAGE"  # an in-memory array: give it to pystitch.run / pystitch.segment
    args = ["pystitch", "run", uri, str(summary.get("output") or "OUTPUT")]
    opts: list[tuple[str, Any]] = [
        ("array-path", image.get("array_path")), ("level", image.get("level")), ("channel", image.get("channel")),
        ("channel-axis", image.get("channel_axis")), ("timepoint", image.get("timepoint")),
        ("voxel-size", image.get("voxel_size")), ("unit", image.get("unit")),
        ("block-shape", plan.get("block_shape")), ("halo", plan.get("halo")),
    ]
    requested = (plan.get("stats") or {}).get("requested") or {}
    backend = dict(requested.get("backend") or plan.get("backend") or {})
    name = backend.pop("name", None)
    opts.append(("backend", name))
    known = {p.name for p in backend_options(name)} if name else set()
    for key, value in backend.items():
        if key.lower() in known:
            opts.append((key.lower().replace("_", "-"), value))
    opts += [("rule", plan.get("rule")), ("min-iou", plan.get("min_iou")), ("label-dtype", plan.get("label_dtype")),
             ("output-format", plan.get("output_format")), ("ngff-version", plan.get("ngff_version"))]
    if plan.get("output_format") == "ome-zarr" and plan.get("pyramid"):
        opts.append(("pyramid-levels", len(plan["pyramid"])))
    if requested.get("stats_level") is not None:
        opts.append(("stats-level", requested["stats_level"]))
    if plan.get("intensity_stats"):
        opts.append(("intensity-stats", True))
    for flag, value in opts:
        text = _flag_value(value)
        if text is not None:
            args += [f"--{flag}", text]
    return " ".join(shlex.quote(a) for a in args)


def _plural(n: Any, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


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
        if qc.get("remedy"):
            rows.append(("seam QC remedy", qc["remedy"]))
    return rows


def _setting_rows(summary: dict) -> list[tuple[str, str]]:
    """Every setting of the plan and every value derived from the image."""
    plan = summary.get("plan") or {}
    image = plan.get("image") or {}
    stats = plan.get("stats") or {}
    rows = [(f"image: {k.replace('_', ' ')}", _flag_value(v) or "")
            for k, v in image.items() if v is not None and k != "uri"]
    rows += [
        ("shape / axes / dtype", f"{plan.get('shape')} {plan.get('axes')} {plan.get('dtype')}"),
        ("voxel size / unit", f"{plan.get('voxel_size')} {plan.get('unit') or '(unknown)'}"),
        ("translation", str(plan.get("translation") or "none")),
        ("block shape / halo", f"{plan.get('block_shape')} / {plan.get('halo')}"),
        ("stitching rule", f"{plan.get('rule')}" + (f" (min IoU {plan.get('min_iou')})"
                                                    if plan.get("rule") == "match" else "")),
        ("label dtype", str(plan.get("label_dtype"))),
        ("output", f"{plan.get('output_format')}, NGFF {plan.get('ngff_version')}, pyramid strides "
                   f"{plan.get('pyramid')}"),
        ("intensity statistics", "yes" if plan.get("intensity_stats") else "no"),
    ]
    backend = plan.get("backend") or {}
    requested = (stats.get("requested") or {}).get("backend") or {}
    rows.append(("backend", str(backend.get("name"))))
    for key, value in backend.items():
        if key == "name":
            continue
        text = "(none)" if value is None or value == [] else (_flag_value(value) or str(value))
        asked = requested.get(key, value)
        if asked != value:
            text += f" (computed from {_flag_value(asked)})"
        rows.append((f"backend: {key}", text))
    for key, value in stats.items():
        if key not in ("requested",):
            rows.append((f"derived: {key.replace('_', ' ')}", _flag_value(value) or str(value)))
    if summary.get("workers") is not None:
        rows.append(("workers", f"{summary['workers']}" + (f" ({summary['workers_reason']})"
                                                           if summary.get("workers_reason") else "")))
    rows.append(("plan hash", str(summary.get("plan_hash"))))
    return rows


def _timing_rows(summary: dict) -> list[tuple[str, str]]:
    rows = []
    steps = summary.get("timings_seconds") or {}
    for step, secs in steps.items():
        rows.append((step.replace("_", "-"), f"{secs:.2f} s"))
    if steps:
        rows.append(("finalize", f"{summary.get('finalize_seconds', 0.0):.2f} s"))
        total = sum(steps.values()) + float(summary.get("finalize_seconds") or 0.0)
        rows.append(("total (wall time)", f"{total:.2f} s"))
    for proc, t in (summary.get("trace_timings") or {}).items():
        rows.append((proc, f"{int(t['tasks'])} tasks, {t['seconds']:.1f} s total, longest {t['longest_seconds']:.1f} s"))
    return rows


def _environment_rows(summary: dict) -> list[tuple[str, str]]:
    env = summary.get("environment") or {}
    machine = env.get("machine") or {}
    rows = [("date", str(env.get("date"))),
            ("machine", f"{machine.get('host')}: {machine.get('platform')}, {machine.get('cpus')} CPUs, "
                        f"{machine.get('memory_gib')} GiB")]
    rows += [(f"version: {k}", str(v)) for k, v in (env.get("versions") or {}).items()]
    return rows


def write_markdown(path: Path, summary: dict, pictures: list[dict]) -> Path:
    lines = ["# pystitch run summary", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_md(v)} |" for k, v in _rows(summary)]
    lines += ["", "## Reproduce", "", "```bash", command_line(summary), "```"]
    lines += ["", "## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {_md(v)} |" for k, v in _setting_rows(summary)]
    timing = _timing_rows(summary)
    if timing:
        lines += ["", "## Timings", "", "| step | time |", "|---|---|"] + [f"| {k} | {v} |" for k, v in timing]
    lines += ["", "## Environment", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_md(v)} |" for k, v in _environment_rows(summary)]
    if pictures:
        lines += ["", "## Pictures", ""]
        for p in pictures:
            lines += [f"![{p['caption']}]({p['file']})", "", f"*{p['caption']}*", ""]
    lines += ["", "Regions table: `regions.csv` (and `regions.parquet`); all numbers: `summary.json`.", ""]
    path.write_text("\n".join(lines))
    return path


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def _html_table(rows: list[tuple[str, str]]) -> str:
    e = html.escape
    out = ["<table>"]
    for k, v in rows:
        cls = " class='flag'" if v.startswith("FLAGGED") else ""
        out.append(f"<tr><th align='left'>{e(k)}</th><td{cls}>{e(v)}</td></tr>")
    return "".join(out) + "</table>"


def write_html(path: Path, summary: dict, pictures: list[dict]) -> Path:
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>pystitch run summary</title>",
             "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}td{padding:2px 10px}"
             "figure{display:inline-block;margin:1em;max-width:34em}img{max-width:32em;image-rendering:pixelated}"
             "pre{background:#f4f4f4;padding:.5em;white-space:pre-wrap}"
             ".flag{color:#b00;font-weight:bold}</style></head><body><h1>pystitch run summary</h1>",
             _html_table(_rows(summary)),
             f"<h2>Reproduce</h2><pre>{e(command_line(summary))}</pre>",
             "<h2>Settings</h2>", _html_table(_setting_rows(summary))]
    timing = _timing_rows(summary)
    if timing:
        parts += ["<h2>Timings</h2>", _html_table(timing)]
    parts += ["<h2>Environment</h2>", _html_table(_environment_rows(summary))]
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
