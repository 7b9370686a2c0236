"""finalize: regions table, run summary, and publishing the output.

Everything before this step writes into the work directory.  ``finalize``
checks that every block was relabelled, writes the regions table and the
summary, then moves the finished label image and the report into place, so
a failed run never leaves anything at the output path.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .errors import OutputExistsError
from .plan import Plan
from .regions import merge_regions, read_block_stats, regions_columns, write_csv, write_parquet
from .resolve import Lut
from .storage import atomic_write_json, remove_path, replace_tree

log = logging.getLogger(__name__)


def finalize(plan: Plan | str | os.PathLike, *, lut: str | os.PathLike | None = None, stats: Any = None,
             overwrite: bool = False, extra: dict | None = None) -> dict:
    """Write the report and publish the output; returns the summary."""
    t0 = time.perf_counter()
    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    table = Lut.open(plan, lut)
    n_objects = table.n_objects
    offsets = table.offsets[:]
    counts = np.diff(offsets)
    needed = {int(b) for b in np.flatnonzero(counts)}
    rows = read_block_stats(plan, stats, n_objects, needed)
    merged = merge_regions(rows, n_objects)
    cols = regions_columns(merged, plan.axes, plan.voxel_size)

    output, report = Path(plan.output), Path(plan.report_dir)
    for target in (output, report):
        if target.exists() and not overwrite:
            raise OutputExistsError(f"{target} exists. Expected a new path, or --overwrite to replace it.")

    staged = plan.report_staging
    remove_path(staged)
    staged.mkdir(parents=True)
    write_csv(staged / "regions.csv", cols)
    parquet = write_parquet(staged / "regions.parquet", cols,
                            {"plan_hash": plan.hash, "axes": plan.axes, "unit": plan.unit or "",
                             "voxel_size": list(plan.voxel_size or [])})
    summary = {
        "pystitch": __version__,
        "plan_hash": plan.hash,
        "image": plan.image.uri if plan.image else None,
        "output": str(output),
        "shape": list(plan.shape),
        "axes": plan.axes,
        "voxel_size": list(plan.voxel_size) if plan.voxel_size else None,
        "unit": plan.unit,
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
        "report": {"regions_csv": "regions.csv", "regions_parquet": parquet.name if parquet else None},
        **(extra or {}),
    }
    summary["finalize_seconds"] = round(time.perf_counter() - t0, 4)
    atomic_write_json(staged / "summary.json", summary)

    for target in (output, report):
        if target.exists():
            remove_path(target)
    replace_tree(plan.partial_output, output)
    replace_tree(staged, report)
    log.info("wrote %d objects to %s (report in %s)", n_objects, output, report)
    return summary
