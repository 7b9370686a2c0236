"""face-pairs: which objects of neighbouring blocks are one object.

Two neighbouring blocks (all ``3**ndim - 1`` around a block, each unordered
pair once) both predicted the voxels where their frames overlap: ``2*halo``
thick across the shared face, and the intersection of the frames elsewhere.
Their predictions on those SAME voxels are compared through a contingency
table (compiled) of (label in block A, label in block B, voxel count):

``exact``
    every pair of core objects that share a voxel is one object.  For local
    operators (threshold + connected components) both blocks label shared
    voxels identically up to renaming, and this reproduces the whole-image
    result exactly.
``match``
    one-to-one matching for instance segmenters: a pair is joined only if
    each is the other's best match by IoU within the overlap and that IoU is
    at least ``min_iou``.  Objects seen only in a halo take part in the
    competition (so a core object does not match a neighbour's second
    choice) but only core objects are joined.  Touching distinct objects
    stay distinct.

Output: ``pairs-<first>-<last>.npz`` with ``pairs`` (M, 4) uint64 rows
``(block_a, local_a, block_b, local_b)``, their ``overlap`` voxel counts and
``iou``, and the list of ``blocks`` whose pairs it holds.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .._core import contingency
from ..errors import InputError
from ..grid import BlockGrid, SlabKey, parse_block_ids
from ..manifests import block_label_count, digest, piece, read_manifests, require_manifests
from ..plan import Plan
from ..progress import advance
from ..storage.files import atomic_write_npz
from ..storage.staging import Staging, slab_name

log = logging.getLogger(__name__)


def pair_iou(la: np.ndarray, lb: np.ndarray, count: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of each contingency row within the overlap whose labels are ``a`` and ``b``."""
    size_a = np.bincount(a.ravel(), minlength=int(la.max(initial=0)) + 1).astype(np.float64)
    size_b = np.bincount(b.ravel(), minlength=int(lb.max(initial=0)) + 1).astype(np.float64)
    inter = count.astype(np.float64)
    return inter / (size_a[la.astype(np.int64)] + size_b[lb.astype(np.int64)] - inter)


def match_pairs(la: np.ndarray, lb: np.ndarray, iou: np.ndarray, min_iou: float) -> np.ndarray:
    """Mutual best matches by IoU with IoU >= ``min_iou``: a boolean mask over
    the contingency rows.  Ties go to the smaller label, deterministically."""
    if len(la) == 0:
        return np.zeros(0, bool)
    la64, lb64 = la.astype(np.int64), lb.astype(np.int64)
    # best partner of each a: sort by a, then IoU descending, then b ascending
    order_a = np.lexsort((lb64, -iou, la64))
    first_a = order_a[np.r_[True, la64[order_a][1:] != la64[order_a][:-1]]]
    order_b = np.lexsort((la64, -iou, lb64))
    first_b = order_b[np.r_[True, lb64[order_b][1:] != lb64[order_b][:-1]]]
    best_a = np.zeros(len(la), bool)
    best_a[first_a] = True
    best_b = np.zeros(len(la), bool)
    best_b[first_b] = True
    return best_a & best_b & (iou >= min_iou)


class _SlabCache:
    """Face slabs of the blocks a batch touches, read once per task while they
    may still be needed (bounded: memory must not grow with the batch)."""

    def __init__(self, staging: Staging, manifests: dict[int, dict], capacity: int = 256) -> None:
        self.staging = staging
        self.manifests = manifests
        self.capacity = capacity
        self.cache: dict[SlabKey, np.ndarray] = {}

    def _expected(self, key: SlabKey) -> dict | None:
        block, axis, side = key
        return piece(self.manifests, block, slab_name(axis, side))

    def prefetch(self, keys: Iterable[SlabKey]) -> None:
        """Read the missing ones of ``keys`` concurrently (each checked against its manifest)."""
        missing = list(dict.fromkeys(k for k in keys if k not in self.cache))
        for key, slab in zip(missing, self.staging.read_slabs(missing, [self._expected(k) for k in missing])):
            self._put(key, slab)

    def _put(self, key: SlabKey, slab: np.ndarray) -> None:
        if len(self.cache) >= self.capacity:
            del self.cache[next(iter(self.cache))]
        self.cache[key] = slab

    def get(self, block: int, axis: int, side: str) -> np.ndarray:
        key = (block, axis, side)
        if key not in self.cache:
            self._put(key, self.staging.read_slab(block, axis, side, self._expected(key)))
        return self.cache[key]

    def forget_up_to(self, block: int) -> None:
        """Blocks are visited in increasing order and pair only with larger ids."""
        self.cache = {k: v for k, v in self.cache.items() if k[0] > block}


def pair_labels(a: np.ndarray, b: np.ndarray, n_a: int, n_b: int, rule: str, min_iou: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The pure core: joined ``(label_a, label_b)`` pairs of two predictions of
    the SAME voxels, with their overlap counts and IoU.

    ``a`` and ``b`` hold local ids; ids above ``n_a`` (``n_b``) are objects
    seen only in that block's halo: they compete for matches but are never
    joined (only objects present in a core have ids).

    >>> a = np.array([[1, 1, 0], [2, 2, 0]], np.uint32)
    >>> b = np.array([[3, 3, 0], [3, 4, 4]], np.uint32)
    >>> la, lb, count, iou = pair_labels(a, b, 2, 4, "match", 0.2)
    >>> la.tolist(), lb.tolist(), count.tolist()
    ([1, 2], [3, 4], [2, 1])
    """
    la, lb, count = contingency(a, b)
    if rule == "none":  # no stitching: every block keeps its own ids (for inspection and QC controls)
        keep = np.zeros(len(la), bool)
        iou = np.zeros(len(la), np.float32)
    elif rule == "exact":
        keep = np.ones(len(la), bool)
        iou = np.ones(len(la), np.float32)
    else:
        iou64 = pair_iou(la, lb, count, a, b)
        keep = match_pairs(la, lb, iou64, min_iou)
        iou = iou64.astype(np.float32)
    keep &= (la <= n_a) & (lb <= n_b)
    return la[keep], lb[keep], count[keep], iou[keep]


def pair_blocks(plan: Plan, slabs: "_SlabCache", a: int, b: int, delta: tuple[int, ...], n_a: int, n_b: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Joined (local_a, local_b) pairs of two neighbouring blocks with their
    overlap counts and IoU."""
    grid = plan.grid
    region = grid.overlap(a, b)
    views = [slabs.get(*key)[grid.overlap_in_slab(key, region)] for key in grid.slab_keys(a, b, delta)]
    return pair_labels(views[0], views[1], n_a, n_b, plan.rule, plan.min_iou)


def pairs_name(ids: list[int]) -> str:
    return f"pairs-{ids[0]:06d}-{ids[-1]:06d}.npz"


def face_pairs(plan: Plan | str | os.PathLike, blocks: Any, *, manifests: Any = None,
               out: str | os.PathLike | None = None) -> Path:
    """Compute the pairs of ``blocks`` with their forward neighbours; write one
    ``.npz`` for the batch and return its path."""
    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    plan.require_block_rule("face-pairs")
    ids = parse_block_ids(blocks, plan.n_blocks)
    if not ids:
        raise InputError("Expected at least one block id.")
    needed = set(ids)
    for a in ids:
        needed.update(nb for nb, _ in plan.grid.neighbours(a, forward_only=True))
    mans = read_manifests(plan, manifests, blocks=needed)   # only the batch's: not every block's of the image
    require_manifests(plan, mans, sorted(needed), "face-pairs")
    staging = Staging(plan.staging_uri, plan.grid, plan.hash)
    slabs = _SlabCache(staging, mans)
    out_rows, out_count, out_iou = [], [], []
    read_from: set[int] = set()
    for a in ids:
        n_a = block_label_count(plan, mans, a)
        if n_a == 0:
            advance("face-pairs")
            continue
        todo = [(b, delta, block_label_count(plan, mans, b))
                for b, delta in plan.grid.neighbours(a, forward_only=True)]
        todo = [t for t in todo if t[2]]
        slabs.prefetch(key for b, delta, _ in todo for key in BlockGrid.slab_keys(a, b, delta))
        read_from.update([a, *(b for b, _, _ in todo)] if todo else [])
        for b, delta, n_b in todo:
            la, lb, count, iou = pair_blocks(plan, slabs, a, b, delta, n_a, n_b)
            rows = np.empty((len(la), 4), np.uint64)
            rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3] = a, la, b, lb
            out_rows.append(rows)
            out_count.append(count)
            out_iou.append(iou)
        slabs.forget_up_to(a)
        advance("face-pairs")
    pairs = np.concatenate(out_rows) if out_rows else np.zeros((0, 4), np.uint64)
    path = Path(out) if out is not None else plan.pairs_dir / pairs_name(ids)
    if path.suffix != ".npz":  # a directory (created if needed)
        path = path / pairs_name(ids)
    atomic_write_npz(path, {
        "pairs": pairs,
        "overlap": np.concatenate(out_count) if out_count else np.zeros(0, np.uint64),
        "iou": np.concatenate(out_iou) if out_iou else np.zeros(0, np.float32),
        "blocks": np.asarray(ids, np.int64),
        # the segmentation the pairs come from: (block, manifest digest) of every block read
        "digests": np.array([[b, digest(mans[b])] for b in sorted(read_from)], np.uint64).reshape(-1, 2),
        "plan_hash": np.asarray(plan.hash),
        "rule": np.asarray(plan.rule),
    })
    log.info("found %d pairs for %d block(s) %d..%d (%s rule) -> %s", len(pairs), len(ids), ids[0], ids[-1],
             plan.rule, path)
    return path
