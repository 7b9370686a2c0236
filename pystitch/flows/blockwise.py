"""The whole ``flows`` computation over a block grid, in memory: the reference
composition of the cores that the pipeline runs as separate tasks.

Tasks and what each needs and hands on (``n`` foreground voxels of a block):

1. follow (per block): flows + cell probability of core + halo -> ``ends``
   (8 n bytes) and a histogram piece (16 bytes per distinct end point);
2. seeds (per region = block): histogram pieces of the blocks whose halo
   reaches the region grown by 7 voxels -> the region's seeds (16 bytes each);
3. rank (global, once): all seeds -> their labels (cellpose's sort);
4. grow (per region): the region's seeds, labels and histogram -> region-map
   pieces (16 bytes per entry);
5. assign (per block): ``ends`` + region-map entries within the halo -> seed
   labels of the core (staged) and per-object stats (48 + 16 ndim bytes);
6. resolve (global, once): merged stats + crops of single objects (their
   bounding boxes of seed labels, and of flows in 2-D) -> the final table and
   filled-hole voxels;
7. apply (per block): seed labels -> final ids.

Blocks are processed in any order (``order``) with identical results.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from .assign import assign_ends, block_labels, merge_object_stats, object_stats
from .dynamics import Dynamics
from .filters import Resolution, resolve_masks
from .follow import FollowedBlock, endpoint_histogram, follow_block
from .seeds import GROW_STEPS, MAX_BOX, Histogram, Seeds, find_seeds, grow_seeds, merge_histograms, rank_seeds, region_map

__all__ = ["BlockwiseReport", "block_grid", "masks_blockwise"]

#: a region's seeds and their growth need the histogram this far around it
SEED_MARGIN = GROW_STEPS + MAX_BOX // 2


def block_grid(shape: Sequence[int], block: Sequence[int],
               offset: Sequence[int] | None = None) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Cores ``(lo, hi)`` of a regular grid of ``block``, C order.

    Grid lines lie at ``offset + k * block`` (``offset`` per axis in
    ``[0, block)``, default 0): the first and last cores of an axis are
    clipped to the image.
    """
    shape = tuple(int(s) for s in shape)
    block = tuple(int(b) for b in block)
    if len(block) != len(shape) or any(b < 1 for b in block):
        raise InputError(f"Expected a block shape of {len(shape)} positive sizes. Got {block} instead.")
    offset = (0,) * len(shape) if offset is None else tuple(int(o) % b for o, b in zip(offset, block))
    edges = []
    for s, b, o in zip(shape, block, offset):
        cuts = [c for c in range(o, s, b) if c > 0]
        edges.append([0, *cuts, s])
    grid = []
    for index in np.ndindex(*[len(e) - 1 for e in edges]):
        lo = tuple(edges[a][i] for a, i in enumerate(index))
        hi = tuple(edges[a][i + 1] for a, i in enumerate(index))
        grid.append((lo, hi))
    return grid


@dataclasses.dataclass(frozen=True)
class BlockwiseReport:
    """What the run measured: the halo the trajectories needed (``reach``, per
    axis), trajectories followed again in a larger window, sizes of what
    crossed task boundaries."""

    reach: tuple[int, ...]
    n_escaped: int
    n_foreground: int
    n_histogram_entries: int
    n_seeds: int
    n_region_entries: int
    n_objects: int
    removed: dict


def masks_blockwise(dP: np.ndarray, cellprob: np.ndarray, block: Sequence[int], dynamics: Dynamics, *,
                    halo: Sequence[int], niter: int = 200, cellprob_threshold: float = 0.0,
                    flow_threshold: float | None = 0.4, min_size: int = 15, max_size_fraction: float = 0.4,
                    do_3D: bool | None = None, order: Sequence[int] | None = None,
                    offset: Sequence[int] | None = None, argsort: str = "torch",
                    threads: int = 1, sink: Callable[[tuple[int, ...], tuple[int, ...], np.ndarray], None] | None = None,
                    staged: Any = None, ends_dir: str | os.PathLike | None = None
                    ) -> tuple[np.ndarray | None, BlockwiseReport, Resolution]:
    """Cellpose's masks from ``dP`` and ``cellprob`` computed block by block.

    Equal to ``cellpose.dynamics.resize_and_compute_masks`` on the whole arrays
    (up to the numbering when ``min_size <= 0``: ids here are always 1..n by
    first voxel).  ``order`` permutes the blocks of every per-block step;
    ``offset`` shifts the grid (see :func:`block_grid`).

    ``dP`` and ``cellprob`` may be any arrays that slice into numpy (zarr):
    they are read box by box, never whole.  ``sink(lo, hi, labels)``: takes
    each block's final labels instead of the returned array (then None).
    ``staged``: where the seed labels wait between assign and apply, an int64
    array of the image's shape that slices like numpy (a zarr array chunked
    like the blocks keeps them out of memory); default a numpy array.
    ``ends_dir``: an existing directory where each block's end points wait
    between follow and assign (``ends-<block>.npy``, read back memory-mapped)
    instead of in memory.
    """
    cellprob = cellprob if _sliceable(cellprob) else np.asarray(cellprob)
    shape = tuple(cellprob.shape)
    ndim = len(shape)
    if do_3D is None:
        do_3D = ndim == 3
    dP = dP if _sliceable(dP) else np.asarray(dP)
    if tuple(dP.shape) != (ndim, *shape):
        raise InputError(f"Expected flows of shape {(ndim, *shape)}. Got {dP.shape} instead.")
    grid = block_grid(shape, block, offset)
    order = list(range(len(grid))) if order is None else [int(i) for i in order]
    if sorted(order) != list(range(len(grid))):
        raise InputError(f"Expected order to be a permutation of the {len(grid)} blocks.")

    def read(lo: tuple[int, ...], hi: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        return dP[(slice(None),) + box], cellprob[box]

    # 1. follow
    followed: dict[int, FollowedBlock] = {}
    pieces: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    n_foreground: dict[int, int] = {}
    for b in order:
        lo, hi = grid[b]
        followed[b] = follow_block(read, lo, hi, shape, niter, cellprob_threshold, dynamics, halo, threads)
        pieces[b] = endpoint_histogram(followed[b].ends)
        n_foreground[b] = int(followed[b].ends.size)
        if ends_dir is not None:
            np.save(_ends_path(ends_dir, b), followed[b].ends, allow_pickle=False)
            followed[b] = dataclasses.replace(followed[b], ends=np.empty(0, np.int64))

    # 2. seeds per region, from the pieces that reach it
    region_hist: dict[int, Histogram] = {}
    region_seeds: dict[int, Seeds] = {}
    for r in order:
        lo, hi = grid[r]
        grown = (tuple(max(0, a - SEED_MARGIN) for a in lo), tuple(min(s, b + SEED_MARGIN) for b, s in zip(hi, shape)))
        hist = merge_histograms(_clip(pieces[b], shape, grown) for b in order)
        region_hist[r] = hist
        region_seeds[r] = find_seeds(hist, shape, region=(lo, hi))

    # 3. rank all seeds (C order of positions, as cellpose)
    positions = np.concatenate([region_seeds[r].positions for r in order])
    counts = np.concatenate([region_seeds[r].counts for r in order])
    by_position = np.argsort(positions)
    all_seeds = Seeds(positions[by_position], counts[by_position])
    labels = rank_seeds(all_seeds, argsort)

    # 4. grow each region's seeds; merge the region map (highest label wins)
    map_pieces = []
    for r in order:
        seeds = region_seeds[r]
        which, where = grow_seeds(region_hist[r], seeds, shape)
        seed_labels = labels[np.searchsorted(all_seeds.positions, seeds.positions)]
        map_pieces.append((where, seed_labels[which]))
    map_positions, map_labels = region_map(map_pieces)

    # 5. assign: seed labels per block (the staging store) and per-object stats
    if staged is None:
        staged = np.zeros(shape, np.int64)
    elif tuple(staged.shape) != shape or np.dtype(staged.dtype) != np.int64:
        raise InputError(f"Expected an int64 array of shape {shape} for the seed labels. "
                         f"Got {staged.dtype} {tuple(staged.shape)} instead.")
    stats_pieces = []
    for b in order:
        lo, hi = grid[b]
        box = tuple(slice(a, c) for a, c in zip(lo, hi))
        foreground = cellprob[box] > cellprob_threshold
        ends = followed[b].ends if ends_dir is None else np.load(_ends_path(ends_dir, b), mmap_mode="r",
                                                                  allow_pickle=False)
        block_seed_labels = block_labels(foreground, assign_ends(ends, map_positions, map_labels))
        del ends
        staged[box] = block_seed_labels
        stats_pieces.append(object_stats(block_seed_labels, lo, shape))
    stats = merge_object_stats(stats_pieces, ndim)

    # 6. resolve: cellpose's filters from stats and single-object crops
    def read_labels(lo: tuple[int, ...], hi: tuple[int, ...]) -> np.ndarray:
        return staged[tuple(slice(a, b) for a, b in zip(lo, hi))]

    def read_flows(lo: tuple[int, ...], hi: tuple[int, ...]) -> np.ndarray:
        return dP[(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))]

    resolution = resolve_masks(stats, shape, dynamics, read_labels=read_labels, read_flows=read_flows,
                               flow_threshold=flow_threshold, min_size=min_size,
                               max_size_fraction=max_size_fraction, do_3D=do_3D)

    # 7. apply
    out = None if sink is not None else np.zeros(shape, np.uint32 if resolution.n_objects < 2**32 else np.uint64)
    for b in order:
        lo, hi = grid[b]
        box = tuple(slice(a, c) for a, c in zip(lo, hi))
        final = resolution.apply(staged[box], lo, shape)
        if sink is not None:
            sink(lo, hi, final)
        else:
            out[box] = final

    reach = tuple(int(max(f.reach[a] for f in followed.values())) for a in range(ndim))
    report = BlockwiseReport(
        reach=reach,
        n_escaped=sum(f.n_escaped for f in followed.values()),
        n_foreground=sum(n_foreground.values()),
        n_histogram_entries=sum(p[0].size for p in pieces.values()),
        n_seeds=int(all_seeds.positions.size),
        n_region_entries=int(map_positions.size),
        n_objects=resolution.n_objects,
        removed=resolution.removed,
    )
    return out, report, resolution


def _clip(piece: tuple[np.ndarray, np.ndarray], shape: tuple[int, ...],
          box: tuple[tuple[int, ...], tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray]:
    positions, counts = piece
    coords = np.unravel_index(positions, shape)
    inside = np.ones(positions.size, bool)
    for c, a, b in zip(coords, *box):
        inside &= (c >= a) & (c < b)
    return positions[inside], counts[inside]


def _ends_path(ends_dir: str | os.PathLike, block: int) -> str:
    return os.path.join(os.fspath(ends_dir), f"ends-{block}.npy")


def _sliceable(a: object) -> bool:
    """An array-like read by slicing (numpy, zarr), not copied whole."""
    return hasattr(a, "shape") and hasattr(a, "__getitem__") and hasattr(a, "dtype")
