"""Assign: label every foreground voxel by the seed region its end point falls in.

Per block core: the follow step's ``ends`` (global flat index of each
foreground voxel's end point, C order of those voxels) are looked up in the
merged region map (:func:`pystitch.flows.seeds.region_map`); the result is the
block's *seed labels* (cellpose's labels before its ``fastremap.renumber``).
Only the region-map entries within the block grown by the follow halo can be
hit, so a task needs only that part of the map.

The mask filters need per-object numbers that are sums over blocks:
:func:`object_stats` returns, for every label of a block, its voxel count,
the smallest and largest global flat index of its voxels (its *first voxel*:
cellpose numbers masks in that order) and its bounding box; :func:`merge_object_stats`
combines blocks in any order.  48 bytes + 16 per axis per object and block.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import InputError

__all__ = [
    "ObjectStats",
    "assign_ends",
    "block_labels",
    "merge_object_stats",
    "object_stats",
]


def assign_ends(ends: np.ndarray, map_positions: np.ndarray, map_labels: np.ndarray) -> np.ndarray:
    """The label of each end point (0 where no seed region covers it), int64."""
    ends = np.asarray(ends, np.int64)
    out = np.zeros(ends.shape, np.int64)
    if map_positions.size == 0 or ends.size == 0:
        return out
    i = np.searchsorted(map_positions, ends)
    i = np.minimum(i, map_positions.size - 1)
    hit = map_positions[i] == ends
    out[hit] = map_labels[i[hit]]
    return out


def block_labels(foreground: np.ndarray, labels: np.ndarray, dtype: type = np.int64) -> np.ndarray:
    """The core's label image: ``labels`` placed at the foreground voxels, in C order."""
    foreground = np.asarray(foreground, bool)
    if int(foreground.sum()) != labels.size:
        raise InputError(
            f"Expected one label per foreground voxel ({int(foreground.sum())}). Got {labels.size} instead."
        )
    out = np.zeros(foreground.shape, dtype)
    out[foreground] = labels
    return out


@dataclasses.dataclass(frozen=True)
class ObjectStats:
    """Per-object sums: sorted ``labels``; ``count``; ``first`` and ``last``
    (smallest and largest global flat index); bounding box ``lo`` (ndim, n)
    inclusive and ``hi`` exclusive."""

    labels: np.ndarray
    count: np.ndarray
    first: np.ndarray
    last: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def take(self, index: np.ndarray) -> "ObjectStats":
        return ObjectStats(self.labels[index], self.count[index], self.first[index], self.last[index],
                           self.lo[:, index], self.hi[:, index])

    def row(self, label: int) -> int:
        i = int(np.searchsorted(self.labels, label))
        if i >= self.labels.size or self.labels[i] != label:
            raise KeyError(label)
        return i


def object_stats(labels: np.ndarray, lo: Sequence[int], shape: Sequence[int]) -> ObjectStats:
    """Stats of the nonzero labels of a block whose first voxel is at global ``lo``."""
    labels = np.asarray(labels)
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if labels.ndim != ndim:
        raise InputError(f"Expected a {ndim}-D block. Got {labels.ndim} dimensions instead.")
    where = np.nonzero(labels.ravel())[0]
    values = labels.ravel()[where].astype(np.int64)
    if values.size == 0:
        return _empty(ndim)
    coords = np.stack(np.unravel_index(where, labels.shape)).astype(np.int64) + np.asarray(lo, np.int64)[:, None]
    flat = np.ravel_multi_index(tuple(coords), shape).astype(np.int64)
    uniq, inverse = np.unique(values, return_inverse=True)
    n = uniq.size
    count = np.bincount(inverse, minlength=n).astype(np.int64)
    first = np.full(n, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, inverse, flat)
    last = np.full(n, -1, np.int64)
    np.maximum.at(last, inverse, flat)
    box_lo = np.full((ndim, n), np.iinfo(np.int64).max, np.int64)
    box_hi = np.full((ndim, n), np.iinfo(np.int64).min, np.int64)
    for a in range(ndim):
        np.minimum.at(box_lo[a], inverse, coords[a])
        np.maximum.at(box_hi[a], inverse, coords[a] + 1)
    return ObjectStats(uniq, count, first, last, box_lo, box_hi)


def merge_object_stats(pieces: Iterable[ObjectStats], ndim: int) -> ObjectStats:
    """Combine per-block stats (any order): counts add, first/last and boxes take min/max."""
    pieces = [p for p in pieces if p.labels.size]
    if not pieces:
        return _empty(ndim)
    labels = np.concatenate([p.labels for p in pieces])
    uniq, inverse = np.unique(labels, return_inverse=True)
    n = uniq.size
    count = np.bincount(inverse, weights=np.concatenate([p.count for p in pieces]), minlength=n).astype(np.int64)
    first = np.full(n, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, inverse, np.concatenate([p.first for p in pieces]))
    last = np.full(n, -1, np.int64)
    np.maximum.at(last, inverse, np.concatenate([p.last for p in pieces]))
    lo = np.full((ndim, n), np.iinfo(np.int64).max, np.int64)
    hi = np.full((ndim, n), np.iinfo(np.int64).min, np.int64)
    all_lo = np.concatenate([p.lo for p in pieces], axis=1)
    all_hi = np.concatenate([p.hi for p in pieces], axis=1)
    for a in range(ndim):
        np.minimum.at(lo[a], inverse, all_lo[a])
        np.maximum.at(hi[a], inverse, all_hi[a])
    return ObjectStats(uniq, count, first, last, lo, hi)


def _empty(ndim: int) -> ObjectStats:
    empty = np.zeros(0, np.int64)
    return ObjectStats(empty, empty, empty, empty, np.zeros((ndim, 0), np.int64), np.zeros((ndim, 0), np.int64))
