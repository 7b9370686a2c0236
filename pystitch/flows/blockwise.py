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

Blocks are processed in any order (``order``) with identical results.  The
follow of a block may run in another process, earlier (:class:`EndPointFiles`):
what it leaves is taken as if followed here.
"""

from __future__ import annotations

import dataclasses
import io
import os
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import InputError, PlanMismatchError, StagingError
from ..progress import advance
from ..storage.files import atomic_write_bytes, atomic_write_npz, read_npz
from .assign import ObjectStats, assign_ends, block_labels, merge_object_stats, object_stats
from .dynamics import Dynamics
from .filters import Resolution, resolve_masks
from .follow import FollowedBlock, endpoint_histogram, follow_block
from .seeds import GROW_STEPS, MAX_BOX, Histogram, Seeds, find_seeds, grow_seeds, merge_histograms, rank_seeds, region_map

__all__ = ["BlockwiseReport", "EndPointFiles", "SeedMap", "assign_block", "block_grid", "masks_blockwise", "seed_map"]

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


class EndPointFiles:
    """Each block's end points in files of a directory, out of memory between
    follow and assign, and left by a follow of some blocks (another task, an
    earlier run) for the rest of the dynamics.

    Per block ``b``: ``ends-<b>.npy`` (int64, the end point of every
    foreground voxel of the core; read back memory-mapped) and, written last,
    ``follow-<b>.npz`` (the block's core, its histogram piece, what the follow
    measured, ``stamp`` and ``source``): a block whose npz is there is
    followed.  Files of another stamp (another plan) or of another core are
    refused, never used; files of another ``source`` (flows predicted again
    since) are stale: the block is followed again and its files replaced.

    The later steps keep theirs there too: ``regions.npz``, the region map of
    the seeds (with an id of its own), and per block ``assign-<b>.npz``, the
    per-object stats of its seed labels, written after its labels and
    naming the region map they came from (another map's are stale).
    """

    def __init__(self, directory: str | os.PathLike, stamp: str = "", source: str = "") -> None:
        self.directory = os.fspath(directory)
        self.stamp = str(stamp)
        self.source = str(source)

    def ends_path(self, block: int) -> str:
        return os.path.join(self.directory, f"ends-{int(block)}.npy")

    def piece_path(self, block: int) -> str:
        return os.path.join(self.directory, f"follow-{int(block)}.npz")

    def save(self, block: int, followed: FollowedBlock, piece: tuple[np.ndarray, np.ndarray]) -> None:
        """Write the block's end points, then the piece that marks them complete."""
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(followed.ends, np.int64), allow_pickle=False)
        atomic_write_bytes(self.ends_path(block), buf.getvalue())
        del buf
        atomic_write_npz(self.piece_path(block), {
            "stamp": np.array(self.stamp), "source": np.array(self.source), "lo": np.asarray(followed.lo, np.int64),
            "hi": np.asarray(followed.hi, np.int64), "positions": piece[0], "counts": piece[1],
            "n_foreground": np.int64(followed.ends.size), "n_escaped": np.int64(followed.n_escaped),
            "reach": np.asarray(followed.reach, np.int64), "halo": np.asarray(followed.halo, np.int64)})

    def load(self, block: int, lo: Sequence[int], hi: Sequence[int]
             ) -> tuple[FollowedBlock, tuple[np.ndarray, np.ndarray], int] | None:
        """The block's follow (its ``ends`` left empty: see :meth:`ends`),
        histogram piece and number of end points when its files are
        complete, else None."""
        path = self.piece_path(block)
        if not os.path.exists(path):
            return None
        d = read_npz(path, f"the end points of block {block}",
                     ("stamp", "lo", "hi", "positions", "counts", "n_foreground", "n_escaped", "reach", "halo"))
        if str(d["stamp"]) != self.stamp:
            raise PlanMismatchError(f"Expected the end points of block {block} of plan {self.stamp} at {path}. "
                                    f"Got those of plan {d['stamp']} instead: remove {self.directory} or use the "
                                    "work directory of that plan.")
        if str(d.get("source", "")) != self.source:
            return None  # followed on flows predicted again since: stale, followed again
        lo, hi = tuple(int(v) for v in lo), tuple(int(v) for v in hi)
        if tuple(d["lo"].tolist()) != lo or tuple(d["hi"].tolist()) != hi:
            raise PlanMismatchError(f"Expected the end points of block {block} with core {lo}..{hi} at {path}. "
                                    f"Got those of core {tuple(d['lo'].tolist())}..{tuple(d['hi'].tolist())} "
                                    "instead (another block grid).")
        n = int(d["n_foreground"])
        ends = self.ends(block)
        if ends.shape != (n,):
            raise StagingError(f"Expected {n} end points of block {block} in {self.ends_path(block)}. "
                               f"Got an array of shape {ends.shape} instead; it is corrupt.")
        del ends
        followed = FollowedBlock(lo, hi, np.empty(0, np.int64), int(d["n_escaped"]),
                                 tuple(int(v) for v in d["reach"]), tuple(int(v) for v in d["halo"]))
        return followed, (d["positions"].astype(np.int64), d["counts"].astype(np.int64)), n

    @property
    def regions_path(self) -> str:
        return os.path.join(self.directory, "regions.npz")

    def assigned_path(self, block: int) -> str:
        return os.path.join(self.directory, f"assign-{int(block)}.npz")

    def save_regions(self, regions: "SeedMap", measured: dict) -> str:
        """Write the region map (with what the follow measured over all
        blocks, ``measured``: name -> int or int array); returns its id, which
        the assignments made from it carry."""
        regions_id = uuid.uuid4().hex
        atomic_write_npz(self.regions_path, {
            "stamp": np.array(self.stamp), "source": np.array(self.source), "regions_id": np.array(regions_id),
            "positions": regions.positions, "labels": regions.labels, "n_seeds": np.int64(regions.n_seeds),
            **{f"measured_{k}": np.asarray(v, np.int64) for k, v in measured.items()}})
        return regions_id

    def load_regions(self) -> tuple["SeedMap", str, dict] | None:
        """``(region map, its id, what the follow measured)`` when a region map
        of this plan and these flows is there, else None (none, or stale)."""
        if not os.path.exists(self.regions_path):
            return None
        d = read_npz(self.regions_path, "the region map of the seeds",
                     ("stamp", "source", "regions_id", "positions", "labels", "n_seeds"))
        if str(d["stamp"]) != self.stamp:
            raise PlanMismatchError(f"Expected the region map of plan {self.stamp} at {self.regions_path}. Got that "
                                    f"of plan {d['stamp']} instead: remove {self.directory} or use the work "
                                    "directory of that plan.")
        if str(d["source"]) != self.source:
            return None  # from flows predicted again since: stale
        positions, labels = d["positions"].astype(np.int64), d["labels"].astype(np.int64)
        if positions.shape != labels.shape or positions.ndim != 1:
            raise StagingError(f"The region map {self.regions_path} holds {positions.shape} positions and "
                               f"{labels.shape} labels; it is corrupt. Remove it and run seed-flows again.")
        measured = {k[len("measured_"):]: v for k, v in d.items() if k.startswith("measured_")}
        return SeedMap(positions, labels, int(d["n_seeds"])), str(d["regions_id"]), measured

    def save_assigned(self, block: int, lo: Sequence[int], hi: Sequence[int], stats: ObjectStats,
                      regions_id: str) -> None:
        """Mark block ``block`` assigned from region map ``regions_id``: the
        per-object stats of its seed labels (whose sorted ``labels`` are also
        what its local ids 1..n stand for), written after its labels."""
        atomic_write_npz(self.assigned_path(block), {
            "stamp": np.array(self.stamp), "source": np.array(self.source), "regions_id": np.array(regions_id),
            "lo": np.asarray(lo, np.int64), "hi": np.asarray(hi, np.int64), "labels": stats.labels,
            "count": stats.count, "first": stats.first, "last": stats.last, "box_lo": stats.lo, "box_hi": stats.hi})

    def load_assigned(self, block: int, lo: Sequence[int], hi: Sequence[int], regions_id: str
                      ) -> ObjectStats | None:
        """The stats of block ``block`` when it was assigned from region map
        ``regions_id`` (of this plan, this core), else None."""
        path = self.assigned_path(block)
        if not os.path.exists(path):
            return None
        d = read_npz(path, f"the assignment of block {block}",
                     ("stamp", "source", "regions_id", "lo", "hi", "labels", "count", "first", "last", "box_lo",
                      "box_hi"))
        if str(d["stamp"]) != self.stamp:
            raise PlanMismatchError(f"Expected the assignment of block {block} of plan {self.stamp} at {path}. "
                                    f"Got that of plan {d['stamp']} instead.")
        if str(d["source"]) != self.source or str(d["regions_id"]) != regions_id:
            return None  # from another region map: stale, assigned again
        lo, hi = tuple(int(v) for v in lo), tuple(int(v) for v in hi)
        if tuple(d["lo"].tolist()) != lo or tuple(d["hi"].tolist()) != hi:
            raise PlanMismatchError(f"Expected the assignment of block {block} with core {lo}..{hi} at {path}. "
                                    f"Got that of core {tuple(d['lo'].tolist())}..{tuple(d['hi'].tolist())} "
                                    "instead (another block grid).")
        return ObjectStats(d["labels"].astype(np.int64), d["count"].astype(np.int64), d["first"].astype(np.int64),
                           d["last"].astype(np.int64), d["box_lo"].astype(np.int64).reshape(len(lo), -1),
                           d["box_hi"].astype(np.int64).reshape(len(lo), -1))

    def forget_assigned(self, block: int) -> None:
        """The block's labels are about to change: it counts as not assigned."""
        try:
            os.remove(self.assigned_path(block))
        except FileNotFoundError:
            pass

    def ends(self, block: int) -> np.ndarray:
        """The block's end points, memory-mapped."""
        path = self.ends_path(block)
        try:
            ends = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise StagingError(f"Expected the end points of block {block} at {path}. Got nothing there.") from None
        except (OSError, ValueError) as exc:
            raise StagingError(f"The end points of block {block} ({path}) are unreadable ({exc}); "
                               "they are corrupt.") from exc
        if ends.dtype != np.int64 or ends.ndim != 1:
            raise StagingError(f"Expected int64 end points of block {block} in {path}. "
                               f"Got {ends.dtype} of shape {ends.shape} instead; they are corrupt.")
        return ends


def follow_blocks(dP: Any, cellprob: Any, blocks: Sequence[int], grid: Sequence[tuple[tuple[int, ...], tuple[int, ...]]],
                  files: EndPointFiles, dynamics: Dynamics, *, halo: Sequence[int], niter: int = 200,
                  cellprob_threshold: float = 0.0, threads: int = 1) -> dict:
    """The follow task of :func:`masks_blockwise` alone, for ``blocks`` of
    ``grid``: each block's end points into ``files`` (blocks already there
    are kept).  Returns what it did: blocks followed and kept, foreground
    voxels, trajectories followed again, the reach per axis."""
    shape = tuple(cellprob.shape)
    read = _reader(dP, cellprob)
    done = {"followed": 0, "kept": 0, "foreground": 0, "escaped": 0, "reach": [0] * len(shape)}
    for b in blocks:
        lo, hi = grid[b]
        loaded = files.load(b, lo, hi)
        if loaded is not None:
            followed, _, n = loaded
            done["kept"] += 1
        else:
            followed = follow_block(read, lo, hi, shape, niter, cellprob_threshold, dynamics, halo, threads)
            n = int(followed.ends.size)
            files.save(b, followed, endpoint_histogram(followed.ends))
            done["followed"] += 1
        done["foreground"] += n
        done["escaped"] += followed.n_escaped
        done["reach"] = [max(r, int(f)) for r, f in zip(done["reach"], followed.reach)]
        advance("follow")
    return done


def masks_blockwise(dP: np.ndarray, cellprob: np.ndarray, block: Sequence[int], dynamics: Dynamics, *,
                    halo: Sequence[int], niter: int = 200, cellprob_threshold: float = 0.0,
                    flow_threshold: float | None = 0.4, min_size: int = 15, max_size_fraction: float = 0.4,
                    do_3D: bool | None = None, order: Sequence[int] | None = None,
                    offset: Sequence[int] | None = None, argsort: str = "torch",
                    threads: int = 1, sink: Callable[[tuple[int, ...], tuple[int, ...], np.ndarray], None] | None = None,
                    staged: Any = None, ends: EndPointFiles | str | os.PathLike | None = None
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
    ``ends``: where each block's end points wait between follow and assign
    instead of in memory (:class:`EndPointFiles`, or an existing directory for
    them); blocks whose end points are already there are not followed again.
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

    read = _reader(dP, cellprob)
    files = ends if isinstance(ends, EndPointFiles) or ends is None else EndPointFiles(ends)

    # 1. follow (or take what a follow of the block left in the files)
    followed: dict[int, FollowedBlock] = {}
    pieces: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    n_foreground: dict[int, int] = {}
    for b in order:
        lo, hi = grid[b]
        loaded = files.load(b, lo, hi) if files is not None else None
        if loaded is not None:
            followed[b], pieces[b], n_foreground[b] = loaded
            continue
        followed[b] = follow_block(read, lo, hi, shape, niter, cellprob_threshold, dynamics, halo, threads)
        pieces[b] = endpoint_histogram(followed[b].ends)
        n_foreground[b] = int(followed[b].ends.size)
        if files is not None:
            files.save(b, followed[b], pieces[b])
            followed[b] = dataclasses.replace(followed[b], ends=np.empty(0, np.int64))

    # 2-4. seeds per region, ranked over the image, grown into the region map
    regions = seed_map(pieces, grid, shape, order, argsort)
    map_positions, map_labels = regions.positions, regions.labels

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
        block_ends = followed[b].ends if files is None else files.ends(b)
        block_seed_labels = assign_block(block_ends, cellprob[box] > cellprob_threshold, regions, b)
        del block_ends
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
        n_seeds=regions.n_seeds,
        n_region_entries=int(map_positions.size),
        n_objects=resolution.n_objects,
        removed=resolution.removed,
    )
    return out, report, resolution


@dataclasses.dataclass(frozen=True)
class SeedMap:
    """The region map of the whole image: sorted global flat ``positions`` of
    the histogram voxels some seed's growth reaches, and the ``labels`` of
    the highest-ranked seed reaching each (seed labels are ranks 1..n, as
    cellpose numbers them before renumbering); ``n_seeds`` seeds in all."""

    positions: np.ndarray
    labels: np.ndarray
    n_seeds: int


def seed_map(pieces: dict[int, tuple[np.ndarray, np.ndarray]],
             grid: Sequence[tuple[tuple[int, ...], tuple[int, ...]]], shape: Sequence[int],
             order: Sequence[int] | None = None, argsort: str = "torch") -> SeedMap:
    """Seeds found per region (a core of ``grid``) in the histogram ``pieces``
    (of every block) that reach it, ranked over the whole image as cellpose
    ranks them, grown into the region map (steps 2-4 of the module).
    ``order`` permutes the regions (same result)."""
    shape = tuple(int(s) for s in shape)
    order = list(range(len(grid))) if order is None else [int(i) for i in order]
    # each piece's bounding box: a region takes only the pieces that can reach it
    boxes = np.zeros((len(grid), 2, len(shape)), np.int64)
    boxes[:, 0], boxes[:, 1] = np.iinfo(np.int64).max, -1
    for b in order:
        if pieces[b][0].size:
            coords = np.unravel_index(pieces[b][0], shape)
            boxes[b, 0] = [int(c.min()) for c in coords]
            boxes[b, 1] = [int(c.max()) for c in coords]
    region_hist: dict[int, Histogram] = {}
    region_seeds: dict[int, Seeds] = {}
    for r in order:
        lo, hi = grid[r]
        grown = (tuple(max(0, a - SEED_MARGIN) for a in lo), tuple(min(s, b + SEED_MARGIN) for b, s in zip(hi, shape)))
        near = np.all((boxes[:, 1] >= np.asarray(grown[0])) & (boxes[:, 0] < np.asarray(grown[1])), axis=1)
        hist = merge_histograms(_clip(pieces[b], shape, grown) for b in order if near[b])
        region_hist[r] = hist
        region_seeds[r] = find_seeds(hist, shape, region=(lo, hi))

    # rank all seeds (C order of positions, as cellpose)
    positions = np.concatenate([region_seeds[r].positions for r in order])
    counts = np.concatenate([region_seeds[r].counts for r in order])
    by_position = np.argsort(positions)
    all_seeds = Seeds(positions[by_position], counts[by_position])
    labels = rank_seeds(all_seeds, argsort)

    # grow each region's seeds; merge the region map (highest label wins)
    map_pieces = []
    for r in order:
        seeds = region_seeds[r]
        which, where = grow_seeds(region_hist[r], seeds, shape)
        seed_labels = labels[np.searchsorted(all_seeds.positions, seeds.positions)]
        map_pieces.append((where, seed_labels[which]))
    map_positions, map_labels = region_map(map_pieces)
    return SeedMap(map_positions, map_labels, int(all_seeds.positions.size))


def assign_block(ends: np.ndarray, foreground: np.ndarray, regions: SeedMap, block: int = -1) -> np.ndarray:
    """The seed labels (int64) of a core from the end points of its
    ``foreground`` voxels (C order) and the region map (step 5)."""
    n = int(np.count_nonzero(foreground))
    if ends.size != n:
        raise StagingError(f"Expected {n} end points of block {block}, one per foreground voxel of its core. "
                           f"Got {ends.size} instead: they were followed on other flows.")
    return block_labels(foreground, assign_ends(ends, regions.positions, regions.labels))


def _clip(piece: tuple[np.ndarray, np.ndarray], shape: tuple[int, ...],
          box: tuple[tuple[int, ...], tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray]:
    positions, counts = piece
    coords = np.unravel_index(positions, shape)
    inside = np.ones(positions.size, bool)
    for c, a, b in zip(coords, *box):
        inside &= (c >= a) & (c < b)
    return positions[inside], counts[inside]


def _reader(dP: Any, cellprob: Any) -> Callable[[tuple[int, ...], tuple[int, ...]], tuple[np.ndarray, np.ndarray]]:
    def read(lo: tuple[int, ...], hi: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        return dP[(slice(None),) + box], cellprob[box]
    return read


def _sliceable(a: object) -> bool:
    """An array-like read by slicing (numpy, zarr), not copied whole."""
    return hasattr(a, "shape") and hasattr(a, "__getitem__") and hasattr(a, "dtype")
