"""Stitching labels you computed yourself (merge only, no segmentation).

For users who already have per-block predictions: give a function (or a
mapping) that returns the labels of each block's core + halo region, and
pystitch matches, resolves and writes them exactly as it does its own::

    def labels_of(block, region):          # region: tuple of slices (core + halo)
        return my_model(image[region])

    pystitch.merge(labels_of, "labels.zarr", shape=image.shape,
                   block_shape=(64, 256, 256), halo=(8, 16, 16), rule="match")
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .backends.base import Backend, SegmentationContext, register
from .errors import InputError, OutputExistsError
from .grid import parse_shape
from .manifests import write_manifest
from .plan import DEFAULT_MIN_IOU, Plan, default_report_dir, default_work_dir
from .steps.apply_lut import apply_lut
from .steps.face_pairs import face_pairs
from .steps.finalize import finalize
from .steps.resolve import resolve
from .steps.segment_block import store_labels
from .storage.images import absolute_uri
from .storage.staging import Staging, create_staging

log = logging.getLogger(__name__)


@register
class ProvidedBackend(Backend):
    """Marks plans whose labels come from the caller (``merge``)."""

    name = "provided"
    default_rule = "match"

    @classmethod
    def from_options(cls, ndim: int, **options: Any) -> "ProvidedBackend":
        return cls()

    def params(self) -> dict:
        return {}

    def segment(self, data: np.ndarray, crop: tuple[slice, ...], ctx: SegmentationContext) -> np.ndarray:
        raise InputError(
            f"The labels of this plan are provided by the caller (pystitch.merge); segment-block cannot compute "
            f"block {ctx.block}."
        )


def merge(block_labels: Callable[[int, tuple[slice, ...]], Any] | Mapping[int, Any], output: str | os.PathLike, *,
          shape: Any, block_shape: Any, halo: Any, rule: str = "match", min_iou: float = DEFAULT_MIN_IOU,
          label_dtype: str = "auto", axes: str | None = None, voxel_size: Any = None,
          work_dir: str | os.PathLike | None = None, report_dir: str | os.PathLike | None = None,
          overwrite: bool = False, keep_work: bool = False) -> dict:
    """Stitch per-block labels into one label image; returns the run summary.

    ``block_labels(block_id, region)`` (or ``block_labels[block_id]``) must
    give the integer labels of ``region``: the block's core grown by ``halo``
    and clipped to the image (``BlockGrid.extended``).  Blocks for which a mapping
    has no entry are empty.
    """
    try:
        shape_t = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise InputError(f"Expected the image shape as a sequence of integers. Got {shape!r} instead.") from None
    nd = len(shape_t)
    output = absolute_uri(output)
    if Path(output).exists() and not overwrite:
        raise OutputExistsError(f"The output {output} exists. Expected a new path, or overwrite=True to replace it.")
    plan = Plan(
        image=None, shape=shape_t, dtype="uint32", axes=axes or "zyx"[-nd:],
        block_shape=parse_shape(block_shape, nd, "block_shape"), halo=parse_shape(halo, nd, "halo", minimum=0),
        backend={"name": ProvidedBackend.name}, rule=rule, min_iou=float(min_iou), label_dtype=label_dtype,
        output=output,
        work_dir=absolute_uri(work_dir) if work_dir else default_work_dir(output),
        report_dir=absolute_uri(report_dir) if report_dir else default_report_dir(output),
        voxel_size=tuple(float(v) for v in voxel_size) if voxel_size is not None else None,
    )
    plan.clean_work_dir()
    Path(plan.work_dir).mkdir(parents=True, exist_ok=True)
    create_staging(plan.staging_uri, plan.grid, plan.hash)
    plan.save()
    staging = Staging(plan.staging_uri, plan.grid, plan.hash, mode="r+")
    blocks = []
    for b in range(plan.n_blocks):
        if isinstance(block_labels, Mapping):
            if b not in block_labels:
                continue
            labels = block_labels[b]
        else:
            labels = block_labels(b, plan.grid.extended(b))
        if labels is None:
            continue
        store_labels(plan, staging, b, labels, plan.manifest_dir, backend={"backend": ProvidedBackend.name})
        blocks.append(b)
    # blocks the caller left out are empty: give them empty manifests
    for b in sorted(set(range(plan.n_blocks)) - set(blocks)):
        write_manifest(plan.manifest_dir, plan, b, n_labels=0, n_halo_labels=0, empty=True, foreground_voxels=0)
    face_pairs(plan, "all")
    resolve(plan)
    apply_lut(plan, "all")
    summary = finalize(plan, overwrite=overwrite)
    if not keep_work:
        plan.clean_work_dir(finished=True)
    return summary
