"""The flows rule (``--rule flows``, cellpose backend, ``pystitch run``): seam-free Cellpose.

Instead of segmenting blocks and matching their labels, the run computes what
Cellpose computes on the whole image, block by block:

1. predict (:func:`predict_flows`): the network's forward batches, each in the
   block that owns it (:meth:`pystitch.flows.predict.Geometry.owned`), then
   every block's flows and cell probability blended from the tiles over it --
   bit for bit what ``CellposeModel.eval`` returns for the whole image -- into
   the flow store (:mod:`pystitch.storage.flowstore`, float32, chunked like the
   blocks, stamped with the plan hash);
2. dynamics (:func:`labels_from_flows`): :func:`pystitch.flows.blockwise.masks_blockwise`
   reading the flow store box by box: trajectories end at global positions,
   seeds are found and ranked globally, Cellpose's filters are applied to whole
   objects.  Every block's final labels go to the staging store as local ids
   ``1..n`` with a lut of their final ids, so that apply-lut and finalize
   write a normal pystitch output (labels, pyramid, regions, summary).

Both stages run in the calling process.  Memory: predict holds the network
output of every tile of the image until the blocks are blended (3 float32 per
network-space voxel, plus the tiles' 10 % overlap; in 3-D for each of the three
orientations); the dynamics hold what ``masks_blockwise`` holds (the end point
of every foreground voxel, the histogram pieces, and an int64 seed label per
voxel of the image), never the flows of the whole image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import LabelOverflowError
from ..flows.blockwise import masks_blockwise
from ..flows.dynamics import installed_dynamics, niter_for
from ..flows.predict import Geometry, batch_input, blend
from ..plan import Plan
from ..storage.files import atomic_write_json, exists
from ..storage.flowstore import FlowStore
from ..storage.images import open_image
from ..storage.labels import LabelOutput
from ..storage.lut import write_lut
from ..storage.staging import Staging

log = logging.getLogger(__name__)

#: the largest id each output dtype can hold
DTYPE_LIMITS = {name: int(np.iinfo(name).max) for name in ("uint16", "uint32", "uint64")}


def _bounds(plan: Plan, b: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    core = plan.grid.core(b)
    return tuple(s.start for s in core), tuple(s.stop for s in core)


def predict_flows(plan: Plan, segmenter: Any) -> FlowStore:
    """The flow store of ``plan``: reused when complete for this plan, else computed.

    ``segmenter``: the cellpose adapter (:class:`pystitch.backends.cellpose.CellposeSegmenter`), loaded.
    """
    if exists(plan.flows_uri):
        # another plan's store is refused (PlanMismatchError), never taken nor removed
        store = FlowStore.open(plan.flows_uri, plan.hash)
        if store.complete:
            log.info("the flow store %s of this plan is complete: predict skipped", plan.flows_uri)
            return store
    store = FlowStore.create(plan.flows_uri, plan.shape, plan.block_shape, plan.hash)
    geometry = Geometry(plan.shape, segmenter.model_facts())
    source = open_image(plan.image)
    tiles: dict[tuple[int, ...], np.ndarray] = {}
    try:
        def read(box: tuple[tuple[int, ...], tuple[int, ...]]) -> np.ndarray:
            return segmenter.network_input(source.read(tuple(slice(a, b) for a, b in zip(*box))))

        for b in range(plan.n_blocks):
            for batch in geometry.owned(*_bounds(plan, b)):
                y = segmenter.forward(batch_input(geometry, batch, read))
                for k, member in enumerate(batch.members):
                    tiles[(batch.orientation, *member)] = y[k]
    finally:
        source.close()
    for b in range(plan.n_blocks):
        dP, cellprob = blend(geometry, _bounds(plan, b), lambda o, q, j, i: tiles[(o, q, j, i)])
        store.write(plan.grid.core(b), dP, cellprob)
    store.mark_complete()
    log.info("predicted flows of %d blocks (%d tiles) -> %s", plan.n_blocks, len(tiles), plan.flows_uri)
    return store


def labels_from_flows(plan: Plan, store: FlowStore, segmenter: Any) -> dict:
    """Cellpose's dynamics on the flow store, block by block; writes the staging
    labels, the lut and the partial output that apply-lut and finalize take.
    Returns what the dynamics measured (for the summary)."""
    s = plan.flows_settings()
    niter = niter_for(segmenter.major, segmenter.model_facts().rescale, niter=s["niter"])
    staging = Staging(plan.staging_uri, plan.grid, plan.hash, mode="r+")
    block_of = {_bounds(plan, b)[0]: b for b in range(plan.n_blocks)}
    ids: dict[int, np.ndarray] = {}

    def sink(lo: tuple[int, ...], hi: tuple[int, ...], labels: np.ndarray) -> None:
        b = block_of[tuple(lo)]
        present = np.unique(labels)
        present = present[present > 0]
        local = np.zeros(labels.shape, np.uint32)
        nz = labels > 0
        local[nz] = np.searchsorted(present, labels[nz]) + 1
        staging.core[plan.grid.core(b)] = local
        ids[b] = present.astype(np.uint64)

    _, report, resolution = masks_blockwise(
        store.dP, store.cellprob, plan.block_shape, installed_dynamics(), halo=plan.halo, niter=niter,
        cellprob_threshold=s["cellprob_threshold"], flow_threshold=s["flow_threshold"], min_size=s["min_size"],
        max_size_fraction=s["max_size_fraction"], do_3D=s["do_3D"], sink=sink)

    counts = np.array([ids[b].size for b in range(plan.n_blocks)], np.uint64)
    offsets = np.zeros(plan.n_blocks + 1, np.uint64)
    np.cumsum(counts, out=offsets[1:])
    n_prov = int(offsets[-1])
    n_final = int(resolution.n_objects)
    dtype = _dtype(plan.label_dtype, n_final)
    voxels = np.array([int(np.count_nonzero(staging.core[plan.grid.core(b)])) if counts[b] else 0
                       for b in range(plan.n_blocks)], np.uint64)
    lut = np.concatenate([np.zeros(1, np.uint64)] + [ids[b] for b in range(plan.n_blocks)])
    inputs = hashlib.sha256(json.dumps([plan.hash, "flows", counts.tolist()]).encode()).hexdigest()
    attrs = {"plan_hash": plan.hash, "n_objects": n_final, "n_provisional": n_prov,
             "merges": n_prov - n_final, "pairs": 0, "pystitch": __version__, "inputs": inputs}
    LabelOutput.create(plan.partial_output, plan.label_layout(), dtype, plan.hash)
    write_lut(plan.lut_uri, [lut], n_prov + 1, offsets, dtype, attrs, extra={"voxels": voxels})
    atomic_write_json(plan.output_id_path, {"plan_hash": plan.hash, "output_id": uuid.uuid4().hex,
                                            "lut_inputs": inputs})
    log.info("flows: %d objects from %d seeds (%d trajectories followed again in a larger window)",
             n_final, report.n_seeds, report.n_escaped)
    return {"objects": n_final, "seeds": report.n_seeds, "reach": list(report.reach),
            "escaped_trajectories": report.n_escaped, "foreground_voxels": report.n_foreground,
            "removed": {k: int(v) if isinstance(v, (int, np.integer)) else v for k, v in report.removed.items()},
            "niter": niter}


def _dtype(label_dtype: str, n_final: int) -> np.dtype:
    if label_dtype == "auto":
        return np.dtype(np.uint32 if n_final <= DTYPE_LIMITS["uint32"] else np.uint64)
    if n_final > DTYPE_LIMITS[label_dtype]:
        raise LabelOverflowError(f"{n_final} objects do not fit in {label_dtype} (at most "
                                 f"{DTYPE_LIMITS[label_dtype]}). Use --label-dtype auto or a larger type.")
    return np.dtype(label_dtype)
