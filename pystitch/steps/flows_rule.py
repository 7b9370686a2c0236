"""The flows rule (``--rule flows``, cellpose backend, ``pystitch run``): seam-free Cellpose.

Instead of segmenting blocks and matching their labels, the run computes what
Cellpose computes on the whole image, block by block:

1. predict (:func:`predict_flows`): block after block, the network's forward
   batches over it (each batch once, as ``eval`` runs it), then the block's
   flows and cell probability blended from the tiles over it -- bit for bit
   what ``CellposeModel.eval`` returns for the whole image -- into
   the flow store (:mod:`pystitch.storage.flowstore`, float32, chunked like the
   blocks, stamped with the plan hash);
2. dynamics (:func:`labels_from_flows`), the composition of
   :mod:`pystitch.flows.blockwise` over the flow store, box by box:
   trajectories end at global positions (follow), seeds are found and ranked
   globally and grown into a region map (:func:`seed_regions`), every block
   is labelled by the seed region its end points fall in (:func:`assign_blocks`:
   the staging labels, as local ids ``1..n`` of the seed labels present, and
   per-object stats), Cellpose's filters are applied to whole objects from
   those stats and crops of single objects; the lut maps each block's seed
   labels to their final ids, so that apply-lut and finalize write a normal
   pystitch output (labels, pyramid, regions, summary).

``pystitch run`` runs both stages in its own process (the trajectories and
the assignment in its worker processes when it has two or more); a workflow
runs :func:`predict_step` (``predict-flows --blocks``, the network: the only
step that wants a GPU) in batches of blocks writing the one flow store
plan-blocks created, then on the CPU: ``follow-flows --blocks`` in batches
(:func:`follow_step`: the trajectories, each block's end points into the work
directory, ``flows-ends``, :class:`pystitch.flows.blockwise.EndPointFiles`),
``seed-flows`` once (:func:`seed_step`: the region map, ``flows-ends/regions.npz``),
``assign-flows --blocks`` in batches (:func:`assign_step`), then
``follow-flows`` once (filters and lut; whatever no task did -- a block not
followed or not assigned, the region map -- is done there), then apply-lut
and finalize as for any rule.  A rerun of any of them reuses what is
complete: predict a complete flow store of the plan, follow the lut and
partial output it made (never recreating an output apply-lut has written),
the end points of blocks already followed, the region map of these flows and
the blocks assigned from it; predict killed halfway goes on with the blocks
its flow store has not marked written
(:meth:`pystitch.storage.flowstore.FlowStore.blocks_done`).  A block's
files are written before the file that marks it done, and what was made
from other flows (predicted again since) or from another region map is
done again, never taken.

Each task runs in one process.  Memory: predict holds the network
output of the tiles between the blocks blended and those to come (3 float32
per network-space voxel, plus the tiles' 10 % overlap; in 3-D for each of the
three orientations): a tile is dropped after the last block that reads it, so
in C order of blocks about a slab of the image one block plus one tile thick
when planes are many tiles wide, up to the whole image when a forward batch
spans whole planes (small images); seed-flows holds the histogram pieces of every block (16 bytes per distinct
end point) and the region map; assign-flows one block's end points, cell
probability and labels at a time; follow-flows the per-object stats of every
block (48 + 16 ndim bytes per object and block) and one block at a time (the
int64 seed labels of the image wait in a file of the work directory,
``flows-scratch``, memory-mapped, for the filters' crops), never the flows
of the whole image.
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
from ..flows.assign import merge_object_stats, object_stats
from ..flows.blockwise import EndPointFiles, SeedMap, assign_block, block_grid, follow_blocks, seed_map
from ..flows.dynamics import installed_dynamics, niter_for
from ..flows.filters import Resolution, resolve_masks
from ..flows.predict import Geometry, StreamReport, batch_input, stream_blocks
from ..grid import parse_block_ids
from ..plan import Plan
from ..progress import advance
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


def _grid(plan: Plan) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    grid = [_bounds(plan, b) for b in range(plan.n_blocks)]
    if block_grid(plan.shape, plan.block_shape) != grid:  # the dynamics cut the same cores
        raise AssertionError("the plan's cores are not the regular grid of its block shape")
    return grid


def _files(plan: Plan, store: FlowStore) -> EndPointFiles:
    plan.flows_ends.mkdir(parents=True, exist_ok=True)
    return EndPointFiles(plan.flows_ends, plan.hash, store.store_id)


def seed_regions(plan: Plan, store: FlowStore, niter: int, files: EndPointFiles) -> tuple[SeedMap, str, dict]:
    """The region map of the seeds: the one in ``files`` when it is there for
    these flows, else made from every block's histogram of end points (a
    block no follow-flows --blocks task followed is followed here) and
    written there.  Returns ``(map, its id, what the follow measured)``."""
    loaded = files.load_regions()
    if loaded is not None:
        return loaded
    s = plan.flows_settings()
    grid = _grid(plan)
    done = follow_blocks(store.dP, store.cellprob, range(plan.n_blocks), grid, files, installed_dynamics(),
                         halo=plan.halo, niter=niter, cellprob_threshold=s["cellprob_threshold"])
    pieces = {}
    for b, (lo, hi) in enumerate(grid):
        loaded_block = files.load(b, lo, hi)
        if loaded_block is None:  # removed or replaced while this task ran
            raise StagingError(f"Expected the end points of block {b} in {files.directory} (followed a moment "
                               "ago). Got none: is another follow-flows running on this work directory?")
        pieces[b] = loaded_block[1]
    regions = seed_map(pieces, grid, plan.shape)
    measured = {"followed_here": done["followed"], "foreground_voxels": done["foreground"],
                "escaped_trajectories": done["escaped"], "reach": done["reach"],
                "histogram_entries": sum(p[0].size for p in pieces.values())}
    del pieces
    regions_id = files.save_regions(regions, measured)
    log.info("seeds: %d from %d histogram entries (%d blocks followed here) -> %s", regions.n_seeds,
             measured["histogram_entries"], done["followed"], files.regions_path)
    return regions, regions_id, measured


def assign_blocks(plan: Plan, store: FlowStore, files: EndPointFiles, regions: SeedMap, regions_id: str,
                  ids: Sequence[int], staging: Staging | None = None) -> dict:
    """Blocks ``ids`` labelled by the seed region their end points fall in:
    each core's seed labels into the staging store as local ids ``1..n``
    (the sorted seed labels present), then its per-object stats into
    ``files`` (what marks it assigned).  Blocks already assigned from this
    region map are kept.  Returns ``{"assigned", "kept"}``."""
    s = plan.flows_settings()
    grid = _grid(plan)
    staging = staging if staging is not None else Staging(plan.staging_uri, plan.grid, plan.hash, mode="r+")
    done = {"assigned": 0, "kept": 0}
    for b in ids:
        lo, hi = grid[b]
        if files.load_assigned(b, lo, hi, regions_id) is not None:
            done["kept"] += 1
            advance("assign")
            continue
        core = plan.grid.core(b)
        labels = assign_block(files.ends(b), np.asarray(store.cellprob[core]) > s["cellprob_threshold"], regions, b)
        stats = object_stats(labels, lo, plan.shape)
        local = np.zeros(labels.shape, np.uint32)
        nz = labels > 0
        local[nz] = np.searchsorted(stats.labels, labels[nz]) + 1
        del labels, nz
        staging.core[core] = local
        files.save_assigned(b, lo, hi, stats, regions_id)
        done["assigned"] += 1
        advance("assign")
    return done


def labels_from_flows(plan: Plan, store: FlowStore, niter: int, out: str | os.PathLike | None = None) -> dict:
    """Cellpose's dynamics (``niter`` steps) on the flow store, block by block;
    writes the staging labels, the lut (at ``out``, default the plan's) and
    the partial output that apply-lut and finalize take.  Returns what the
    dynamics measured (for the summary).

    What seed-flows and assign-flows tasks left in the work directory (the
    region map, the blocks assigned from it) is taken; what they did not do
    is done here.  Then Cellpose's filters over the whole objects, from the
    blocks' per-object stats and crops of single objects; the lut maps each
    block's seed labels to their final ids, and the few voxels a filled hole
    gives another id are written into the staging labels of their block.
    """
    s = plan.flows_settings()
    shape = tuple(plan.shape)
    staging = Staging(plan.staging_uri, plan.grid, plan.hash, mode="r+")
    files = _files(plan, store)
    regions, regions_id, measured = seed_regions(plan, store, niter, files)
    assign_blocks(plan, store, files, regions, regions_id, range(plan.n_blocks), staging)
    grid = _grid(plan)
    per_block = []
    for b, (lo, hi) in enumerate(grid):
        stats = files.load_assigned(b, lo, hi, regions_id)
        if stats is None:
            raise StagingError(f"Expected the assignment of block {b} in {files.directory} (made a moment ago). "
                               "Got none: is another follow-flows running on this work directory?")
        per_block.append(stats)
    merged = merge_object_stats(per_block, plan.ndim)

    # the filters read crops of single objects' seed labels: from a file (8 bytes per voxel) the kernel can
    # write out and drop, filled once from the staging labels, not the process's own memory
    scratch = plan.flows_scratch
    remove_path(scratch)
    scratch.mkdir(parents=True)
    staged = np.lib.format.open_memmap(scratch / "seedlabels.npy", mode="w+", dtype=np.int64, shape=shape)
    try:
        for b, stats in enumerate(per_block):
            core = plan.grid.core(b)
            staged[core] = np.concatenate([np.zeros(1, np.int64), stats.labels])[staging.core[core]]

        def read_labels(lo: tuple[int, ...], hi: tuple[int, ...]) -> np.ndarray:
            return staged[tuple(slice(a, c) for a, c in zip(lo, hi))]

        def read_flows(lo: tuple[int, ...], hi: tuple[int, ...]) -> np.ndarray:
            return store.dP[(slice(None),) + tuple(slice(a, c) for a, c in zip(lo, hi))]

        resolution = resolve_masks(merged, shape, installed_dynamics(), read_labels=read_labels,
                                   read_flows=read_flows, flow_threshold=s["flow_threshold"],
                                   min_size=s["min_size"], max_size_fraction=s["max_size_fraction"],
                                   do_3D=s["do_3D"])
    finally:
        del staged
        remove_path(scratch)

    # each block's lut: the final id of every seed label present; filled holes patched into the staging labels
    patches = _patches_by_block(plan, resolution)
    ids: list[np.ndarray] = []
    voxels = np.zeros(plan.n_blocks, np.uint64)
    for b, stats in enumerate(per_block):
        final = resolution.lut[np.searchsorted(resolution.seed_labels, stats.labels)].astype(np.uint64)
        if b in patches:
            final, voxels[b] = _patch_block(plan, staging, files, b, final, *patches[b])
        else:
            voxels[b] = int(stats.count.sum())
        ids.append(final)

    counts = np.array([a.size for a in ids], np.uint64)
    offsets = np.zeros(plan.n_blocks + 1, np.uint64)
    np.cumsum(counts, out=offsets[1:])
    n_prov = int(offsets[-1])
    n_final = int(resolution.n_objects)
    dtype = _dtype(plan.label_dtype, n_final)
    lut = np.concatenate([np.zeros(1, np.uint64)] + ids)
    inputs = flows_inputs(plan)
    info = {"objects": n_final, "seeds": int(regions.n_seeds),
            "reach": [int(r) for r in np.asarray(measured["reach"]).ravel()],
            "escaped_trajectories": int(measured["escaped_trajectories"]),
            "foreground_voxels": int(measured["foreground_voxels"]),
            "removed": {k: int(v) if isinstance(v, (int, np.integer)) else v for k, v in resolution.removed.items()},
            "niter": niter}
    attrs = {"plan_hash": plan.hash, "n_objects": n_final, "n_provisional": n_prov,
             "merges": int(np.count_nonzero(lut)) - n_final, "pairs": 0, "pystitch": __version__,
             "inputs": inputs, "flows": info}  # what finalize puts into the summary
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
             n_final, regions.n_seeds, info["escaped_trajectories"])
    return info


def _patches_by_block(plan: Plan, resolution: Resolution) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The filled-hole voxels (global flat indices, final ids) grouped by the block whose core holds them."""
    if resolution.patch_positions.size == 0:
        return {}
    coords = np.stack(np.unravel_index(resolution.patch_positions, tuple(plan.shape)))
    block = np.asarray(plan.block_shape, np.int64)[:, None]
    dims = tuple(-(-int(s) // int(k)) for s, k in zip(plan.shape, plan.block_shape))
    which = np.ravel_multi_index(tuple(coords // block), dims)
    out = {}
    for b in np.unique(which):
        sel = which == b
        out[int(b)] = (resolution.patch_positions[sel], resolution.patch_ids[sel])
    return out


def _patch_block(plan: Plan, staging: Staging, files: EndPointFiles, b: int, final: np.ndarray,
                 positions: np.ndarray, patch_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Give the filled-hole voxels of block ``b`` their final ids in its
    staging labels: an id the block's lut has keeps its local id, another
    is added to the lut.  Returns the block's lut and its labelled voxels.

    The block counts as not assigned from here on, so that a follow-flows
    killed before it writes the lut assigns it again (from its end points)
    rather than take patched labels for seed labels."""
    files.forget_assigned(b)
    core = plan.grid.core(b)
    local = np.asarray(staging.core[core])
    lo = np.array([s.start for s in core], np.int64)[:, None]
    where = tuple(np.stack(np.unravel_index(positions, tuple(plan.shape))) - lo)
    table = {int(f): k + 1 for k, f in enumerate(final.tolist()) if f}
    extra = [int(f) for f in np.unique(patch_ids) if f and int(f) not in table]
    for k, f in enumerate(extra):
        table[f] = final.size + k + 1
    table[0] = 0
    local[where] = np.array([table[int(f)] for f in patch_ids], np.uint32)
    staging.core[core] = local
    return np.concatenate([final, np.asarray(extra, np.uint64)]), int(np.count_nonzero(local))


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


def seed_step(plan: Plan | str | os.PathLike) -> dict:
    """``seed-flows``: the seeds of the whole image, found in the histogram of
    end points of every block (the blocks no follow-flows --blocks task
    followed are followed here), ranked and grown into the region map that
    assign-flows tasks label their blocks from (``flows-ends/regions.npz``
    in the work directory).  Returns what it did."""
    t0 = time.perf_counter()
    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    plan.require_flows_rule("seed-flows")
    if already_followed(plan) is not None:
        log.info("the lut of this plan's flows exists (%s): nothing to do", plan.lut_uri)
        return {"plan_hash": plan.hash, "lut_exists": True, "seconds": round(time.perf_counter() - t0, 4)}
    store = _complete_flow_store(plan)
    files = _files(plan, store)
    regions, _, measured = seed_regions(plan, store, store_niter(plan, store), files)
    return {"plan_hash": plan.hash, "seeds": regions.n_seeds, "region_entries": int(regions.positions.size),
            "followed_here": int(measured["followed_here"]), "regions": files.regions_path,
            "seconds": round(time.perf_counter() - t0, 4)}


def assign_step(plan: Plan | str | os.PathLike, blocks: Any) -> dict:
    """``assign-flows --blocks``: the blocks labelled by the seed region their
    end points fall in, from the region map seed-flows made: the staging
    labels of each core and its per-object stats (in ``flows-ends``), which
    follow-flows takes instead of assigning those blocks itself.  Returns
    what it did."""
    t0 = time.perf_counter()
    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    plan.require_flows_rule("assign-flows")
    ids = parse_block_ids(blocks, plan.n_blocks)
    if already_followed(plan) is not None:
        log.info("the lut of this plan's flows exists (%s): nothing to do", plan.lut_uri)
        return {"plan_hash": plan.hash, "blocks": len(ids), "assigned": 0, "kept": 0, "lut_exists": True,
                "seconds": round(time.perf_counter() - t0, 4)}
    store = _complete_flow_store(plan)
    files = EndPointFiles(plan.flows_ends, plan.hash, store.store_id)
    loaded = files.load_regions()
    if loaded is None:  # a partial result is never consumed: no map, or one made from other flows
        raise StagingError(f"Expected the region map of the seeds of this plan's flows at {files.regions_path}. "
                           "Got none (or one made from flows predicted again since): run seed-flows on this plan "
                           "first.")
    regions, regions_id, _ = loaded
    done = assign_blocks(plan, store, files, regions, regions_id, ids)
    log.info("assigned %d blocks (%d kept from an earlier assign) -> %s", done["assigned"], done["kept"],
             plan.staging_uri)
    return {"plan_hash": plan.hash, "blocks": len(ids), **done, "seconds": round(time.perf_counter() - t0, 4)}


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
    grid = _grid(plan)
    files = _files(plan, store)
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
