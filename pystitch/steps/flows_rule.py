"""The flows rule (``--rule flows``, cellpose backend, ``pystitch run``): seam-free Cellpose.

Instead of segmenting blocks and matching their labels, the run computes what
Cellpose computes on the whole image, block by block:

1. predict (:func:`predict_flows`): block after block, the network's forward
   batches over it (each batch once, as ``eval`` runs it), then the block's
   flows and cell probability blended from the tiles over it -- bit for bit
   what ``CellposeModel.eval`` returns for the whole image -- into
   the flow store (:mod:`pystitch.storage.flowstore`, float32, chunked like the
   blocks, stamped with the plan hash);
2. dynamics (:func:`labels_from_flows`): :func:`pystitch.flows.blockwise.masks_blockwise`
   reading the flow store box by box: trajectories end at global positions,
   seeds are found and ranked globally, Cellpose's filters are applied to whole
   objects.  Every block's final labels go to the staging store as local ids
   ``1..n`` with a lut of their final ids, so that apply-lut and finalize
   write a normal pystitch output (labels, pyramid, regions, summary).

``pystitch run`` runs both stages in its own process (the trajectories in its
worker processes when it has two or more); a workflow runs
:func:`predict_step` (``predict-flows --blocks``, the network: the only step
that wants a GPU) in batches of blocks writing the one flow store plan-blocks
created, then :func:`follow_step` on the CPU: ``follow-flows --blocks`` in
batches (the trajectories: each block's end points into the work directory,
``flows-ends``, :class:`pystitch.flows.blockwise.EndPointFiles`), then
``follow-flows`` once (seeds, filters, lut; a block no task followed is
followed there), then apply-lut and finalize as for any rule.  A rerun of
either reuses what is complete: predict a complete flow store of the plan,
follow the lut and partial output it made (never recreating an output
apply-lut has written) and the end points of blocks already followed;
predict killed halfway goes on with the blocks its flow store has not marked
written (:meth:`pystitch.storage.flowstore.FlowStore.blocks_done`).

Each task runs in one process.  Memory: predict holds the network
output of the tiles between the blocks blended and those to come (3 float32
per network-space voxel, plus the tiles' 10 % overlap; in 3-D for each of the
three orientations): a tile is dropped after the last block that reads it, so
in C order of blocks about a slab of the image one block plus one tile thick
when planes are many tiles wide, up to the whole image when a forward batch
spans whole planes (small images); the dynamics hold what ``masks_blockwise`` holds (the
histogram pieces, seeds and per-object statistics; the end point of every
foreground voxel and the int64 seed labels of the image wait in files of the
work directory, ``flows-ends`` and ``flows-scratch``, memory-mapped), never
the flows of the whole image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import InputError, LabelOverflowError, StagingError
from ..flows.blockwise import EndPointFiles, block_grid, follow_blocks, masks_blockwise
from ..flows.dynamics import installed_dynamics, niter_for
from ..flows.predict import Geometry, StreamReport, batch_input, stream_blocks
from ..grid import parse_block_ids
from ..plan import Plan
from ..storage.files import atomic_write_json, exists, read_json, remove_path
from ..storage.flowstore import FlowStore
from ..storage.images import open_image
from ..storage.labels import LabelOutput, is_published
from ..storage.lut import Lut, write_lut
from ..storage.remote import is_url
from ..storage.staging import Staging

log = logging.getLogger(__name__)

#: the largest id each output dtype can hold
DTYPE_LIMITS = {name: int(np.iinfo(name).max) for name in ("uint16", "uint32", "uint64")}


def _bounds(plan: Plan, b: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    core = plan.grid.core(b)
    return tuple(s.start for s in core), tuple(s.stop for s in core)


def predict_flows(plan: Plan, segmenter: Any, report: StreamReport | None = None,
                  blocks: Sequence[int] | None = None) -> FlowStore:
    """The flow store of ``plan``: reused when complete for this plan, else
    computed for ``blocks`` (default all; the blocks a killed predict of this
    plan marked written are kept).  Tasks of other blocks may write the same
    store at the same time (each block its own chunks); whichever finds every
    block marked after its own marks the store complete.

    ``segmenter``: the cellpose adapter (:class:`pystitch.backends.cellpose.CellposeSegmenter`), loaded;
    ``report``: filled with what the network computed and held (:func:`pystitch.flows.predict.stream_blocks`).
    """
    done: set[int] = set()
    if exists(plan.flows_uri):
        # another plan's store is refused (PlanMismatchError), never taken nor removed
        store = FlowStore.open(plan.flows_uri, plan.hash)
        if store.complete:
            log.info("the flow store %s of this plan is complete: predict skipped", plan.flows_uri)
            if store.niter is None:  # completed before stores recorded it: the dynamics need not load the model
                store.mark_complete(niter=model_niter(plan, segmenter))
            return store
        done = store.blocks_done()  # a predict of this plan killed halfway: the blocks it finished stay
        log.info("the flow store %s of this plan has %d of %d blocks: predicting the others", plan.flows_uri,
                 len(done), plan.n_blocks)
    else:
        store = FlowStore.create(plan.flows_uri, plan.shape, plan.block_shape, plan.hash)
    geometry = Geometry(plan.shape, segmenter.model_facts())
    source = open_image(plan.image)
    report = report if report is not None else StreamReport()
    try:
        def read(box: tuple[tuple[int, ...], tuple[int, ...]]) -> np.ndarray:
            return segmenter.network_input(source.read(tuple(slice(a, b) for a, b in zip(*box))))

        def forward(batch: Any) -> np.ndarray:
            return segmenter.forward(batch_input(geometry, batch, read))

        wanted = range(plan.n_blocks) if blocks is None else sorted(set(int(b) for b in blocks))
        todo = [b for b in wanted if b not in done]
        report.resumed = len(wanted) - len(todo)
        for k, dP, cellprob in stream_blocks(geometry, [_bounds(plan, b) for b in todo], forward, report):
            store.write(plan.grid.core(todo[k]), dP, cellprob, block=todo[k])
    finally:
        source.close()
    if blocks is None or store.blocks_done() >= set(range(plan.n_blocks)):
        store.mark_complete(niter=model_niter(plan, segmenter))
    log.info("predicted flows of %d blocks (%d tiles in %d batches; at most %d tile outputs, %.1f MiB, held) -> %s",
             len(todo), report.tiles, report.batches, report.peak_tiles, report.peak_bytes / 2**20,
             plan.flows_uri)
    return store


def model_niter(plan: Plan, segmenter: Any) -> int:
    """The dynamics steps ``CellposeModel.eval`` takes with this plan's model and settings."""
    return niter_for(segmenter.major, segmenter.model_facts().rescale, niter=plan.flows_settings()["niter"])


def store_niter(plan: Plan, store: FlowStore) -> int:
    """The dynamics steps, as predict recorded them in the complete flow store;
    from the model itself (loaded on the CPU) for a store that lacks them."""
    if store.niter is not None:
        return store.niter
    backend = plan.make_backend().open(None, device="cpu")
    try:
        return model_niter(plan, backend.segmenter)
    finally:
        backend.close()


def labels_from_flows(plan: Plan, store: FlowStore, niter: int, out: str | os.PathLike | None = None) -> dict:
    """Cellpose's dynamics (``niter`` steps) on the flow store, block by block;
    writes the staging labels, the lut (at ``out``, default the plan's) and
    the partial output that apply-lut and finalize take.  Returns what the
    dynamics measured (for the summary)."""
    s = plan.flows_settings()
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

    # the seed labels (8 bytes per voxel) and the end points (8 bytes per foreground voxel) wait in files:
    # pages the kernel can write out and drop, not the process's own memory. The end points of blocks that
    # follow-flows --blocks tasks (or a killed run) left are taken; the seed labels are ours alone, recreated
    ends = EndPointFiles(plan.flows_ends, plan.hash, store.store_id)
    plan.flows_ends.mkdir(parents=True, exist_ok=True)
    scratch = plan.flows_scratch
    remove_path(scratch)
    scratch.mkdir(parents=True)
    staged = np.lib.format.open_memmap(scratch / "seedlabels.npy", mode="w+", dtype=np.int64,
                                       shape=tuple(plan.shape))
    try:
        _, report, resolution = masks_blockwise(
            store.dP, store.cellprob, plan.block_shape, installed_dynamics(), halo=plan.halo, niter=niter,
            cellprob_threshold=s["cellprob_threshold"], flow_threshold=s["flow_threshold"], min_size=s["min_size"],
            max_size_fraction=s["max_size_fraction"], do_3D=s["do_3D"], sink=sink, staged=staged,
            ends=ends)
    finally:
        del staged
        remove_path(scratch)

    counts = np.array([ids[b].size for b in range(plan.n_blocks)], np.uint64)
    offsets = np.zeros(plan.n_blocks + 1, np.uint64)
    np.cumsum(counts, out=offsets[1:])
    n_prov = int(offsets[-1])
    n_final = int(resolution.n_objects)
    dtype = _dtype(plan.label_dtype, n_final)
    voxels = np.array([int(np.count_nonzero(staging.core[plan.grid.core(b)])) if counts[b] else 0
                       for b in range(plan.n_blocks)], np.uint64)
    lut = np.concatenate([np.zeros(1, np.uint64)] + [ids[b] for b in range(plan.n_blocks)])
    inputs = flows_inputs(plan)
    info = {"objects": n_final, "seeds": int(report.n_seeds), "reach": [int(r) for r in report.reach],
            "escaped_trajectories": int(report.n_escaped), "foreground_voxels": int(report.n_foreground),
            "removed": {k: int(v) if isinstance(v, (int, np.integer)) else v for k, v in report.removed.items()},
            "niter": niter}
    attrs = {"plan_hash": plan.hash, "n_objects": n_final, "n_provisional": n_prov,
             "merges": n_prov - n_final, "pairs": 0, "pystitch": __version__, "inputs": inputs,
             "flows": info}  # what finalize puts into the summary
    LabelOutput.create(plan.partial_output, plan.label_layout(), dtype, plan.hash)
    write_lut(str(out) if out is not None else plan.lut_uri, [lut], n_prov + 1, offsets, dtype, attrs,
              extra={"voxels": voxels})
    atomic_write_json(plan.output_id_path, {"plan_hash": plan.hash, "output_id": uuid.uuid4().hex,
                                            "lut_inputs": inputs})
    try:
        remove_path(plan.flows_ends)  # consumed: the lut is written
    except OSError as exc:  # the lut stands; clean_work_dir removes them later
        log.warning("could not remove the end points in %s (%s); they are removed with the work directory",
                    plan.flows_ends, exc)
    log.info("flows: %d objects from %d seeds (%d trajectories followed again in a larger window)",
             n_final, report.n_seeds, report.n_escaped)
    return info


def _dtype(label_dtype: str, n_final: int) -> np.dtype:
    if label_dtype == "auto":
        return np.dtype(np.uint32 if n_final <= DTYPE_LIMITS["uint32"] else np.uint64)
    if n_final > DTYPE_LIMITS[label_dtype]:
        raise LabelOverflowError(f"{n_final} objects do not fit in {label_dtype} (at most "
                                 f"{DTYPE_LIMITS[label_dtype]}). Use --label-dtype auto or a larger type.")
    return np.dtype(label_dtype)


def flows_inputs(plan: Plan) -> str:
    """What the lut of the flows rule is computed from: the plan (which fixes
    the image, the model and every setting of the network and the dynamics)."""
    return hashlib.sha256(json.dumps([plan.hash, "flows"]).encode()).hexdigest()


def predict_step(plan: Plan | str | os.PathLike, blocks: Any = "all", *, device: str | None = None,
                 allow_cpu_fallback: bool | None = None) -> dict:
    """``predict-flows``: the network over ``blocks`` of the image (ids as the
    other batch steps take them; default all) into the plan's flow store
    (nothing to do for blocks already written, or when it is complete).
    Returns a summary."""
    t0 = time.perf_counter()
    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    plan.require_flows_rule("predict-flows")
    ids = parse_block_ids(blocks, plan.n_blocks)
    runtime = {k: v for k, v in {"device": device, "allow_cpu_fallback": allow_cpu_fallback}.items()
               if v is not None}
    backend = plan.make_backend().open(None, **runtime)
    report = StreamReport()
    try:
        predict_flows(plan, backend.segmenter, report, blocks=ids)
    finally:
        backend.close()
    return {"plan_hash": plan.hash, "flows": plan.flows_uri, "blocks": len(ids), "tiles": report.tiles,
            "batches": report.batches, "peak_tiles_held": report.peak_tiles, "blocks_resumed": report.resumed,
            "peak_tile_bytes": report.peak_bytes, "seconds": round(time.perf_counter() - t0, 4)}


def follow_step(plan: Plan | str | os.PathLike, blocks: Any = None, *, out: str | os.PathLike | None = None) -> dict:
    """``follow-flows``: Cellpose's dynamics on the complete flow store of the
    plan: the staging labels, the lut (``out``, default the plan's) and the
    partial output, as resolve leaves them.  Returns the summary, also written
    as ``resolve.json`` beside the lut.

    With ``blocks`` (ids as the batch steps take them), only the trajectories
    of those blocks: their end points into the work directory
    (``flows-ends``), where the follow-flows of the whole plan takes them
    instead of following those blocks itself.  Returns what it did.
    """
    t0 = time.perf_counter()
    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    plan.require_flows_rule("follow-flows")
    uri = str(out) if out is not None else plan.lut_uri
    ids = parse_block_ids(blocks, plan.n_blocks) if blocks is not None else None
    if ids is not None and out is not None:
        raise InputError(f"Expected --out without --blocks: follow-flows --blocks writes end points into "
                         f"{plan.flows_ends}, no lut. Got --out {out} instead.")
    done = already_followed(plan, uri if ids is None else None)
    if done is not None:
        log.info("the lut of this plan's flows exists (%s): nothing to do", uri)
        return done if ids is None else {"plan_hash": plan.hash, "blocks": len(ids), "followed": 0, "kept": 0,
                                         "lut_exists": True, "seconds": round(time.perf_counter() - t0, 4)}
    store = _complete_flow_store(plan)
    niter = store_niter(plan, store)  # the dynamics run on the CPU, without the network
    if ids is not None:
        return {"plan_hash": plan.hash, "blocks": len(ids), **_follow_some(plan, store, niter, ids),
                "seconds": round(time.perf_counter() - t0, 4)}
    info = labels_from_flows(plan, store, niter, out=uri)
    summary = {"plan_hash": plan.hash, "objects": info["objects"], "blocks": plan.n_blocks, "rule": "flows",
               "flows": info, "seconds": round(time.perf_counter() - t0, 4)}
    atomic_write_json(summary_path(plan, uri), summary)
    return summary


def _complete_flow_store(plan: Plan) -> FlowStore:
    if not exists(plan.flows_uri):
        raise StagingError(f"Expected the flow store of this plan at {plan.flows_uri}. Got nothing there: run "
                           "predict-flows on this plan first.")
    store = FlowStore.open(plan.flows_uri, plan.hash)  # another plan's store is refused
    if not store.complete:  # a partial result is never consumed
        raise StagingError(f"Expected a complete flow store at {plan.flows_uri}. Got one that predict-flows has not "
                           "finished (killed, or still running): run predict-flows on this plan first.")
    return store


def _follow_some(plan: Plan, store: FlowStore, niter: int, ids: Sequence[int]) -> dict:
    """The trajectories (``niter`` steps) of blocks ``ids``: their end points into the plan's ``flows-ends``."""
    s = plan.flows_settings()
    grid = [_bounds(plan, b) for b in range(plan.n_blocks)]
    if block_grid(plan.shape, plan.block_shape) != grid:  # masks_blockwise cuts the same cores
        raise AssertionError("the plan's cores are not the regular grid of its block shape")
    plan.flows_ends.mkdir(parents=True, exist_ok=True)
    files = EndPointFiles(plan.flows_ends, plan.hash, store.store_id)
    done = follow_blocks(store.dP, store.cellprob, ids, grid, files, installed_dynamics(), halo=plan.halo, niter=niter,
                         cellprob_threshold=s["cellprob_threshold"])
    log.info("followed the trajectories of %d blocks (%d kept from an earlier follow) -> %s", done["followed"],
             done["kept"], plan.flows_ends)
    return {"followed": done["followed"], "kept": done["kept"], "foreground_voxels": done["foreground"],
            "escaped_trajectories": done["escaped"], "reach": done["reach"], "niter": niter}


def summary_path(plan: Plan, lut_uri: str) -> Path:
    """resolve.json: beside the lut, or in the work directory when the lut is at a URL."""
    return Path(plan.work_dir) / "resolve.json" if is_url(lut_uri) else Path(lut_uri).with_name("resolve.json")


def already_followed(plan: Plan, uri: str | None = None) -> dict | None:
    """The summary of an earlier follow-flows of this plan whose lut is at
    ``uri`` (default the plan's) and whose output is still usable (being
    written by apply-lut, or published); None otherwise."""
    uri = uri if uri is not None else plan.lut_uri
    try:
        lut = Lut.open(uri, plan.hash)
    except StagingError:
        return None
    if lut.attrs.get("inputs") != flows_inputs(plan):
        return None
    try:
        current = read_json(plan.output_id_path, "output id")
    except StagingError:
        current = None
    partial_ok = current is not None and current.get("lut_inputs") == flows_inputs(plan) and exists(
        plan.partial_output)
    if not partial_ok and not is_published(plan.output, plan.hash):
        return None
    try:
        return read_json(summary_path(plan, uri), "follow-flows summary")
    except StagingError:
        return {"plan_hash": plan.hash, "objects": lut.n_objects, "rule": "flows"}
