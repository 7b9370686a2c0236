"""apply-lut: write final ids into the output, block by block.

Each block reads its core labels (local ids ``1..n``) from the staging store
and only ITS slice of the lut (``lut[offset + 1 : offset + n + 1]``, never the
whole table), maps them with the compiled kernel, writes the output chunk,
and records per-object statistics (voxel count, bounding box, coordinate
sums; with the plan's ``intensity_stats`` also the sum and maximum of the
image's intensity per channel, read from the image for the block's core)
that ``finalize`` merges into the regions table, and the planes of the
block that finalize's seam QC compares (:func:`qc_planes_kept`, compressed:
finalize then reads no labels back from the output).  Reading the next
block and writing the previous one overlap with the work on the current one,
so a task holds at most three blocks.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._core import apply_lut_array, region_stats
from ..errors import StagingError
from ..grid import parse_block_ids
from ..plan import Plan
from ..progress import advance
from ..report.qc import QC_FACES, encode_plane, face_planes, plane_key, sampled_faces
from ..storage.files import atomic_write_npz, read_json
from ..storage.images import open_image
from ..storage.labels import LabelOutput
from ..storage.lut import Lut
from ..storage.staging import Staging
from ..storage.zarrs import WriteBehind, read_ahead

log = logging.getLogger(__name__)


_KEPT: dict[tuple, dict[int, set[tuple[int, int]]]] = {}


def qc_planes_kept(plan: Plan, counts: np.ndarray) -> dict[int, set[tuple[int, int]]]:
    """``{block: {(axis, position)}}``: the planes of every block that the seam
    QC of finalize compares with its default sample of faces
    (:data:`~pystitch.report.qc.QC_FACES`), which apply-lut keeps.  The sample
    depends on the objects per block (``counts``, from the lut) only, so every
    apply-lut task finds the same; remembered per process."""
    key = (plan.hash, hash(np.asarray(counts).tobytes()))
    if key not in _KEPT:
        _KEPT.clear()
        _KEPT[key] = face_planes(plan, sampled_faces(plan, counts, QC_FACES))
    return _KEPT[key]


def block_regions(local: np.ndarray, n: int, origin: tuple[int, ...], final_ids: np.ndarray,
                  image: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-object statistics of one block in final ids.

    ``local`` holds ids ``0..n``; ``final_ids[k]`` is the final id of local id
    ``k + 1`` (0: removed, counted nowhere).  Objects that two local ids share
    (joined through other blocks) are summed.  Coordinates are global (``origin`` is the block's corner).
    ``image``: the block's intensities (channel-first when several), for the
    sum and maximum of each object per channel (``isum``, ``imax``).
    """
    counts, lo, hi, sums = region_stats(local, n)
    org = np.asarray(origin, dtype=np.int64)
    lo, hi = lo + org, hi + org
    sums = sums + counts[:, None] * org
    order = np.argsort(final_ids, kind="stable")
    ids = final_ids[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    out = {
        "id": ids[starts].astype(np.uint64),
        "count": np.add.reduceat(counts[order], starts),
        "lo": np.minimum.reduceat(lo[order], starts, axis=0),
        "hi": np.maximum.reduceat(hi[order], starts, axis=0),
        "sum": np.add.reduceat(sums[order], starts, axis=0),
    }
    if image is not None:
        isum, imax = intensity_stats(local, n, image)
        out["isum"] = np.add.reduceat(isum[order], starts, axis=0)
        out["imax"] = np.maximum.reduceat(imax[order], starts, axis=0)
    if len(ids) and ids[0] == 0:  # local ids whose objects the lut removes (the flows rule's filters)
        out = {k: v[1:] for k, v in out.items()}
    return out


def intensity_stats(local: np.ndarray, n: int, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sum, max)`` of the intensities of local ids ``1..n``, each ``(n, channels)`` float64.

    >>> local = np.array([[0, 1, 1], [2, 2, 0]])
    >>> s, m = intensity_stats(local, 2, np.array([[5, 1, 3], [4, 6, 9]]))
    >>> s.ravel().tolist(), m.ravel().tolist()
    ([4.0, 10.0], [3.0, 6.0])
    """
    channels = image.reshape((-1,) + local.shape) if image.ndim > local.ndim else image[None]
    flat = local.ravel()
    isum = np.empty((n, len(channels)), np.float64)
    imax = np.empty((n, len(channels)), np.float64)
    for c, values in enumerate(channels):
        v = values.ravel().astype(np.float64, copy=False)
        isum[:, c] = np.bincount(flat, weights=v, minlength=n + 1)[1:n + 1]
        top = np.full(n + 1, -np.inf)
        np.maximum.at(top, flat, v)
        imax[:, c] = top[1:]
    return isum, imax


def stats_name(ids: list[int]) -> str:
    return f"stats-{ids[0]:06d}-{ids[-1]:06d}.npz"


def apply_lut(plan: Plan | str | os.PathLike, blocks: Any, *, lut: str | os.PathLike | None = None,
              out: str | os.PathLike | None = None) -> Path:
    """Write the final labels of ``blocks`` into the (partial) output and their
    region statistics into one ``.npz`` file; returns that file's path."""
    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    ids = parse_block_ids(blocks, plan.n_blocks)
    table = Lut.open(str(lut) if lut is not None else plan.lut_uri, plan.hash)
    current = read_json(plan.output_id_path, "output id")
    if current.get("lut_inputs") != table.attrs.get("inputs"):
        raise StagingError(f"The partial output {plan.partial_output} was created for another lut than "
                           f"{table.uri}: run resolve again.")
    output = LabelOutput.open(plan.partial_output, plan.label_layout(), plan.hash)
    staging = Staging(plan.staging_uri, plan.grid, plan.hash)
    keys = ["block", "id", "count", "lo", "hi", "sum"] + (["isum", "imax"] if plan.intensity_stats else [])
    rows: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    kept_planes = qc_planes_kept(plan, np.diff(table.offsets))
    planes: dict[str, np.ndarray] = {}
    work = [b for b in ids if table.block_range(b)[1] > 0]
    advance("apply-lut", len(ids) - len(work))  # blocks without objects: nothing to write
    source = open_image(plan.image) if plan.intensity_stats and plan.image is not None else None
    if source is not None:
        source.size_cache([plan.grid.core(b) for b in work])

    def read(b: int) -> tuple[np.ndarray, np.ndarray | None]:
        expected = None if table.voxels is None else {"voxels": int(table.voxels[b])}
        return staging.read_core(b, expected), (source.read(plan.grid.core(b)) if source is not None else None)

    # the next block is read and the previous one written while this one is mapped
    try:
        with WriteBehind() as writer:
            for b, (local, image) in read_ahead(work, read):
                offset, n = table.block_range(b)
                top = int(local.max()) if local.size else 0
                if top > n:
                    raise StagingError(
                        f"The staging labels of {plan.grid.describe(b)} hold id {top} but its manifest counted "
                        f"{n} objects: the staging store is corrupt or was written by another run."
                    )
                block_lut = np.zeros(n + 1, dtype=table.dtype)
                block_lut[1:] = table.read(offset + 1, offset + n + 1)
                core = plan.grid.core(b)
                final = apply_lut_array(local, block_lut)
                writer.submit(output.write_block, core, final)
                for axis, pos in sorted(kept_planes.get(b, ())):
                    planes[plane_key(b, axis, pos)] = encode_plane(np.take(final, pos, axis=axis))
                stats = block_regions(local, n, tuple(s.start for s in core), block_lut[1:], image)
                rows["block"].append(np.full(len(stats["id"]), b, dtype=np.int64))
                for k, v in stats.items():
                    rows[k].append(v)
                advance("apply-lut")
    finally:
        if source is not None:
            source.close()
    ndim = plan.ndim
    channel = plan.image.channel if plan.image is not None else None
    channels = len(channel) if isinstance(channel, tuple) else 1
    empty = {"block": np.zeros(0, np.int64), "id": np.zeros(0, np.uint64), "count": np.zeros(0, np.int64),
             "lo": np.zeros((0, ndim), np.int64), "hi": np.zeros((0, ndim), np.int64),
             "sum": np.zeros((0, ndim), np.int64), "isum": np.zeros((0, channels)),
             "imax": np.zeros((0, channels))}
    arrays = {k: np.concatenate(v) if v else empty[k] for k, v in rows.items()}
    arrays.update(planes)
    arrays.update(blocks=np.asarray(ids, dtype=np.int64), plan_hash=np.asarray(plan.hash),
                  # what these results belong to: finalize takes them only for this lut and this output
                  lut_inputs=np.asarray(str(table.attrs.get("inputs"))),
                  output_id=np.asarray(str(current["output_id"])))
    path = Path(out) if out is not None else plan.stats_dir / stats_name(ids)
    if path.suffix != ".npz":  # a directory (created if needed)
        path = path / stats_name(ids)
    atomic_write_npz(path, arrays)
    log.info("applied the lut to %d block(s) %d..%d -> %s", len(ids), ids[0], ids[-1], path)
    return path
