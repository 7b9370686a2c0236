"""The regions table: one row per object, merged from per-block statistics.

Columns: ``id``, ``voxels``, bounding box ``<axis>_min`` (inclusive) and
``<axis>_max`` (exclusive, like a Python slice), ``centroid_<axis>`` in
voxels; when voxel sizes are known, the same in physical coordinates
(index x voxel size + the image's translation): ``<axis>_min_physical``,
``<axis>_max_physical``, ``centroid_<axis>_physical``, and
``volume_physical`` (``area_physical`` in 2-D, in unit^3 / unit^2) and
``unit``; with intensity statistics ``intensity_mean``, ``intensity_max``,
``intensity_sum`` (one column each per selected channel ``_c<k>`` when there
are several); ``n_blocks`` and ``blocks`` (the block ids the object spans,
``;``-separated).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import StagingError
from ..grid import format_block_ids
from ..plan import Plan
from ..storage.files import check_plan_hash, read_npz, step_files
from .qc import parse_plane_key


def read_block_stats(plan: Plan, sources: Any, n_objects: int, needed: set[int],
                     made_with: dict[str, str] | None = None, planes: dict | None = None
                     ) -> dict[str, np.ndarray]:
    """Load the per-batch statistics files written by apply-lut.  ``made_with``
    (``lut_inputs``, ``output_id``): what every file must have been made with —
    the current lut, and the output that is being finished.  ``planes``: a
    dict that receives the seam QC planes the files keep, ``{(block, axis,
    position): encoded}`` (of their own blocks only)."""
    paths = step_files(sources, plan.stats_dir, "stats-*.npz")
    keys = ("block", "id", "count", "lo", "hi", "sum") + (("isum", "imax") if plan.intensity_stats else ())
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    covered: set[int] = set()
    for path in paths:
        data = read_npz(path, "statistics file", list(parts) + ["blocks", "plan_hash"])
        check_plan_hash(data["plan_hash"], plan.hash, path)
        blocks = {int(b) for b in data["blocks"]}
        for key, what in (("lut_inputs", "with an earlier lut (resolve ran again since)"),
                          ("output_id", "into an earlier output (resolve created a new one since)")):
            if made_with and key in data and str(data[key]) != made_with[key]:
                raise StagingError(f"The statistics file {path} was written {what}: run apply-lut again for "
                                   f"block(s) {format_block_ids(sorted(blocks))}.")
        if covered & blocks:
            raise StagingError(f"{path} repeats statistics of block(s) {sorted(covered & blocks)[:10]}.")
        covered |= blocks
        for k in parts:
            parts[k].append(data[k])
        if planes is not None:
            for name, value in data.items():
                key = parse_plane_key(name)
                if key is not None and key[0] in blocks:
                    planes[key] = value
    missing = sorted(needed - covered)
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise StagingError(f"finalize needs apply-lut's output for {len(missing)} block(s) that have none: {shown}.")
    nd = plan.ndim
    channel = plan.image.channel if plan.image is not None else None
    nc = len(channel) if isinstance(channel, tuple) else 1
    empty = {"block": np.zeros(0, np.int64), "id": np.zeros(0, np.uint64), "count": np.zeros(0, np.int64),
             "lo": np.zeros((0, nd), np.int64), "hi": np.zeros((0, nd), np.int64), "sum": np.zeros((0, nd), np.int64),
             "isum": np.zeros((0, nc)), "imax": np.zeros((0, nc))}
    # files without objects hold empty arrays (of a guessed channel count): left out
    return {k: (np.concatenate([a for a in v if len(a)]) if any(len(a) for a in v) else empty[k])
            for k, v in parts.items()}


def merge_regions(rows: dict[str, np.ndarray], n_objects: int) -> dict[str, Any]:
    """Combine per-block rows into one row per object id ``1..n_objects``."""
    order = np.lexsort((rows["block"], rows["id"]))
    ids = rows["id"][order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, np.int64)
    uniq = ids[starts]
    if len(uniq) != n_objects or (n_objects and (uniq[0] != 1 or uniq[-1] != n_objects)):
        raise StagingError(
            f"The block statistics describe {len(uniq)} objects but the lut has {n_objects}: "
            "statistics and lut come from different runs."
        )
    blocks_sorted = rows["block"][order]
    merged = {
        "id": uniq,
        "voxels": np.add.reduceat(rows["count"][order], starts) if len(ids) else np.zeros(0, np.int64),
        "lo": np.minimum.reduceat(rows["lo"][order], starts, axis=0) if len(ids) else rows["lo"],
        "hi": np.maximum.reduceat(rows["hi"][order], starts, axis=0) if len(ids) else rows["hi"],
        "sum": np.add.reduceat(rows["sum"][order], starts, axis=0) if len(ids) else rows["sum"],
        "blocks": np.split(blocks_sorted, starts[1:]) if len(ids) else [],
    }
    if "isum" in rows:
        merged["isum"] = np.add.reduceat(rows["isum"][order], starts, axis=0) if len(ids) else rows["isum"]
        merged["imax"] = np.maximum.reduceat(rows["imax"][order], starts, axis=0) if len(ids) else rows["imax"]
    return merged


def regions_columns(merged: dict[str, Any], axes: str, voxel_size: tuple[float, ...] | None,
                    translation: tuple[float, ...] | None = None, unit: str | None = None,
                    channels: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """The table's columns (see the module doc).  ``channels``: the image's
    channel indices of the intensity columns (several: one column each)."""
    voxels = merged["voxels"]
    centroid = merged["sum"] / np.maximum(voxels, 1)[:, None]
    cols: dict[str, Any] = {"id": merged["id"].astype(np.uint64), "voxels": voxels.astype(np.int64)}
    for i, ax in enumerate(axes):
        cols[f"{ax}_min"] = merged["lo"][:, i]
        cols[f"{ax}_max"] = merged["hi"][:, i]
    for i, ax in enumerate(axes):
        cols[f"centroid_{ax}"] = centroid[:, i]
    if voxel_size:
        size = np.asarray(voxel_size, dtype=np.float64)
        shift = np.asarray(translation if translation else [0.0] * len(axes), dtype=np.float64)
        for i, ax in enumerate(axes):
            cols[f"{ax}_min_physical"] = merged["lo"][:, i] * size[i] + shift[i]
            cols[f"{ax}_max_physical"] = merged["hi"][:, i] * size[i] + shift[i]
        for i, ax in enumerate(axes):
            cols[f"centroid_{ax}_physical"] = centroid[:, i] * size[i] + shift[i]
        cols["area_physical" if len(axes) == 2 else "volume_physical"] = voxels * float(np.prod(size))
        cols["unit"] = np.array([unit or ""] * len(voxels), dtype=object)
    if "isum" in merged:
        names = list(channels) if channels and len(channels) > 1 else [None]
        for c, name in enumerate(names):
            suffix = "" if name is None else f"_c{name}"
            cols[f"intensity_mean{suffix}"] = merged["isum"][:, c] / np.maximum(voxels, 1)
            cols[f"intensity_max{suffix}"] = merged["imax"][:, c]
            cols[f"intensity_sum{suffix}"] = merged["isum"][:, c]
    cols["n_blocks"] = np.array([len(b) for b in merged["blocks"]], dtype=np.int64)
    cols["blocks"] = np.array([";".join(map(str, b)) for b in merged["blocks"]], dtype=object)
    return cols


def write_csv(path: str | os.PathLike, cols: dict[str, np.ndarray]) -> Path:
    path = Path(path)
    names = list(cols)
    # column by column from Python values (``tolist``): floats as repr (the shortest text that reads
    # back the same value), the rest as str; no numpy scalar made per cell
    text = []
    for n in names:
        values = np.asarray(cols[n])
        text.append(list(map(repr if values.dtype.kind == "f" else str, values.tolist())))
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        w.writerows(zip(*text))
    return path


def write_parquet(path: str | os.PathLike, cols: dict[str, np.ndarray], metadata: dict[str, str]) -> Path | None:
    """Parquet copy of the table when pyarrow is installed (returns None otherwise)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    table = pa.Table.from_arrays([_arrow_column(pa, v) for v in cols.values()], names=list(cols))
    table = table.replace_schema_metadata({k.encode(): str(v).encode() for k, v in metadata.items()})
    pq.write_table(table, path)
    return Path(path)


def _arrow_column(pa: Any, values: np.ndarray) -> Any:
    """One column as an arrow array, built from its buffers: ``pa.array``
    would import pandas (a second of start-up) to check what it was given.
    The same array as ``pa.array(values)`` (``list(values)`` for strings)."""
    if values.dtype == object:
        data = [str(v).encode() for v in values]
        offsets = np.zeros(len(data) + 1, np.int64)
        np.cumsum([len(d) for d in data], out=offsets[1:])
        if offsets[-1] < 2 ** 31 and all(isinstance(v, str) for v in values):
            return pa.Array.from_buffers(pa.string(), len(data), [None, pa.py_buffer(offsets.astype(np.int32)),
                                                                   pa.py_buffer(b"".join(data))])
        return pa.array(list(values))
    if values.ndim == 1 and values.dtype.kind in "iuf" and values.dtype.isnative:
        values = np.ascontiguousarray(values)
        return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])
    return pa.array(values)


def read_csv_table(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a regions.csv back into numpy columns (numbers as numbers)."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    names, body = rows[0], rows[1:]
    out: dict[str, np.ndarray] = {}
    for j, name in enumerate(names):
        values = [r[j] for r in body]
        if name in ("blocks", "unit"):
            out[name] = np.array(values, dtype=object)
        elif name.startswith(("centroid", "intensity")) or name.endswith("_physical"):
            out[name] = np.array(values, dtype=np.float64)
        else:
            out[name] = np.array(values, dtype=np.int64) if name != "id" else np.array(values, dtype=np.uint64)
    return out
