"""Cellpose's mask filters, applied to the whole image from per-object work.

After the seed labels are assigned, cellpose 3.1/4.x (``resize_and_compute_masks``
without resizing) does, on the whole image:

A. drop masks with more than ``max_size_fraction`` of the image's voxels, then
   number the rest by their first voxel in C order (``fastremap.renumber``);
B. 2-D only, ``flow_threshold > 0``: recompute flows from each mask by
   diffusion from its centre and drop masks whose mean squared difference to
   the network's flows / 5 exceeds ``flow_threshold``;
C. ``min_size > 0``: drop small masks, renumber;
D. fill each mask's holes (``fill_voids.fill`` of the mask within its bounding
   box), in label order, each filled mask taking the next id;
E. ``min_size > 0``: drop small masks again and renumber.

:func:`resolve_masks` does the same from the per-object table
(:class:`~pystitch.flows.assign.ObjectStats`, summed over blocks) and from
crops of one object's bounding box, read through a callable, so that no step
needs the whole image.  The result is a table ``seed label -> final id`` plus
the few voxels whose id does not follow from their seed label (filled holes),
as ``(global flat index, final id)`` pairs.

Where the versions differ (see :mod:`pystitch.flows.dynamics`):

* B's flows: cellpose 3 diffuses each mask for ``2 (h + w + 4)`` steps in
  float64 on its own bounding box (numba); cellpose 4 diffuses all masks at
  once for ``2 max(h + w + 2)`` steps (max over the image), in float32 when the
  image padded by one pixel has more than 4e7 pixels, with torch summing the
  nine neighbours of the last ``N mod V`` mask pixels of the image in another
  order than the others (``V`` = torch's vector block, 16 float64 or 32
  float32 on AVX-512); both are reproduced per object.
* B's mean: cellpose 3 sums sequentially (``scipy.ndimage.mean``) per axis,
  cellpose 4 takes ``numpy.mean`` (pairwise) of the summed error.
* After B, cellpose 3 leaves gaps in the ids; its C and E then drop the masks
  whose *index* among the present labels is small -- not the small masks when
  there are gaps -- and that is reproduced too.
* Holes are filled by ``fill_voids`` (installed with cellpose); a filled hole
  takes over the voxels of any mask inside it, exactly as the sequential loop
  in cellpose does (a later mask's bounding box that a filled hole reaches is
  recomputed with it).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import InputError
from .assign import ObjectStats
from .dynamics import CP4_FLOAT32_PIXELS, Dynamics, KernelMismatchError

__all__ = [
    "Resolution",
    "fill_object",
    "flow_error_cp3",
    "flow_error_cp4",
    "resolve_masks",
    "small_to_remove",
]

LabelReader = Callable[[tuple[int, ...], tuple[int, ...]], np.ndarray]
FlowReader = Callable[[tuple[int, ...], tuple[int, ...]], np.ndarray]

# the 9 neighbours cellpose 4 diffuses over: centre, up, down, left, right, diagonals
_NEIGHBOURS_2D = np.array([[0, -1, 1, 0, 0, -1, -1, 1, 1], [0, 0, 0, -1, 1, -1, 1, -1, 1]], np.int64)


# ---------------------------------------------------------------- per-object pieces


def fill_object(mask: np.ndarray) -> np.ndarray:
    """``fill_voids.fill`` of one object's mask within its bounding box (bool)."""
    try:
        import fill_voids
    except ImportError as exc:  # a dependency of both cellpose versions
        raise InputError(f"Expected fill_voids (installed with cellpose). Got {exc} instead.") from exc
    return np.asarray(fill_voids.fill(np.ascontiguousarray(mask, bool)), bool)


def flow_error_cp3(mask: np.ndarray, dP: np.ndarray) -> float:
    """Cellpose 3's flow error of one 2-D mask.

    ``mask``: the object's voxels within exactly its bounding box; ``dP`` (2,
    *box) float32: the network's flows there.  ``masks_to_flows_cpu`` diffuses
    ``2 (h + w + 4)`` steps from the voxel nearest the mean (float64, the nine
    neighbours summed in a fixed order, times 1/9), and ``scipy.ndimage.mean``
    averages each axis's squared error by a sequential sum.
    """
    h, w = mask.shape
    ly, lx = h + 2, w + 2
    y, x = np.nonzero(mask)
    y = y.astype(np.int32) + 1
    x = x.astype(np.int32) + 1
    ymean, xmean = y.mean(), x.mean()
    nearest = ((x - xmean) ** 2 + (y - ymean) ** 2).argmin()
    ymed, xmed = int(y[nearest]), int(x[nearest])
    T = np.zeros(ly * lx, np.float64)
    y64, x64 = y.astype(np.int64), x.astype(np.int64)
    idx = y64 * lx + x64
    order = [idx, idx - lx, idx + lx, idx - 1, idx + 1, idx - lx - 1, idx - lx + 1, idx + lx - 1, idx + lx + 1]
    centre = ymed * lx + xmed
    ninth = 1 / 9.0
    for _ in range(2 * (ly + lx)):
        T[centre] += 1
        total = T[order[0]] + T[order[1]]
        for k in range(2, 9):
            total = total + T[order[k]]
        T[idx] = ninth * total
    dy = T[idx + lx] - T[idx - lx]
    dx = T[idx + 1] - T[idx - 1]
    mu = np.stack((dy, dx))
    mu /= 1e-60 + (mu ** 2).sum(axis=0) ** 0.5
    net = dP[:, y - 1, x - 1] / 5.0
    error = 0.0
    for k in range(2):
        squared = (mu[k] - net[k]) ** 2
        total = np.bincount(np.zeros(squared.size, np.intp), weights=squared)[0]  # sequential, as bincount
        error = error + total / squared.size
    return float(error)


def cp4_diffusion(mask: np.ndarray, niter: int, dtype: type, tail_from: int | None = None) -> np.ndarray:
    """Cellpose 4's diffusion of one 2-D mask: ``T`` on its bounding box padded by one.

    ``mask``: the object's voxels within exactly its bounding box.  ``niter``
    is ``2 * max(h + w + 2)`` over the image's masks, ``dtype`` float64 or
    float32 (see :func:`cp4_diffusion_dtype`); the object's voxels from index
    ``tail_from`` on (C order) are the image's last ``N mod V`` mask voxels,
    whose nine neighbours torch sums in its tail order.  ``T`` is zero outside
    the mask.
    """
    mask = np.asarray(mask, bool)
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), bool)
    padded[1:-1, 1:-1] = mask
    ly, lx = padded.shape
    y, x = np.nonzero(padded)
    y, x = y.astype(np.int64), x.astype(np.int64)
    n = y.size
    ny = y[None, :] + _NEIGHBOURS_2D[0][:, None]
    nx = x[None, :] + _NEIGHBOURS_2D[1][:, None]
    flat = ny * lx + nx  # (9, n)
    isneighbour = padded[ny, nx]
    cy, cx = _cp4_centre(mask)
    med = (cy + 1) * lx + (cx + 1)
    T = np.zeros(ly * lx, dtype)
    tail_start = n if tail_from is None else int(tail_from)
    nine = dtype(9)
    one = dtype(1)
    for _ in range(int(niter)):
        T[med] += one
        T[flat[0]] = _sum9(T[flat] * isneighbour, tail_start) / nine
    return T.reshape(ly, lx)


def flow_error_cp4(mask: np.ndarray, dP: np.ndarray, T: np.ndarray) -> float:
    """Cellpose 4's flow error of one 2-D mask.

    ``mask`` and ``dP`` as for :func:`flow_error_cp3`; ``T`` on the mask's box
    padded by one: the diffusion of this mask *and of every mask touching it*
    (cellpose 4 takes the flow of a border voxel from its neighbours' values,
    whatever mask they belong to).  The error is ``numpy.mean`` of the squared
    difference summed over the two axes.
    """
    y, x = np.nonzero(mask)
    y1, x1 = y + 1, x + 1
    dy = T[y1 + 1, x1] - T[y1 - 1, x1]
    dx = T[y1, x1 + 1] - T[y1, x1 - 1]
    mu = np.stack((dy, dx)).astype(np.float64)
    mu /= 1e-60 + (mu ** 2).sum(axis=0) ** 0.5
    net = dP[:, y, x] / 5.0
    err = ((mu - net) ** 2).sum(axis=0)
    return float(err.mean())


def cp4_diffusion_dtype(shape: Sequence[int]) -> type:
    """float32 when the image padded by one pixel per side exceeds 4e7 pixels (cellpose 4)."""
    pixels = 1
    for s in shape:
        pixels *= int(s) + 2
    return np.float32 if pixels > CP4_FLOAT32_PIXELS else np.float64


@functools.lru_cache(maxsize=None)
def torch_sum9_block(dtype_name: str) -> int:
    """torch's vector block ``V`` for summing 9 rows: columns past ``N - N mod V``
    are summed in its tail order.  Measured on this CPU; raises when the
    pattern is not the one reproduced here."""
    import torch

    dtype = np.dtype(dtype_name).type
    rng = np.random.default_rng(11)
    samples = []
    # from 8 columns: torch sums fewer float32 columns in yet other orders (an image
    # with fewer than 8 mask pixels in all, in cellpose 4's float32 regime, > 4e7 pixels)
    for n in range(8, 160):
        a = (rng.random((9, n)) * rng.choice([1e-3, 1.0, 1e3], (9, n))).astype(dtype)
        samples.append((a, torch.from_numpy(a).sum(dim=0).numpy()))
    for block in (128, 64, 32, 16, 8, 4, 2, 1):
        if all(np.array_equal(_sum9(a, a.shape[1] - a.shape[1] % block), ref) for a, ref in samples):
            return block
    raise KernelMismatchError(
        f"Expected torch {torch.__version__} to sum 9 rows of {dtype_name} in a pattern reproduced here. "
        "Got another pattern instead: cellpose 4's 2-D flow check cannot be reproduced exactly."
    )


def _sum9(a: np.ndarray, tail_from: int) -> np.ndarray:
    out = np.empty(a.shape[1], a.dtype)
    body = a[:, :tail_from]
    total = body[0]
    for k in range(1, 9):
        total = total + body[k]
    out[:tail_from] = total
    v = a[:, tail_from:]
    acc0 = v[0] + v[4]
    acc1 = v[1] + v[5]
    acc2 = v[2] + v[6]
    acc3 = v[3] + v[7]
    acc0 = acc0 + v[8]
    out[tail_from:] = ((acc0 + acc1) + acc2) + acc3
    return out


def _cp4_centre(mask: np.ndarray) -> tuple[int, int]:
    """cellpose 4's ``center_of_mass``: the rounded mean if it is in the mask, else the nearest voxel."""
    yi, xi = np.nonzero(mask)
    ymean = int(np.round(yi.sum() / len(yi)))
    xmean = int(np.round(xi.sum() / len(xi)))
    if not ((yi == ymean) * (xi == xmean)).sum():
        nearest = ((xi - xmean) ** 2 + (yi - ymean) ** 2).argmin()
        ymean, xmean = int(yi[nearest]), int(xi[nearest])
    return ymean, xmean


def small_to_remove(values: np.ndarray, counts: np.ndarray, background: bool, min_size: int,
                    by_index: bool) -> np.ndarray:
    """The label values cellpose's small-mask filter zeroes.

    ``values``: the sorted present labels (> 0) and ``counts`` their voxels;
    ``background``: whether any voxel is 0.  Both versions drop the first
    entry of ``fastremap.unique`` (meant to be 0).  Cellpose 3 (``by_index``)
    then zeroes the values ``i + 1`` for every position ``i`` of a small
    count -- the small masks only when the labels are exactly 1..n.
    """
    values = np.asarray(values, np.int64)
    counts = np.asarray(counts, np.int64)
    if background:
        kept_values, kept_counts = values, counts
    else:
        kept_values, kept_counts = values[1:], counts[1:]
    small = np.nonzero(kept_counts < min_size)[0]
    if by_index:
        return small.astype(np.int64) + 1
    return kept_values[small]


# ---------------------------------------------------------------- the whole sequence


@dataclasses.dataclass(frozen=True)
class Resolution:
    """Final ids: ``lut`` maps every seed label in ``seed_labels`` (sorted) to its
    final id (0: removed); ``patch_positions`` (sorted global flat indices) get
    ``patch_ids`` instead, whatever their seed label (filled holes)."""

    seed_labels: np.ndarray
    lut: np.ndarray
    patch_positions: np.ndarray
    patch_ids: np.ndarray
    n_objects: int
    #: how many objects each filter dropped, and the filled-voxel counts
    removed: dict

    def apply(self, seed_labels: np.ndarray, lo: Sequence[int], shape: Sequence[int]) -> np.ndarray:
        """Final ids of a block of seed labels whose first voxel is at global ``lo``."""
        seed_labels = np.asarray(seed_labels)
        out = np.zeros(seed_labels.shape, np.int64)
        nz = seed_labels != 0
        if nz.any():
            i = np.searchsorted(self.seed_labels, seed_labels[nz])
            if np.any(i >= self.seed_labels.size) or np.any(self.seed_labels[np.minimum(i, self.seed_labels.size - 1)] != seed_labels[nz]):
                raise InputError("Expected every seed label of the block in the resolution table.")
            out[nz] = self.lut[i]
        if self.patch_positions.size:
            hi = [int(a) + int(s) for a, s in zip(lo, seed_labels.shape)]
            coords = np.stack(np.unravel_index(self.patch_positions, tuple(int(s) for s in shape)))
            inside = np.all((coords >= np.asarray(lo)[:, None]) & (coords < np.asarray(hi)[:, None]), axis=0)
            if inside.any():
                local = tuple(c[inside] - int(a) for c, a in zip(coords, lo))
                out[local] = self.patch_ids[inside]
        return out


def resolve_masks(stats: ObjectStats, shape: Sequence[int], dynamics: Dynamics, *,
                  read_labels: LabelReader, read_flows: FlowReader | None = None,
                  flow_threshold: float | None = 0.4, min_size: int = 15,
                  max_size_fraction: float = 0.4, do_3D: bool = False) -> Resolution:
    """Cellpose's steps A-E (module docstring) from per-object stats and crops.

    ``stats``: the seed labels' :class:`ObjectStats`, merged over all blocks.
    ``read_labels(lo, hi)``: seed labels of a box; ``read_flows(lo, hi)``: the
    network's flows (2, *box) float32 there (2-D flow check only).
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    total = int(np.prod(shape, dtype=np.int64))
    removed: dict[str, int] = {}

    # objects by seed label; their current id, voxel count, first voxel, box
    seeds = stats.labels.astype(np.int64)
    count = stats.count.astype(np.int64).copy()
    first = stats.first.astype(np.int64).copy()
    alive = np.ones(seeds.size, bool)

    # A. big masks, then ids by first voxel
    big = total * max_size_fraction
    too_big = count > big
    removed["max_size_fraction"] = int(too_big.sum())
    alive &= ~too_big
    ids = _renumber(first, alive)

    # B. flow check (2-D)
    if ndim == 2 and not do_3D and flow_threshold is not None and flow_threshold > 0 and alive.any():
        if read_flows is None:
            raise InputError("Expected read_flows for the 2-D flow check (flow_threshold > 0).")
        errors = _flow_errors(stats, alive, ids, shape, dynamics, read_labels, read_flows)
        bad = alive & (errors > flow_threshold)
        removed["flow_threshold"] = int(bad.sum())
        alive &= ~bad
        ids = np.where(alive, ids, 0)
        if dynamics.renumber_after_flow_check:
            ids = _renumber(first, alive)

    # C. small masks
    background = int(count[alive].sum()) < total
    if min_size > 0 and alive.any():
        drop = small_to_remove(*_present(ids, count, alive), background, min_size, dynamics.small_masks_by_index)
        gone = alive & np.isin(ids, drop)
        removed["min_size_before_fill"] = int(gone.sum())
        alive &= ~gone
        ids = _renumber(first, alive)

    # D. fill holes in label order; each object present takes the next id
    new_ids, overlay, count, robbed, taken = _fill_holes(stats, seeds, alive, ids, count, shape, read_labels)
    removed["filled_voxels"] = len(overlay)
    removed["voxels_taken_by_fills"] = taken

    # E. small masks again, then ids by first voxel (filled voxels count)
    present = alive & (count > 0)
    final = np.zeros(seeds.size, np.int64)
    if present.any():
        for row in robbed:
            left = np.setdiff1d(_voxels(stats, row, shape, read_labels, seeds[row]),
                                np.fromiter(overlay.keys(), np.int64, len(overlay)))
            first[row] = left[0] if left.size else np.iinfo(np.int64).max
        if overlay:
            positions = np.fromiter(overlay.keys(), np.int64, len(overlay))
            writers = np.fromiter(overlay.values(), np.int64, len(overlay))
            row_of_new = np.zeros(int(new_ids.max()) + 1, np.int64)
            row_of_new[new_ids[alive]] = np.nonzero(alive)[0]
            np.minimum.at(first, row_of_new[writers], positions)
        keep = present.copy()
        if min_size > 0:
            background = int(count[present].sum()) < total
            values, counts_ = _present(new_ids, count, present)
            drop = small_to_remove(values, counts_, background, min_size, dynamics.small_masks_by_index)
            gone = present & np.isin(new_ids, drop)
            removed["min_size_after_fill"] = int(gone.sum())
            keep &= ~gone
        final = _renumber(first, keep)
    # the table, and the voxels whose id is not their seed's
    lut = final
    new_to_final = {int(n): int(f) for n, f in zip(new_ids[alive], final[alive])}
    if overlay:
        positions = np.fromiter(overlay.keys(), np.int64, len(overlay))
        writers = np.fromiter(overlay.values(), np.int64, len(overlay))
        order = np.argsort(positions)
        positions = positions[order]
        patch = np.array([new_to_final.get(int(w), 0) for w in writers[order]], np.int64)
    else:
        positions = np.zeros(0, np.int64)
        patch = np.zeros(0, np.int64)
    return Resolution(seeds, lut, positions, patch, int((lut > 0).sum()), removed)


# ---------------------------------------------------------------- steps


def _renumber(first: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """Ids 1..n of the alive objects in the order of their first voxel (fastremap.renumber)."""
    ids = np.zeros(first.size, np.int64)
    rows = np.nonzero(alive)[0]
    ids[rows[np.argsort(first[rows], kind="stable")]] = np.arange(1, rows.size + 1)
    return ids


def _present(ids: np.ndarray, count: np.ndarray, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.nonzero(alive)[0]
    order = np.argsort(ids[rows])
    return ids[rows][order], count[rows][order]


def _box(stats: ObjectStats, row: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(int(v) for v in stats.lo[:, row]), tuple(int(v) for v in stats.hi[:, row])


def _flow_errors(stats: ObjectStats, alive: np.ndarray, ids: np.ndarray, shape: tuple[int, ...],
                 dynamics: Dynamics, read_labels: LabelReader, read_flows: FlowReader) -> np.ndarray:
    rows = np.nonzero(alive)[0]
    errors = np.zeros(stats.labels.size)
    if dynamics.flow_check_iterations == "per_object":
        for row in rows:
            lo, hi = _box(stats, row)
            mask = read_labels(lo, hi) == stats.labels[row]
            errors[row] = flow_error_cp3(mask, np.asarray(read_flows(lo, hi), np.float32))
        return errors
    # cellpose 4: one iteration count and dtype for the whole image; torch's tail order for the last voxels
    extent = (stats.hi[0, rows] - stats.lo[0, rows]) + (stats.hi[1, rows] - stats.lo[1, rows]) + 2
    niter = 2 * int(extent.max())
    dtype = cp4_diffusion_dtype(shape)
    block = torch_sum9_block(np.dtype(dtype).name)
    n_voxels = int(stats.count[rows].sum())
    n_tail = n_voxels % block
    tail_from = _tail_starts(stats, rows, n_tail, shape, read_labels)
    diffused = {}
    for row in rows:
        lo, hi = _box(stats, row)
        mask = read_labels(lo, hi) == stats.labels[row]
        diffused[int(row)] = cp4_diffusion(mask, niter, dtype, tail_from.get(int(row)))
    for row in rows:
        lo, hi = _box(stats, row)
        mask = read_labels(lo, hi) == stats.labels[row]
        # T on the box padded by one, from this mask and every mask whose padded box meets it
        plo = [a - 1 for a in lo]
        phi = [b + 1 for b in hi]
        T = np.zeros(tuple(b - a for a, b in zip(plo, phi)), diffused[int(row)].dtype)
        meets = np.all((stats.lo[:, rows] - 1 < np.asarray(phi)[:, None])
                       & (stats.hi[:, rows] + 1 > np.asarray(plo)[:, None]), axis=0)
        for other in rows[meets]:
            olo = stats.lo[:, other] - 1
            t = diffused[int(other)]
            a = [max(p, o) for p, o in zip(plo, olo)]
            b = [min(p, o + s) for p, o, s in zip(phi, olo, t.shape)]
            T[tuple(slice(u - p, v - p) for u, v, p in zip(a, b, plo))] += \
                t[tuple(slice(u - o, v - o) for u, v, o in zip(a, b, olo))]
        errors[row] = flow_error_cp4(mask, np.asarray(read_flows(lo, hi), np.float32), T)
    return errors


def _tail_starts(stats: ObjectStats, rows: np.ndarray, n_tail: int, shape: tuple[int, ...],
                 read_labels: LabelReader) -> dict[int, int]:
    """For the objects holding the image's last ``n_tail`` mask voxels (C order):
    the index, among the object's own voxels, of its first voxel in that tail.

    Each object with a voxel in the tail has its last voxel there, so the
    ``n_tail`` objects that end last hold the whole tail."""
    if n_tail == 0:
        return {}
    candidates = rows[np.argsort(stats.last[rows])[::-1][:n_tail]]
    flats, owners = [], []
    for row in candidates:
        flats.append(_voxels(stats, row, shape, read_labels, stats.labels[row]))
        owners.append(np.full(flats[-1].size, row))
    flat = np.concatenate(flats)
    owner = np.concatenate(owners)
    in_tail = owner[np.argsort(flat)][-n_tail:]
    out: dict[int, int] = {}
    for row, voxels in zip(candidates, flats):
        k = int((in_tail == row).sum())
        if k:
            out[int(row)] = voxels.size - k
    return out


def _voxels(stats: ObjectStats, row: int, shape: tuple[int, ...], read_labels: LabelReader,
            label: int) -> np.ndarray:
    """Sorted global flat indices of the voxels labelled ``label`` in the object's box."""
    lo, hi = _box(stats, row)
    where = np.nonzero(read_labels(lo, hi) == label)
    return np.ravel_multi_index(tuple(w + a for w, a in zip(where, lo)), shape).astype(np.int64)


def _fill_holes(stats: ObjectStats, seeds: np.ndarray, alive: np.ndarray, ids: np.ndarray, count: np.ndarray,
                shape: tuple[int, ...], read_labels: LabelReader):
    """Step D: cellpose's loop over ``find_objects`` in label order.

    Object ``k`` (in the order of its id) takes the new id ``k + 1``; its mask
    is its seed voxels less those an earlier fill took; the holes of that mask
    within its box (from before the loop) take its new id, whoever had them.
    Returns the new ids, the overlay of filled voxels (global flat index ->
    writer's new id), the counts after filling and the rows of objects that
    lost voxels to a fill (their first voxel may have moved).
    """
    count = count.copy()
    new_ids = np.zeros(seeds.size, np.int64)
    rows = np.nonzero(alive)[0]
    rows = rows[np.argsort(ids[rows])]
    new_ids[rows] = np.arange(1, rows.size + 1)
    row_of_seed = {int(seeds[r]): int(r) for r in rows}
    row_of_new = {int(new_ids[r]): int(r) for r in rows}
    overlay: dict[int, int] = {}
    robbed: set[int] = set()
    n_taken = 0
    for row in rows:
        lo, hi = _box(stats, row)
        crop = read_labels(lo, hi)
        mine = crop == seeds[row]
        if overlay:
            lost = _overlay_in_box(overlay, lo, hi, shape)
            if lost is not None:
                mine &= ~lost
        if not mine.any():
            continue
        holes = fill_object(mine) & ~mine
        if not holes.any():
            continue
        where = np.nonzero(holes)
        flat = np.ravel_multi_index(tuple(w + a for w, a in zip(where, lo)), shape)
        for f, s in zip(flat.tolist(), crop[holes].tolist()):
            previous = overlay.get(f)
            if previous is not None:
                owner = row_of_new[previous]
            else:
                owner = row_of_seed.get(int(s)) if s else None
            if owner is not None:
                count[owner] -= 1
                robbed.add(owner)
                n_taken += 1
            overlay[f] = int(new_ids[row])
            count[row] += 1
    return new_ids, overlay, count, robbed, n_taken


def _overlay_in_box(overlay: dict[int, int], lo: tuple[int, ...], hi: tuple[int, ...],
                    shape: tuple[int, ...]):
    positions = np.fromiter(overlay.keys(), np.int64, len(overlay))
    coords = np.stack(np.unravel_index(positions, shape))
    inside = np.all((coords >= np.asarray(lo)[:, None]) & (coords < np.asarray(hi)[:, None]), axis=0)
    if not inside.any():
        return None
    taken = np.zeros(tuple(b - a for a, b in zip(lo, hi)), bool)
    taken[tuple(c[inside] - a for c, a in zip(coords, lo))] = True
    return taken
