"""resolve: join the pairs of all blocks into one lut of final ids.

Ids.  Block ``b``'s local id ``k`` has the provisional id ``offset[b] + k``,
where ``offset`` is the exclusive prefix sum (uint64) of the per-block object
counts in the manifests.  Pairs of provisional ids that are one object are
joined by a compiled union-find that keeps the smallest id as root, so every
object is named by its smallest provisional id whatever order pairs arrive
in.  Final ids are sequential ``1..N`` in that order.

Memory follows the number of ids that occur in pairs (objects crossing
seams), not the number of objects: the lut is computed and written in chunks.

The pure core is :func:`final_lut` (ids from counts and pairs); the step
around it reads manifests and pairs files and writes the lut store
(:mod:`pystitch.storage.lut`) and creates the output array, whose dtype only
the number of objects decides.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .._core import union_find, union_find_dense
from .._version import __version__
from ..errors import InputError, LabelOverflowError, StagingError
from ..manifests import block_label_count, check_digests, digest, piece, read_manifests, require_manifests
from ..plan import Plan
from ..storage.files import atomic_write_json, check_plan_hash, exists, read_json, read_npz, step_files
from ..storage.labels import LabelOutput, is_published
from ..storage.lut import LUT_CHUNK, Lut, write_lut
from ..storage.remote import is_url

log = logging.getLogger(__name__)

#: the largest id each output dtype can hold
DTYPE_LIMITS = {name: int(np.iinfo(name).max) for name in ("uint16", "uint32", "uint64")}
#: up to this many provisional ids, resolve numbers them in one array in memory
#: (4 bytes each: 2 GiB at the limit); beyond, it works on the ids in pairs only
DENSE_MAX_IDS = 1 << 29


def final_lut(n_provisional: int, pairs: np.ndarray, chunk: int = LUT_CHUNK,
              dense_max: int | None = None) -> tuple[Iterable[np.ndarray], int, int]:
    """Final ids for provisional ids ``0..n_provisional`` (0 is background).

    ``pairs`` is (M, 2) of provisional ids.  Returns ``(chunks, n_final,
    merges)`` where ``chunks`` yields the lut in consecutive pieces of
    ``chunk`` entries (uint64).

    Two shapes, chosen by size (as a lut should be): up to ``dense_max`` ids
    (default DENSE_MAX_IDS) the union-find runs directly on the provisional ids
    and numbers them in place (one array of 4 bytes per object); beyond, it
    runs on the ids that occur in pairs only and the lut is computed chunk by
    chunk, so memory follows the number of objects crossing seams.
    """
    pairs = np.asarray(pairs, dtype=np.uint64).reshape(-1, 2)
    if pairs.size and (pairs.min() == 0 or pairs.max() > n_provisional):
        raise InputError(f"Expected provisional ids in 1..{n_provisional} in the pairs.")
    dense_max = DENSE_MAX_IDS if dense_max is None else dense_max
    if n_provisional + 1 <= dense_max:
        dtype = np.uint32 if n_provisional < 2 ** 32 - 1 else np.uint64
        lut = np.arange(n_provisional + 1, dtype=dtype)
        n_final, merges = union_find_dense(np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1]),
                                           lut)
        pieces = (lut[i:i + chunk].astype(np.uint64) for i in range(0, n_provisional + 1, chunk))
        return pieces, int(n_final), int(merges)

    uniq, index = np.unique(pairs.reshape(-1), return_inverse=True)
    index = index.reshape(-1, 2)
    roots, merges = union_find(index[:, 0], index[:, 1], len(uniq))
    nonroot = roots != np.arange(len(uniq))
    nonroot_ids = uniq[nonroot]                      # sorted: they are joined to a smaller id
    # a provisional id that is a root or in no pair gets the next final id:
    # final(p) = p - #{non-root ids < p}; a non-root id takes its root's final id
    nonroot_before = np.cumsum(nonroot) - nonroot    # per index into uniq
    root_index = roots[nonroot]
    root_final = uniq[root_index] - nonroot_before[root_index].astype(np.uint64)
    n_final = int(n_provisional - len(nonroot_ids))

    def chunks() -> Iterable[np.ndarray]:
        for start in range(0, n_provisional + 1, chunk):
            stop = min(start + chunk, n_provisional + 1)
            p = np.arange(start, stop, dtype=np.uint64)
            out = p - np.searchsorted(nonroot_ids, p).astype(np.uint64)
            i0, i1 = np.searchsorted(nonroot_ids, np.array([start, stop], dtype=np.uint64))
            out[(nonroot_ids[i0:i1] - np.uint64(start)).astype(np.int64)] = root_final[i0:i1]
            yield out

    return chunks(), n_final, int(merges)


def choose_dtype(label_dtype: str, n_final: int) -> np.dtype:
    if label_dtype == "auto":
        return np.dtype(np.uint32 if n_final <= DTYPE_LIMITS["uint32"] else np.uint64)
    limit = DTYPE_LIMITS[label_dtype]
    if n_final > limit:
        raise LabelOverflowError(
            f"{n_final} objects do not fit in {label_dtype} (at most {limit}). "
            "Use --label-dtype auto (uint32, or uint64 when needed) or a larger type."
        )
    return np.dtype(label_dtype)


# --------------------------------------------------------------------------- pairs files


def read_pairs(plan: Plan, sources: Any, manifests: dict[int, dict] | None = None
               ) -> tuple[list[np.ndarray], set[int], str]:
    """Load pairs files (a directory, files, or a list of both), checked against
    the current ``manifests``.  Returns the (M, 4) arrays, the set of blocks
    they cover and a digest of their content."""
    arrays, covered = [], set()
    content = hashlib.sha256()
    for path in step_files(sources, plan.pairs_dir, "pairs-*.npz"):
        data = read_npz(path, "pairs file", ["pairs", "blocks", "plan_hash"])
        check_plan_hash(data["plan_hash"], plan.hash, path)
        if manifests is not None:
            check_digests(plan, manifests, data.get("digests"), f"The pairs file {path}", "face-pairs")
        pairs = data["pairs"]
        if pairs.ndim != 2 or pairs.shape[1] != 4 or pairs.dtype != np.uint64:
            raise StagingError(f"{path}: expected pairs as an (M, 4) uint64 array. Got {pairs.dtype} {pairs.shape}.")
        blocks = set(int(b) for b in data["blocks"])
        dup = covered & blocks
        if dup:
            raise StagingError(f"{path} repeats the pairs of block(s) {sorted(dup)[:10]} found in another file.")
        covered |= blocks
        arrays.append(pairs)
        content.update(np.ascontiguousarray(data["blocks"], np.int64).tobytes())
        content.update(np.ascontiguousarray(pairs).tobytes())
    return arrays, covered, content.hexdigest()


def resolve(plan: Plan | str | os.PathLike, *, manifests: Any = None, pairs: Any = None,
            out: str | os.PathLike | None = None) -> dict:
    """Build the lut from all manifests and pairs files; create the partial
    output array with the dtype the number of objects needs.  Returns the
    summary (also written as ``resolve.json`` next to the lut)."""
    t0 = time.perf_counter()
    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    plan.require_block_rule("resolve")
    mans = read_manifests(plan, manifests)
    require_manifests(plan, mans, range(plan.n_blocks), "resolve")
    counts = np.array([block_label_count(plan, mans, b) for b in range(plan.n_blocks)], dtype=np.uint64)
    offsets = np.zeros(plan.n_blocks + 1, dtype=np.uint64)
    np.cumsum(counts, out=offsets[1:])
    n_prov = int(offsets[-1])

    arrays, covered, pairs_digest = read_pairs(plan, pairs, mans)
    needed = {b for b in range(plan.n_blocks) if counts[b] > 0}
    missing = sorted(needed - covered)
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise StagingError(
            f"resolve needs the pairs of every non-empty block; {len(missing)} have none: {shown}. "
            "Run face-pairs for them first."
        )
    # what the lut is computed from: the segmentation of every block and every pair
    inputs = hashlib.sha256(json.dumps(
        [plan.hash, [[b, digest(mans[b])] for b in sorted(mans)], pairs_digest]).encode()).hexdigest()
    uri = str(out) if out is not None else plan.lut_uri
    done = _already_resolved(plan, uri, inputs)
    if done is not None:
        log.info("the lut of these manifests and pairs exists (%s): nothing to do", uri)
        return done

    rows = np.concatenate(arrays) if arrays else np.zeros((0, 4), np.uint64)
    prov = _provisional(plan, rows, counts, offsets)
    chunks, n_final, merges = final_lut(n_prov, prov)
    dtype = choose_dtype(plan.label_dtype, n_final)
    voxels = np.array([int((piece(mans, b, "core") or {"voxels": 0})["voxels"]) if counts[b] else 0
                       for b in range(plan.n_blocks)], np.uint64)

    attrs = {"plan_hash": plan.hash, "n_objects": n_final, "n_provisional": n_prov,
             "merges": merges, "pairs": int(len(rows)), "pystitch": __version__, "inputs": inputs}
    # the output is created here because only now is its dtype known; a new
    # output gets a new id, which apply-lut records: its results written into
    # an earlier output are never taken for this one's
    LabelOutput.create(plan.partial_output, plan.label_layout(), dtype, plan.hash)
    write_lut(uri, chunks, n_prov + 1, offsets, dtype, attrs, extra={"voxels": voxels})
    atomic_write_json(plan.output_id_path, {"plan_hash": plan.hash, "output_id": uuid.uuid4().hex,
                                            "lut_inputs": inputs})
    summary = {
        "plan_hash": plan.hash, "objects": n_final, "provisional_objects": n_prov, "merges": merges,
        "pairs": int(len(rows)), "blocks": plan.n_blocks,
        "empty_blocks": int(sum(1 for b in range(plan.n_blocks) if counts[b] == 0)),
        "planned_empty_blocks": len(plan.empty_blocks), "dtype": dtype.name,
        "seconds": round(time.perf_counter() - t0, 4),
    }
    atomic_write_json(_summary_path(plan, uri), summary)
    log.info("resolved %d provisional ids with %d pairs into %d objects (%d merges, %s)",
             n_prov, len(rows), n_final, merges, dtype.name)
    return summary


def _already_resolved(plan: Plan, uri: str, inputs: str) -> dict | None:
    """The summary of an earlier resolve of the same inputs whose output is still
    usable (being written, or already published by finalize); None otherwise."""
    try:
        lut = Lut.open(uri, plan.hash)
    except StagingError:
        return None
    if lut.attrs.get("inputs") != inputs:
        return None
    try:
        current = read_json(plan.output_id_path, "output id")
    except StagingError:
        current = None
    partial_ok = current is not None and current.get("lut_inputs") == inputs and exists(plan.partial_output)
    if not partial_ok and not is_published(plan.output, plan.hash):
        return None
    try:
        return read_json(_summary_path(plan, uri), "resolve summary")
    except StagingError:
        return {"plan_hash": plan.hash, "objects": lut.n_objects, "dtype": lut.dtype.name}


def _summary_path(plan: Plan, lut_uri: str) -> Path:
    """resolve.json: beside the lut, or in the work directory when the lut is at a URL."""
    return Path(plan.work_dir) / "resolve.json" if is_url(lut_uri) else Path(lut_uri).with_name("resolve.json")


def _provisional(plan: Plan, rows: np.ndarray, counts: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(M, 4) block/local pairs -> (M, 2) provisional ids, checked against the manifests."""
    if rows.size == 0:
        return np.zeros((0, 2), np.uint64)
    out = np.empty((len(rows), 2), np.uint64)
    for col, (bcol, lcol) in enumerate(((0, 1), (2, 3))):
        blocks, local = rows[:, bcol], rows[:, lcol]
        if blocks.max() >= plan.n_blocks:
            raise StagingError(f"A pairs file names block {int(blocks.max())}; the plan has {plan.n_blocks} blocks.")
        bad = (local == 0) | (local > counts[blocks.astype(np.int64)])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            b = int(blocks[i])
            raise StagingError(
                f"A pairs file names object {int(local[i])} of block {b}, whose manifest counts "
                f"{int(counts[b])} objects: pairs and manifests come from different runs."
            )
        out[:, col] = offsets[blocks.astype(np.int64)] + local
    return out
