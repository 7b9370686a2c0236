"""finalize: regions table, run summary, and publishing the output.

Everything before this step writes into the work directory.  ``finalize``
checks that every block was relabelled with the current lut into the current
output, writes the regions table and the summary, stamps the label image as
complete, then moves it and the report into place, so a failed run never
leaves anything at the output path.  Run again after a kill (even one after
the label image was published), it finishes the same way: it recognises its
own published output and publishes the report.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import InputError, OutputExistsError, StagingError
from ..plan import LOCATION_FIELDS, Plan
from ..report.qc import QC_FACES, pictures as qc_pictures, seam_qc, seam_remedy
from ..report.regions import merge_regions, read_block_stats, regions_columns, write_csv, write_parquet
from ..report.summary import environment, trace_timings, write_reports
from ..storage import remote
from ..storage.files import DirectoryLock, atomic_write_json, exists, read_json, remove_path, replace_tree
from ..storage.images import absolute_uri, open_image
from ..storage.labels import (
    LabelOutput, check_replaceable, is_published, mark_complete, publish, remove_partial_files,
)
from ..storage.lut import Lut

log = logging.getLogger(__name__)


def finalize(plan: Plan | str | os.PathLike, *, lut: str | os.PathLike | None = None, stats: Any = None,
             overwrite: bool = False, extra: dict | None = None, trace: str | os.PathLike | None = None,
             qc_faces: int | None = QC_FACES, pictures: bool = True, grid: bool = False,
             output: str | os.PathLike | None = None, report_dir: str | os.PathLike | None = None,
             published_in: str | os.PathLike | None = None) -> dict:
    """Write the report (regions table, seam QC, pictures, summary) and publish
    the output; returns the summary.

    ``trace``: a Nextflow trace file for per-step timings; ``qc_faces``: block
    faces sampled by the seam QC (None: all); ``grid``: draw the block grid on
    the projections; ``output``, ``report_dir``: publish there instead of at
    the plan's paths (e.g. into a workflow task's own directory).  Either may
    be an ``s3://`` URL: the label image is then copied there with its root
    metadata last and the report with its ``summary.json`` last, so neither
    is seen before it is whole.  ``published_in``: the folder a workflow
    publishes ``output`` and ``report_dir`` (both relative paths) into after
    this step; the summary names them there, where the user finds them.
    """
    t0 = time.perf_counter()
    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    if output is not None or report_dir is not None:
        plan = replace(plan, output=absolute_uri(output) if output is not None else plan.output,
                       report_dir=absolute_uri(report_dir) if report_dir is not None else plan.report_dir)
        for uri, what in ((plan.output, "output"), (plan.report_dir, "report directory")):
            remote.check_access(uri, what)
    shown = None
    if published_in is not None:
        given = {"--output": output, "--report-dir": report_dir}
        for flag, value in given.items():
            if value is None or remote.is_url(str(value)) or Path(value).is_absolute():
                raise InputError(f"--published-in needs {flag} as a path relative to the task's directory; "
                                 f"got {value!r}.")
        shown = {"output": remote.join(absolute_uri(published_in), Path(output).as_posix()),
                 "report_dir": remote.join(absolute_uri(published_in), Path(report_dir).as_posix())}
    with DirectoryLock(plan.work_dir):
        return _finalize(plan, t0, lut=lut, stats=stats, overwrite=overwrite, extra=extra, trace=trace,
                         qc_faces=qc_faces, pictures=pictures, grid=grid, keep_partial=output is not None,
                         shown=shown)


def _finalize(plan: Plan, t0: float, *, lut: Any, stats: Any, overwrite: bool, extra: dict | None, trace: Any,
              qc_faces: int | None, pictures: bool, grid: bool, keep_partial: bool,
              shown: dict | None = None) -> dict:
    table = Lut.open(str(lut) if lut is not None else plan.lut_uri, plan.hash)
    output, report = plan.output, plan.report_dir
    published = is_published(output, plan.hash)
    if not published and exists(output):
        check_replaceable(output, overwrite)
    if exists(report) and not _own_report(report, plan.hash):
        check_replaceable_report(report, overwrite)
    current = read_json(plan.output_id_path, "output id")
    if current.get("lut_inputs") != table.attrs.get("inputs"):
        raise StagingError(f"The partial output {plan.partial_output} was created for another lut than "
                           f"{table.uri}: run resolve and apply-lut again.")
    n_objects = table.n_objects
    offsets = table.offsets[:]
    counts = np.diff(offsets)
    needed = {int(b) for b in np.flatnonzero(counts)}
    kept: dict = {}   # the seam QC's planes, kept by apply-lut
    rows = read_block_stats(plan, stats, n_objects, needed,
                            made_with={"lut_inputs": str(table.attrs.get("inputs")),
                                       "output_id": str(current["output_id"])}, planes=kept)
    merged = merge_regions(rows, n_objects)
    cols = regions_columns(merged, plan.axes, plan.voxel_size, plan.translation, plan.unit,
                           plan.image.channel if plan.image is not None else None)
    if n_objects == 0:
        log.warning("no objects were found (backend %s): the image may hold no values above the threshold, or "
                    "no finite values; check the backend's settings and --channel", plan.backend.get("name"))

    staged = plan.report_staging
    remove_path(staged)
    staged.mkdir(parents=True)
    write_csv(staged / "regions.csv", cols)
    parquet = write_parquet(staged / "regions.parquet", cols,
                            {"plan_hash": plan.hash, "axes": plan.axes, "unit": plan.unit or "",
                             "voxel_size": list(plan.voxel_size or []), "translation": list(plan.translation or [])})
    summary = {
        "pystitch": __version__,
        "plan_hash": plan.hash,
        "image": plan.image.uri if plan.image else None,
        "output": str(output),
        "report_dir": str(report),
        **(shown or {}),   # where a workflow publishes them
        "shape": list(plan.shape),
        "axes": plan.axes,
        "voxel_size": list(plan.voxel_size) if plan.voxel_size else None,
        "unit": plan.unit,
        "translation": list(plan.translation) if plan.translation else None,
        "block_shape": list(plan.block_shape),
        "halo": list(plan.halo),
        "backend": plan.backend,
        "rule": plan.rule,
        "objects": n_objects,
        "provisional_objects": int(table.attrs["n_provisional"]),
        "merges": int(table.attrs["merges"]),
        "pairs": int(table.attrs.get("pairs", 0)),
        "blocks": plan.n_blocks,
        "empty_blocks": int(np.count_nonzero(counts == 0)),
        "planned_empty_blocks": len(plan.empty_blocks),
        "dtype": table.dtype.name,
        "stats": plan.stats,
        # every setting (where files go is above: output, report_dir)
        "plan": {k: v for k, v in plan.to_dict().items() if k not in LOCATION_FIELDS},
        "report": {"regions_csv": "regions.csv", "regions_parquet": parquet.name if parquet else None},
        # the flows rule: what its dynamics measured (seeds, reach of the trajectories, filters)
        **({"flows": table.attrs["flows"]} if plan.rule == "flows" and "flows" in table.attrs else {}),
        **(extra or {}),
    }
    labels_uri = output if published and not exists(plan.partial_output) else plan.partial_output
    if not published:
        remove_partial_files(labels_uri)  # what a killed apply-lut left: never published
    output_levels = LabelOutput.open(labels_uri, plan.label_layout(), plan.hash).levels
    qc = summary["seam_qc"] = seam_qc(plan, output_levels[0], counts, max_faces=qc_faces, kept=kept)
    qc["remedy"] = seam_remedy(plan, qc, merged["hi"] - merged["lo"])
    if qc["flagged"]:
        log.warning("seam QC: objects break at block seams more often than inside blocks (%s vs %s): %s",
                    qc["seam_break_rate"], qc["control_break_rate"], qc["remedy"])
    summary["environment"] = environment()
    made: list[dict] = []
    if pictures:
        # crops where objects break first, then the busiest faces of each axis
        faces = [f for f in qc["worst_faces"] if f["breaks"]] + qc["busiest_faces"]
        faces = [f for i, f in enumerate(faces)
                 if (f["block"], f["neighbour"]) not in {(g["block"], g["neighbour"]) for g in faces[:i]}]
        source = open_image(plan.image) if plan.image else None
        try:
            made = qc_pictures(plan, source, output_levels, staged, faces, grid=grid)
        finally:
            if source is not None:
                source.close()
    summary["report"]["pictures"] = made
    if trace:
        summary["trace_timings"] = trace_timings(trace)
    summary["finalize_seconds"] = round(time.perf_counter() - t0, 4)
    atomic_write_json(staged / "summary.json", summary)
    write_reports(staged, summary, made)

    if not published:
        mark_complete(plan.partial_output, plan.request_digest)
    publish(plan.partial_output, plan.output, plan.label_layout(), plan.hash, overwrite, keep_partial=keep_partial)
    if exists(report):
        remove_path(report)
    if remote.is_remote(report):  # summary.json last: the report is pystitch's once it is there
        remote.copy_tree(str(staged), report, last=["summary.json"], marker={"plan_hash": plan.hash})
        remove_path(staged)
    else:
        replace_tree(staged, report)
    log.info("wrote %d objects to %s (report in %s)", n_objects, output, report)
    return summary


def _summary_of(report: str) -> dict | None:
    """The summary.json of a report directory (None: missing or unreadable)."""
    try:
        if remote.is_remote(report):
            data = remote.read_bytes(remote.join(report, "summary.json"))
            return json.loads(data) if data is not None else None
        return read_json(Path(report) / "summary.json", "summary")
    except Exception:  # missing or unreadable: not known to be ours
        return None


def _own_report(report: str, plan_hash: str) -> bool:
    """Whether ``report`` is the report of this plan (a rerun after a kill), or
    what a killed publication of it to a URL left."""
    summary = _summary_of(report)
    if isinstance(summary, dict):
        return summary.get("plan_hash") == plan_hash
    return remote.is_remote(report) and remote.publishing_marker(report) is not None


def check_replaceable_report(report: str, overwrite: bool) -> None:
    """An existing report directory is replaced only with ``overwrite`` and only
    when pystitch wrote it (it holds pystitch's summary.json)."""
    if not overwrite:
        raise OutputExistsError(f"The report directory {report} exists. Expected a new path, or --overwrite to "
                                "replace it.")
    summary = _summary_of(report)
    ours = isinstance(summary, dict) and "pystitch" in summary
    if not ours:
        raise OutputExistsError(
            f"The report directory {report} exists and was not written by pystitch (no pystitch summary.json in "
            "it): it is never removed, even with --overwrite. Expected another --report-dir, or remove it yourself."
        )
