"""resolve: join the pairs of all blocks into one lut of final ids.

Ids.  Block ``b``'s local id ``k`` has the provisional id ``offset[b] + k``,
where ``offset`` is the exclusive prefix sum (uint64) of the per-block object
counts in the manifests.  Pairs of provisional ids that are one object are
joined by a compiled union-find that keeps the smallest id as root, so every
object is named by its smallest provisional id whatever order pairs arrive
in.  Final ids are sequential ``1..N`` in that order.

Memory follows the number of ids that occur in pairs (objects crossing
seams), not the number of objects: the lut is computed and written in chunks.

The lut store ``lut.zarr`` holds ``lut`` (provisional id -> final id, entry 0
is background), ``offsets`` (n_blocks + 1) and the run summary; it is
written under a temporary name and renamed, so it exists only when complete.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import zarr

from ._core._unionfind import union_find_dense, union_find_min
from ._version import __version__
from .errors import InputError, LabelOverflowError, StagingError
from .output import LabelOutput
from .plan import Plan
from .staging import block_label_count, read_manifests, require_manifests
from .storage import atomic_write_json, check_plan_hash, read_npz, remove_path, step_files

log = logging.getLogger(__name__)

#: the largest id each output dtype can hold
DTYPE_LIMITS = {name: int(np.iinfo(name).max) for name in ("uint16", "uint32", "uint64")}
LUT_CHUNK = 1 << 18
#: up to this many provisional ids, resolve numbers them in one array in memory
#: (4 bytes each: 2 GiB at the limit); beyond, it works on the ids in pairs only
DENSE_MAX_IDS = 1 << 29


def union_find(left: np.ndarray, right: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """Validating wrapper of the compiled union-find over elements ``0..n-1``.

    Returns ``(roots, merges)``; ``roots[k]`` is the smallest element joined
    with ``k``.  Read-only and any integer dtype inputs are accepted.
    """
    left = np.ascontiguousarray(left, dtype=np.int64)
    right = np.ascontiguousarray(right, dtype=np.int64)
    if left.shape != right.shape or left.ndim != 1:
        raise InputError(f"Expected two 1-D index arrays of equal length. Got shapes {left.shape} and {right.shape}.")
    if left.size and (min(left.min(), right.min()) < 0 or max(left.max(), right.max()) >= n):
        raise InputError(f"Expected indices in [0, {n}). Got values outside that range.")
    return union_find_min(left, right, int(n))


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


def read_pairs(plan: Plan, sources: Any) -> tuple[list[np.ndarray], set[int]]:
    """Load pairs files (a directory, files, or a list of both).  Returns the
    (M, 4) arrays and the set of blocks they cover."""
    arrays, covered = [], set()
    for path in step_files(sources, plan.pairs_dir, "pairs-*.npz"):
        data = read_npz(path, "pairs file", ["pairs", "blocks", "plan_hash"])
        check_plan_hash(data["plan_hash"], plan.hash, path)
        pairs = data["pairs"]
        if pairs.ndim != 2 or pairs.shape[1] != 4 or pairs.dtype != np.uint64:
            raise StagingError(f"{path}: expected pairs as an (M, 4) uint64 array. Got {pairs.dtype} {pairs.shape}.")
        blocks = set(int(b) for b in data["blocks"])
        dup = covered & blocks
        if dup:
            raise StagingError(f"{path} repeats the pairs of block(s) {sorted(dup)[:10]} found in another file.")
        covered |= blocks
        arrays.append(pairs)
    return arrays, covered


# --------------------------------------------------------------------------- lut store


class Lut:
    """Read access to a finished lut store (what apply-lut and finalize use)."""

    def __init__(self, plan: Plan, group: zarr.Group, uri: str) -> None:
        self.plan = plan
        self.group = group
        self.uri = uri
        self.lut = group["lut"]
        self.offsets = group["offsets"][:]  # one entry per block: read once, not per block
        self.attrs = dict(group.attrs)
        self.dtype = np.dtype(self.attrs["dtype"])
        self._chunks: dict[int, np.ndarray] = {}

    @classmethod
    def open(cls, plan: Plan, uri: str | os.PathLike | None = None) -> "Lut":
        uri = str(uri) if uri is not None else plan.lut_uri
        try:
            group = zarr.open_group(store=uri, mode="r")
            check_plan_hash(group.attrs.get("plan_hash"), plan.hash, uri)
            group["lut"], group["offsets"], group.attrs["dtype"]
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError) as exc:
            raise StagingError(f"lut store {uri} is missing or incomplete (run resolve first): {exc}") from exc
        return cls(plan, group, uri)

    @property
    def n_objects(self) -> int:
        return int(self.attrs["n_objects"])

    def block_range(self, block: int) -> tuple[int, int]:
        lo, hi = int(self.offsets[block]), int(self.offsets[block + 1])
        return lo, hi - lo

    def read(self, start: int, stop: int) -> np.ndarray:
        """``lut[start:stop]``.  The lut chunks it touches are kept: the blocks of
        a task are consecutive, so their slices share chunks."""
        size = self.lut.chunks[0]
        parts = []
        for c in range(start // size, (stop - 1) // size + 1 if stop > start else start // size):
            if c not in self._chunks:
                if len(self._chunks) >= 4:
                    self._chunks.pop(next(iter(self._chunks)))
                self._chunks[c] = self.lut[c * size:(c + 1) * size]
            lo, hi = max(start, c * size) - c * size, min(stop, (c + 1) * size) - c * size
            parts.append(self._chunks[c][lo:hi])
        return np.concatenate(parts) if parts else np.zeros(0, self.dtype)



def resolve(plan: Plan | str | os.PathLike, *, manifests: Any = None, pairs: Any = None,
            out: str | os.PathLike | None = None) -> dict:
    """Build the lut from all manifests and pairs files; create the partial
    output array with the dtype the number of objects needs.  Returns the
    summary (also written as ``resolve.json`` next to the lut)."""
    t0 = time.perf_counter()
    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    mans = read_manifests(plan, manifests)
    require_manifests(plan, mans, range(plan.n_blocks), "resolve")
    counts = np.array([block_label_count(plan, mans, b) for b in range(plan.n_blocks)], dtype=np.uint64)
    offsets = np.zeros(plan.n_blocks + 1, dtype=np.uint64)
    np.cumsum(counts, out=offsets[1:])
    n_prov = int(offsets[-1])

    arrays, covered = read_pairs(plan, pairs)
    needed = {b for b in range(plan.n_blocks) if counts[b] > 0}
    missing = sorted(needed - covered)
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise StagingError(
            f"resolve needs the pairs of every non-empty block; {len(missing)} have none: {shown}. "
            "Run face-pairs for them first."
        )
    rows = np.concatenate(arrays) if arrays else np.zeros((0, 4), np.uint64)
    prov = _provisional(plan, rows, counts, offsets)
    chunks, n_final, merges = final_lut(n_prov, prov)
    dtype = choose_dtype(plan.label_dtype, n_final)

    uri = str(out) if out is not None else plan.lut_uri
    tmp = f"{uri.rstrip('/')}.incomplete"
    remove_path(tmp)
    attrs = {"plan_hash": plan.hash, "dtype": dtype.name, "n_objects": n_final, "n_provisional": n_prov,
             "merges": merges, "pairs": int(len(rows)), "pystitch": __version__}
    group = zarr.open_group(store=tmp, mode="w", attributes=attrs)
    lut = group.create_array(name="lut", shape=(n_prov + 1,), chunks=(LUT_CHUNK,), dtype=dtype, fill_value=0)
    pos = 0
    for piece in chunks:
        lut[pos:pos + len(piece)] = piece.astype(dtype)
        pos += len(piece)
    group.create_array(name="offsets", shape=offsets.shape, chunks=(max(1, len(offsets)),), dtype=np.uint64,
                       fill_value=0)[:] = offsets

    # the output is created here because only now is its dtype known
    LabelOutput.create(plan, dtype)
    remove_path(uri)
    os.replace(tmp, uri)
    summary = {
        "plan_hash": plan.hash, "objects": n_final, "provisional_objects": n_prov, "merges": merges,
        "pairs": int(len(rows)), "blocks": plan.n_blocks,
        "empty_blocks": int(sum(1 for b in range(plan.n_blocks) if counts[b] == 0)),
        "planned_empty_blocks": len(plan.empty_blocks), "dtype": dtype.name,
        "seconds": round(time.perf_counter() - t0, 4),
    }
    atomic_write_json(Path(uri).with_name("resolve.json"), summary)
    log.info("resolved %d provisional ids with %d pairs into %d objects (%d merges, %s)",
             n_prov, len(rows), n_final, merges, dtype.name)
    return summary


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
