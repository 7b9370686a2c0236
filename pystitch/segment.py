"""segment-block: segment blocks and store their local labels.

For each block: read the core + halo (+ the backend's context) from the
image, run the backend, check what it returned, renumber the labels so that
objects present in the core are ``1..n`` (in order of their original label)
and objects seen only in the halo are ``n+1..m``, write the core chunk and
the face slabs to the staging store, then write the manifest LAST.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .backends import Backend, SegmentationContext
from .errors import InputError, LabelOverflowError, SegmenterError
from .io import open_image
from .plan import Plan, parse_block_ids
from .relabel import apply_lut_array
from .staging import MAX_LOCAL_LABELS, STAGING_DTYPE, Staging, local_manifest_valid, write_manifest

log = logging.getLogger(__name__)

# one opened backend per process and plan: a task (or a worker of the local
# runner) loads a model once, not once per block
_OPEN: dict[tuple, Backend] = {}


def open_backend(plan: Plan, **runtime: Any) -> Backend:
    """The plan's backend, opened once per process for these ``runtime``
    settings (e.g. ``device``: where to run is a property of the task, not of
    the plan, so it is not part of the plan hash)."""
    key = (plan.hash, tuple(sorted(runtime.items())))
    be = _OPEN.get(key)
    if be is None:
        for old in _OPEN.values():
            old.close()
        _OPEN.clear()
        ctx = SegmentationContext(block=-1, ndim=plan.ndim, voxel_size=plan.voxel_size)
        be = plan.make_backend().open(ctx, **runtime)
        _OPEN[key] = be
    return be


def check_labels(labels: Any, shape: Sequence[int], where: str) -> np.ndarray:
    """A backend's result must be a non-negative integer array of the block's shape."""
    if not isinstance(labels, np.ndarray):
        if hasattr(labels, "__array__") and not isinstance(labels, (list, tuple, dict, str)):
            labels = np.asarray(labels)
        else:
            raise SegmenterError(
                f"Expected the segmenter to return a numpy array of integer labels for {where}. "
                f"Got {type(labels).__name__} instead."
            )
    if tuple(labels.shape) != tuple(shape):
        raise SegmenterError(
            f"Expected labels of shape {tuple(shape)} (the block's core + halo) for {where}. "
            f"Got shape {tuple(labels.shape)} instead."
        )
    if labels.dtype.kind not in "ui":
        raise SegmenterError(
            f"Expected integer labels for {where}. Got dtype {labels.dtype} instead "
            "(convert with .astype(np.uint32) if the values are integral)."
        )
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise SegmenterError(f"Expected labels >= 0 for {where}. Got a minimum of {labels.min()} instead.")
    return labels


def renumber_local(labels: np.ndarray, core: tuple[slice, ...], where: str) -> tuple[np.ndarray, int, int]:
    """Renumber so core objects are ``1..n`` and halo-only objects ``n+1..m``.

    Returns ``(uint32 labels, n, m)``; the order inside each group follows the
    original label values, so the result is deterministic.
    """
    if labels.dtype.kind == "i":
        labels = labels.view(labels.dtype.str.replace("i", "u"))  # checked non-negative
    top = int(labels.max()) if labels.size else 0
    if top == 0:
        return np.zeros(labels.shape, STAGING_DTYPE), 0, 0
    if top <= 4 * labels.size + 65536:
        present = np.bincount(labels.ravel(), minlength=top + 1).astype(bool)
        in_core = np.bincount(labels[core].ravel(), minlength=top + 1).astype(bool)
        present[0] = in_core[0] = False
        core_ids = np.flatnonzero(in_core)
        halo_ids = np.flatnonzero(present & ~in_core)
        n, m = len(core_ids), len(core_ids) + len(halo_ids)
        _check_count(m, where)
        lut = np.zeros(top + 1, STAGING_DTYPE)
        lut[core_ids] = np.arange(1, n + 1, dtype=STAGING_DTYPE)
        lut[halo_ids] = np.arange(n + 1, m + 1, dtype=STAGING_DTYPE)
        return apply_lut_array(labels, lut), n, m
    # sparse label values (e.g. hashed ids): sort-based renumbering
    values, inverse = np.unique(labels, return_inverse=True)
    core_ids = np.unique(labels[core])
    core_ids = core_ids[core_ids != 0]
    halo_ids = np.setdiff1d(values[values != 0], core_ids, assume_unique=True)
    n, m = len(core_ids), len(core_ids) + len(halo_ids)
    _check_count(m, where)
    new = np.zeros(len(values), STAGING_DTYPE)
    new[np.searchsorted(values, core_ids)] = np.arange(1, n + 1, dtype=STAGING_DTYPE)
    new[np.searchsorted(values, halo_ids)] = np.arange(n + 1, m + 1, dtype=STAGING_DTYPE)
    return new[inverse.reshape(labels.shape)], n, m


def _check_count(m: int, where: str) -> None:
    if m > MAX_LOCAL_LABELS:
        raise LabelOverflowError(
            f"{where} holds {m} objects; at most {MAX_LOCAL_LABELS} fit in one block. Use smaller blocks."
        )


def store_labels(plan: Plan, staging: Staging, block: int, labels: Any, manifest_dir: str | os.PathLike,
                 **fields: Any) -> dict:
    """Check and renumber a block's labels (over its core + halo), write them to
    the staging store, then write the manifest LAST."""
    where = plan.block_description(block)
    ext = plan.extended(block)
    labels = check_labels(labels, [e.stop - e.start for e in ext], where)
    core_in_ext = tuple(slice(c.start - e.start, c.stop - e.start) for c, e in zip(plan.core(block), ext))
    local, n, m = renumber_local(labels, core_in_ext, where)
    staging.write_block(block, local, ext)
    fields.update(n_labels=n, n_halo_labels=m - n, empty=n == 0,
                  foreground_voxels=int(np.count_nonzero(local[core_in_ext])))
    write_manifest(manifest_dir, plan, block, **fields)
    return fields


def segment_one(plan: Plan, backend: Backend, staging: Staging, source: Any, block: int,
                manifest_dir: str | os.PathLike) -> dict:
    t0 = time.perf_counter()
    fields: dict[str, Any] = {"backend": backend.info()}
    if block in plan.empty_set:
        fields.update(n_labels=0, n_halo_labels=0, empty=True, foreground_voxels=0, seconds=0.0)
        write_manifest(manifest_dir, plan, block, **fields)
        return fields
    ctx = SegmentationContext(block=block, ndim=plan.ndim, voxel_size=plan.voxel_size)
    margin = backend.context(plan.ndim)
    region = plan.extended(block, margin)
    ext = plan.extended(block)
    crop = tuple(slice(e.start - r.start, e.stop - r.start) for e, r in zip(ext, region))
    data = source.read(region)
    below = backend.empty_below()
    if below is not None and (data.size == 0 or float(data.max()) <= below):
        fields.update(n_labels=0, n_halo_labels=0, empty=True, foreground_voxels=0,
                      seconds=round(time.perf_counter() - t0, 4))
        write_manifest(manifest_dir, plan, block, **fields)
    else:
        labels = backend.segment(data, crop, ctx)
        fields["seconds"] = round(time.perf_counter() - t0, 4)  # reading + segmenting
        fields = store_labels(plan, staging, block, labels, manifest_dir, **fields)
    log.info("segmented %s: %d objects in the core, %d only in the halo (%.2fs)", plan.block_description(block),
             fields["n_labels"], fields["n_halo_labels"], time.perf_counter() - t0)
    return fields


def segment_blocks(plan: Plan | str | os.PathLike, blocks: Any, *, manifest_dir: str | os.PathLike | None = None,
                   skip_existing: bool = False, **runtime: Any) -> list[int]:
    """Segment ``blocks`` of ``plan``; returns the ids that were processed.

    Manifests go to ``manifest_dir`` (default: the plan's work dir).  With
    ``skip_existing``, blocks that already have a valid manifest are skipped.
    ``runtime`` settings (``device="cuda"``, ``allow_cpu_fallback=True``) go to
    the backend and do not change the plan.
    """
    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    ids = parse_block_ids(blocks, plan.n_blocks)
    if plan.image is None:
        raise InputError("This plan has no image: its labels are provided by the caller (pystitch.merge).")
    mdir = Path(manifest_dir) if manifest_dir is not None else plan.manifest_dir
    mdir.mkdir(parents=True, exist_ok=True)
    if skip_existing:
        ids = [b for b in ids if not local_manifest_valid(plan, mdir, b)]
    if not ids:
        return []
    staging = Staging(plan, mode="r+")
    backend = open_backend(plan, **{k: v for k, v in runtime.items() if v is not None})
    source = open_image(plan.image)
    try:
        for b in ids:
            segment_one(plan, backend, staging, source, b, mdir)
    finally:
        source.close()
    return ids
