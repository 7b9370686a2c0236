"""segment-block: segment blocks and store their local labels.

For each block: read the core + halo (+ the backend's context) from the
image, run the backend, check what it returned, renumber the labels so that
objects present in the core are ``1..n`` (in order of their original label)
and objects seen only in the halo are ``n+1..m``, write the core chunk and
the face slabs to the staging store, then write the manifest LAST.  A task
stores each block in a background thread while it reads and segments the
next one (one block in flight); a block whose write failed or was killed has
no manifest and is segmented again by a rerun.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._core import apply_lut_array
from ..backends import Backend, SegmentationContext
from ..errors import InputError, LabelOverflowError, SegmenterError
from ..grid import parse_block_ids
from ..manifests import local_manifest_valid, write_manifest
from ..plan import Plan
from ..progress import advance
from ..storage.images import ImageSource, open_image
from ..storage.staging import MAX_LOCAL_LABELS, STAGING_DTYPE, Staging, piece_record
from ..storage.zarrs import WriteBehind

log = logging.getLogger(__name__)


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
                 writer: WriteBehind | None = None, **fields: Any) -> dict:
    """Check and renumber a block's labels (over its core + halo), write them to
    the staging store, then write the manifest LAST."""
    grid = plan.grid
    where = grid.describe(block)
    ext = grid.extended(block)
    labels = check_labels(labels, [e.stop - e.start for e in ext], where)
    local, n, m = renumber_local(labels, grid.within(grid.core(block), ext), where)
    return store_local(plan, staging, block, local, n, m, manifest_dir, writer, **fields)


def store_local(plan: Plan, staging: Staging, block: int, local: np.ndarray, n: int, m: int,
                manifest_dir: str | os.PathLike, writer: WriteBehind | None = None, **fields: Any) -> dict:
    """Write a block's labels in local numbering (over its core + halo: core
    objects ``1..n``, halo-only ``n+1..m``) to the staging store, then write
    the manifest LAST.  With a ``writer`` both happen in its background
    thread (the caller goes on with the next block); a write that fails
    leaves the block without a manifest, and the error comes out of the
    writer.  Returns the manifest fields (without the pieces' records when
    they are written behind)."""
    _check_count(m, plan.grid.describe(block))
    fields.update(n_labels=n, n_halo_labels=m - n, empty=n == 0)
    if writer is None:
        return _write_local(plan, staging, block, local, manifest_dir, fields)
    writer.submit(_write_local, plan, staging, block, local, manifest_dir, dict(fields))
    return fields


def _write_local(plan: Plan, staging: Staging, block: int, local: np.ndarray, manifest_dir: str | os.PathLike,
                 fields: dict) -> dict:
    pieces = staging.block_pieces(block, local, plan.grid.extended(block))
    staging.write_pieces(block, pieces)
    records = {name: piece_record(data) for name, data in pieces}
    fields.update(foreground_voxels=records["core"]["voxels"], pieces=records)
    write_manifest(manifest_dir, plan, block, **fields)  # LAST: the block is finished only now
    return fields


class BlockSegmenter:
    """What segmenting blocks of one plan needs, opened once: the backend
    (a model is loaded once, not once per block), the image (its decoded
    chunks are shared by neighbouring blocks) and the staging store.

    ``runtime`` settings (e.g. ``device``) go to the backend: where to run is
    a property of the task, not of the plan, so they are not in the plan hash.
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, plan: Plan, **runtime: Any) -> None:
        if plan.image is None:
            raise InputError("This plan has no image: its labels are provided by the caller (pystitch.merge).")
        self.plan = plan
        self.runtime = {k: v for k, v in runtime.items() if v is not None}
        ctx = SegmentationContext(block=-1, ndim=plan.ndim, voxel_size=plan.voxel_size)
        self.backend: Backend = plan.make_backend().open(ctx, **self.runtime)
        self.source: ImageSource | None = None
        self.staging: Staging | None = None
        try:
            self.source = open_image(plan.image)
            self.staging = Staging(plan.staging_uri, plan.grid, plan.hash, mode="r+")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "BlockSegmenter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.backend.close()
        if self.source is not None:
            self.source.close()
            self.source = None

    def size_cache(self, blocks: Sequence[int]) -> int:
        """Size the image's chunk cache to the chunks ``blocks`` read (see
        :meth:`~pystitch.storage.images.ImageSource.size_cache`); returns its capacity in bytes."""
        assert self.source is not None
        grid, context = self.plan.grid, self.backend.context(self.plan.ndim)
        return self.source.size_cache([grid.extended(b, context) for b in blocks if b not in self.plan.empty_set])

    def segment(self, block: int, manifest_dir: str | os.PathLike, writer: WriteBehind | None = None) -> dict:
        """Segment one block, store its labels, write its manifest; returns the manifest fields.
        ``writer``: store them in its background thread while the caller goes on (see :func:`store_local`)."""
        plan, backend, grid = self.plan, self.backend, self.plan.grid
        assert self.source is not None and self.staging is not None
        t0 = time.perf_counter()
        fields: dict[str, Any] = {"backend": backend.info()}
        if block in plan.empty_set:
            fields.update(n_labels=0, n_halo_labels=0, empty=True, foreground_voxels=0, seconds=0.0)
            write_manifest(manifest_dir, plan, block, **fields)
            return fields
        ctx = SegmentationContext(block=block, ndim=plan.ndim, voxel_size=plan.voxel_size)
        region = grid.extended(block, backend.context(plan.ndim))
        ext = grid.extended(block)
        crop = grid.within(ext, region)
        try:
            data = self.source.read(region)
        except InputError as exc:
            raise InputError(f"{exc} (reading {grid.describe(block)})") from exc
        below = backend.empty_below()
        if below is not None and (data.size == 0 or float(data.max()) <= below):
            fields.update(n_labels=0, n_halo_labels=0, empty=True, foreground_voxels=0,
                          seconds=round(time.perf_counter() - t0, 4))
            write_manifest(manifest_dir, plan, block, **fields)
        else:
            core = grid.within(grid.core(block), ext)
            done = backend.segment_local(data, crop, core, ctx)
            if done is not None:  # already numbered as stored (a compiled fast path)
                local, n, m = done
                fields["seconds"] = round(time.perf_counter() - t0, 4)  # reading + segmenting
                fields = store_local(plan, self.staging, block, local, n, m, manifest_dir, writer, **fields)
            else:
                labels = backend.segment(data, crop, ctx)
                fields["seconds"] = round(time.perf_counter() - t0, 4)  # reading + segmenting
                fields = store_labels(plan, self.staging, block, labels, manifest_dir, writer, **fields)
        log.debug("segmented %s: %d objects in the core, %d only in the halo (%.2fs)", grid.describe(block),
                  fields["n_labels"], fields["n_halo_labels"], time.perf_counter() - t0)
        return fields


def segment_blocks(plan: Plan | str | os.PathLike, blocks: Any, *, manifest_dir: str | os.PathLike | None = None,
                   skip_existing: bool = False, segmenter: BlockSegmenter | None = None, **runtime: Any) -> list[int]:
    """Segment ``blocks`` of ``plan``; returns the ids that were processed.

    Manifests go to ``manifest_dir`` (default: the plan's work dir).  With
    ``skip_existing``, blocks that already have a valid manifest are skipped.
    ``segmenter``: an open :class:`BlockSegmenter` of this plan to reuse (a
    scheduler keeps one per worker); otherwise one is opened for this call
    with the ``runtime`` settings (``device="cuda"``, ``allow_cpu_fallback=True``).
    """
    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    plan.require_block_rule("segment-block")
    ids = parse_block_ids(blocks, plan.n_blocks)
    if plan.image is None:
        raise InputError("This plan has no image: its labels are provided by the caller (pystitch.merge).")
    mdir = Path(manifest_dir) if manifest_dir is not None else plan.manifest_dir
    mdir.mkdir(parents=True, exist_ok=True)
    if skip_existing:
        todo = [b for b in ids if not local_manifest_valid(plan, mdir, b)]
        advance("segment", len(ids) - len(todo))  # finished earlier
        ids = todo
    if not ids:
        return []
    seg = segmenter if segmenter is not None else BlockSegmenter(plan, **runtime)
    try:
        seg.size_cache(ids)
        # each block's labels are stored while the next one is read and segmented
        with WriteBehind() as writer:
            for b in ids:
                seg.segment(b, mdir, writer)
                advance("segment")
    finally:
        if segmenter is None:
            seg.close()
    return ids
