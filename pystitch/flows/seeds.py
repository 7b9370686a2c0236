"""Seeds: where trajectories converge, found in the global histogram of end points.

Cellpose counts end points per voxel (the histogram ``h``), takes as seeds the
voxels with ``h > 10`` that equal the maximum of ``h`` over their 5^n box,
ranks them by ``torch.argsort`` of their counts (ascending), and grows each
seed 5 times by its 3^n neighbourhood into voxels with ``h > 2``; a voxel two
seeds reach belongs to the higher-ranked one, and a voxel's label is that of
the region its end point falls in (0 when none).  Every step here is that
rule on a *sparse* histogram (sorted global flat indices and counts), so it
runs on any part of the image whose histogram is complete:

* seed detection at a voxel needs ``h`` within 2 voxels of it, the growth of a
  seed ``h`` within 5: a region of the image can be processed from the
  histogram of the region grown by 5 voxels (:func:`find_seeds` with
  ``region``, :func:`grow_seeds`);
* ranking needs the counts of *all* seeds, in the C order of their positions
  (that is the array cellpose sorts, and ``argsort`` of int32 counts is not
  stable, so ties are broken as the installed torch breaks them):
  :func:`rank_seeds` is the one global step, on ``12 * n_seeds`` bytes;
* the label of a histogram voxel is the highest rank among the seeds whose
  growth reaches it (:func:`region_map`), a max-reduction that merges pieces
  in any order.

Data crossing task boundaries: histogram pieces (16 bytes per distinct end
point), seeds (position int64 + count: 16 bytes each), grown regions (one
int64 per voxel of each seed's region, typically tens per seed) and the
region map (16 bytes per entry).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from ..errors import InputError

__all__ = [
    "Histogram",
    "Seeds",
    "find_seeds",
    "grow_seeds",
    "merge_histograms",
    "rank_seeds",
    "region_map",
]

#: cellpose's constants: a seed has more than SEED_MIN end points and is the
#: maximum of its MAX_BOX^n box; it grows GROW_STEPS times into voxels with
#: more than GROW_MIN end points
SEED_MIN = 10
MAX_BOX = 5
GROW_STEPS = 5
GROW_MIN = 2


@dataclasses.dataclass(frozen=True)
class Histogram:
    """A sparse histogram of end points: sorted unique global flat indices and counts."""

    positions: np.ndarray
    counts: np.ndarray

    def __post_init__(self) -> None:
        if self.positions.shape != self.counts.shape or self.positions.ndim != 1:
            raise InputError(
                f"Expected positions and counts of one shape (n,). Got {self.positions.shape} and "
                f"{self.counts.shape} instead."
            )

    def lookup(self, flat: np.ndarray) -> np.ndarray:
        """Counts at global flat indices ``flat`` (0 where no end point fell)."""
        flat = np.asarray(flat, np.int64)
        if self.positions.size == 0:
            return np.zeros(flat.shape, np.int64)
        i = np.searchsorted(self.positions, flat)
        i = np.minimum(i, self.positions.size - 1)
        return np.where(self.positions[i] == flat, self.counts[i], 0)


def merge_histograms(pieces: Iterable[tuple[np.ndarray, np.ndarray]]) -> Histogram:
    """Sum histogram pieces ``(positions, counts)`` (any order, overlapping allowed)."""
    pos_list, cnt_list = [], []
    for positions, counts in pieces:
        pos_list.append(np.asarray(positions, np.int64))
        cnt_list.append(np.asarray(counts, np.int64))
    if not pos_list:
        return Histogram(np.zeros(0, np.int64), np.zeros(0, np.int64))
    positions = np.concatenate(pos_list)
    counts = np.concatenate(cnt_list)
    unique, inverse = np.unique(positions, return_inverse=True)
    summed = np.bincount(inverse.ravel(), weights=counts, minlength=unique.size).astype(np.int64)
    return Histogram(unique, summed)


@dataclasses.dataclass(frozen=True)
class Seeds:
    """Seeds in the C order of their positions: global flat index and end-point count."""

    positions: np.ndarray
    counts: np.ndarray


def find_seeds(hist: Histogram, shape: Sequence[int],
               region: tuple[Sequence[int], Sequence[int]] | None = None) -> Seeds:
    """Cellpose's seeds: ``h > 10`` and ``h`` equal to the max of its 5^n box.

    With ``region=(lo, hi)``, only seeds inside that box are returned; ``hist``
    must then be complete within 2 voxels of it.
    """
    shape = tuple(int(s) for s in shape)
    candidates = hist.positions[hist.counts > SEED_MIN]
    counts = hist.counts[hist.counts > SEED_MIN]
    if region is not None and candidates.size:
        inside = _inside(candidates, shape, region)
        candidates, counts = candidates[inside], counts[inside]
    if candidates.size == 0:
        return Seeds(np.zeros(0, np.int64), np.zeros(0, np.int64))
    coords = np.stack(np.unravel_index(candidates, shape)).astype(np.int64)
    is_max = np.ones(candidates.size, bool)
    half = MAX_BOX // 2
    for offset in _box_offsets(len(shape), half):
        if not any(offset):
            continue
        neighbour = coords + np.asarray(offset, np.int64)[:, None]
        valid = np.all((neighbour >= 0) & (neighbour < np.asarray(shape)[:, None]), axis=0)
        value = np.zeros(candidates.size, np.int64)
        if valid.any():
            value[valid] = hist.lookup(np.ravel_multi_index(tuple(neighbour[:, valid]), shape))
        is_max &= counts >= value
    return Seeds(candidates[is_max], counts[is_max])


def rank_seeds(seeds: Seeds, argsort: str = "torch") -> np.ndarray:
    """Cellpose's label of each seed: 1 + its place in ``argsort(counts)``.

    ``seeds`` must be *all* the image's seeds in the C order of their
    positions.  ``argsort="torch"`` sorts the int32 counts with torch, exactly
    as cellpose does (its CPU sort is not stable for some lengths: ties come
    out in torch's order); ``"stable"`` breaks ties by position (numpy).
    """
    counts = np.asarray(seeds.counts)
    if counts.size and np.any(np.diff(seeds.positions) <= 0):
        raise InputError("Expected seeds sorted by position without duplicates (merge the pieces first).")
    if argsort == "torch":
        import torch

        order = torch.from_numpy(counts.astype(np.int32)).argsort().numpy()
    elif argsort == "stable":
        order = np.argsort(counts, kind="stable")
    else:
        raise InputError(f"Expected argsort 'torch' or 'stable'. Got {argsort!r} instead.")
    labels = np.empty(counts.size, np.int64)
    labels[order] = np.arange(1, counts.size + 1, dtype=np.int64)
    return labels


def grow_seeds(hist: Histogram, seeds: Seeds, shape: Sequence[int],
               batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """The region each seed grows into: ``(seed_index, position)`` pairs, int64.

    5 steps of growth by the 3^n neighbourhood, each restricted to histogram
    voxels with more than 2 end points (cellpose's 11^n window around the
    seed, which 5 steps never leave).  ``hist`` must be complete within 5
    voxels of every seed.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    reach = GROW_STEPS
    width = 2 * reach + 1
    offsets = np.asarray(list(_box_offsets(ndim, reach)), np.int64).T  # (ndim, width**ndim), C order
    structure = np.zeros((3,) + (3,) * ndim, bool)
    structure[1] = True
    seed_index: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    for start in range(0, seeds.positions.size, batch):
        stop = min(seeds.positions.size, start + batch)
        coords = np.stack(np.unravel_index(seeds.positions[start:stop], shape)).astype(np.int64)
        around = coords[:, :, None] + offsets[:, None, :]  # (ndim, m, width**ndim)
        valid = np.all((around >= 0) & (around < np.asarray(shape)[:, None, None]), axis=0)
        flat = np.full(valid.shape, -1, np.int64)
        flat[valid] = np.ravel_multi_index(tuple(a[valid] for a in around), shape)
        allowed = np.zeros(valid.shape, bool)
        allowed[valid] = hist.lookup(flat[valid]) > GROW_MIN
        m = stop - start
        grown = np.zeros((m,) + (width,) * ndim, bool)
        grown[(slice(None),) + (reach,) * ndim] = True
        grown = ndimage.binary_dilation(grown, structure=structure, iterations=GROW_STEPS,
                                        mask=allowed.reshape(grown.shape))
        which, where = np.nonzero(grown.reshape(m, -1))
        seed_index.append(which.astype(np.int64) + start)
        positions.append(flat[which, where])
    if not positions:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(seed_index), np.concatenate(positions)


def region_map(pieces: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Merge ``(positions, labels)`` pieces: each position keeps its highest label.

    Returns sorted unique positions and their labels (int64).
    """
    pieces = list(pieces)
    if not pieces:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    positions = np.concatenate([np.asarray(p, np.int64) for p, _ in pieces])
    labels = np.concatenate([np.asarray(l, np.int64) for _, l in pieces])
    order = np.lexsort((labels, positions))
    positions, labels = positions[order], labels[order]
    last = np.ones(positions.size, bool)
    last[:-1] = positions[1:] != positions[:-1]
    return positions[last], labels[last]


# ---------------------------------------------------------------- helpers


def _box_offsets(ndim: int, half: int) -> Iterable[tuple[int, ...]]:
    """Offsets of the (2 half + 1)^ndim box in C order."""
    grids = np.meshgrid(*([np.arange(-half, half + 1)] * ndim), indexing="ij")
    return [tuple(int(g.flat[i]) for g in grids) for i in range(grids[0].size)]


def _inside(flat: np.ndarray, shape: tuple[int, ...], region: tuple[Sequence[int], Sequence[int]]) -> np.ndarray:
    lo, hi = region
    coords = np.unravel_index(flat, shape)
    inside = np.ones(flat.size, bool)
    for c, a, b in zip(coords, lo, hi):
        inside &= (c >= int(a)) & (c < int(b))
    return inside
