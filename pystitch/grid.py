"""Block geometry: how an image is cut into blocks, and what each block reads and shares.

The image (``shape``) is cut into a grid of blocks whose *core* is ``block``
voxels (the last block of an axis may be smaller).  A block reads its core
grown by ``halo`` on every side, clipped to the image: its *extended region*.
Block ids are flat C-order indices into the grid.

The block's *frame* is its extended region before clipping.  Two neighbouring
blocks both predict the voxels where their frames overlap; across a face that
overlap is a *slab* ``2 * halo`` thick.  Slabs are stored in frame coordinates
(one chunk per block in the staging store), so blocks on the image border need
no special case.

This module is pure: numbers in, numbers out.  Every step imports it; it
imports nothing of pystitch but the errors.

>>> g = BlockGrid(shape=(10, 25), block=(5, 10), halo=(1, 2))
>>> g.counts, g.n_blocks
((2, 3), 6)
>>> g.core(4)
(slice(5, 10, None), slice(10, 20, None))
>>> g.extended(4)
(slice(4, 10, None), slice(8, 22, None))
>>> [nb for nb, _ in g.neighbours(0, forward_only=True)]
[1, 3, 4]
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterator, Sequence

import numpy as np

from .errors import InputError

SIDES = ("lo", "hi")
#: (block, axis, side): one face slab of one block
SlabKey = tuple[int, int, str]
Region = tuple[slice, ...]


# --------------------------------------------------------------------------- parsing


def parse_shape(value: Any, ndim: int, what: str, minimum: int = 1) -> tuple[int, ...]:
    """One integer, or one per axis, from an int, a sequence or text like ``64,256,256``.

    >>> parse_shape("64", 3, "block shape")
    (64, 64, 64)
    >>> parse_shape([8, 16], 2, "halo", minimum=0)
    (8, 16)
    """
    raw = value
    if isinstance(value, str):
        value = [v for v in re.split(r"[,x\s]+", value.strip()) if v]
    if np.ndim(value) == 0:
        value = [value]
    value = list(value)
    if len(value) == 1:
        value = value * ndim
    try:
        if any(isinstance(v, bool) for v in value):
            raise ValueError
        ints = tuple(int(v) for v in value)
        if any(float(v) != i for v, i in zip(value, ints)):
            raise ValueError
    except (TypeError, ValueError):
        raise InputError(f"Expected integers for {what}. Got {raw!r} instead.") from None
    if len(ints) != ndim:
        raise InputError(
            f"Expected {what} as one integer or {ndim} (one per axis of this {ndim}-D image). Got {raw!r} instead."
        )
    if any(v < minimum for v in ints):
        raise InputError(f"Expected {what} >= {minimum} on every axis. Got {ints} instead.")
    return ints


def parse_block_ids(value: Any, n_blocks: int | None = None) -> list[int]:
    """Block ids from ``7``, ``[1, 2]``, ``"0-9"``, ``"0-9,12,20-22"`` or ``"all"``.

    Ranges are inclusive.  Returns sorted, unique ids; checks them against
    ``n_blocks`` when given.

    >>> parse_block_ids("0-2,5,7-8")
    [0, 1, 2, 5, 7, 8]
    >>> parse_block_ids("all", 3)
    [0, 1, 2]
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
        if n_blocks is None:
            raise InputError("Expected block ids. Got 'all' without a plan to count blocks in.")
        return list(range(n_blocks))
    items: list[Any]
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        items = [int(value)]
    elif isinstance(value, str):
        items = [p for p in re.split(r"[,\s]+", value.strip()) if p]
    elif isinstance(value, (list, tuple, range, np.ndarray)):
        items = list(value)
    else:
        raise InputError(f"Expected block ids like 7, 0-9 or 0,3,5. Got {value!r} instead.")
    ids: set[int] = set()
    for item in items:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if item < 0:
                raise InputError(f"Expected block ids >= 0. Got {int(item)} instead.")
            ids.add(int(item))
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", str(item).strip())
        if not m:
            raise InputError(f"Expected block ids like 7, 0-9 or 0,3,5. Got {item!r} instead.")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise InputError(f"Expected a block range low-high with low <= high. Got {item!r} instead.")
        ids.update(range(lo, hi + 1))
    out = sorted(ids)
    if n_blocks is not None:
        bad = [i for i in out if not 0 <= i < n_blocks]
        if bad:
            raise InputError(f"Expected block ids between 0 and {n_blocks - 1}. Got {bad[:5]} instead.")
    return out


def format_block_ids(ids: Sequence[int]) -> str:
    """Compact text for block ids, the inverse of :func:`parse_block_ids`.

    >>> format_block_ids([0, 1, 2, 5, 7, 8])
    '0-2,5,7-8'
    """
    parts: list[str] = []
    ids = sorted(int(i) for i in ids)
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)


def batches(ids: Sequence[int], size: int) -> list[list[int]]:
    """Consecutive batches of at most ``size`` ids.

    >>> batches([0, 1, 2, 3, 4], 2)
    [[0, 1], [2, 3], [4]]
    """
    size = max(1, int(size))
    ids = list(ids)
    return [ids[i:i + size] for i in range(0, len(ids), size)]


# --------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class BlockGrid:
    """The blocks of an image: cores, extended regions, neighbours and face slabs.

    ``axes`` only names axes in messages.
    """

    shape: tuple[int, ...]
    block: tuple[int, ...]
    halo: tuple[int, ...]
    axes: str = ""

    def __post_init__(self) -> None:
        nd = len(self.shape)
        axes = self.axes or "zyx"[-nd:]
        object.__setattr__(self, "axes", axes)
        if nd not in (2, 3):
            raise InputError(f"Expected a 2-D or 3-D image. Got shape {tuple(self.shape)} instead.")
        if any(n < 1 for n in self.shape):
            raise InputError(f"Expected an image with at least one voxel on every axis. Got shape "
                             f"{tuple(self.shape)} instead.")
        if len(self.block) != nd or len(self.halo) != nd:
            raise InputError(f"Expected block shape and halo with {nd} values for a {nd}-D image. "
                             f"Got {tuple(self.block)} and {tuple(self.halo)} instead.")
        for b, h, n, ax in zip(self.block, self.halo, self.shape, axes):
            if b < 1:
                raise InputError(f"Expected a block size >= 1 on axis {ax}. Got {b} instead.")
            if h < 0:
                raise InputError(f"Expected a halo >= 0 on axis {ax}. Got {h} instead.")
            if h >= b:
                raise InputError(
                    f"Expected halo < block on every axis. Got halo {h} >= block {b} on axis {ax} "
                    f"(halo {tuple(self.halo)}, block {tuple(self.block)})."
                )
            if h == 0 and n > b:
                raise InputError(
                    f"Expected a halo >= 1 on axis {ax}, which is cut into blocks (size {n}, block {b}): "
                    "without overlap, objects cannot be matched across the seam."
                )

    # ---- the grid

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @cached_property
    def counts(self) -> tuple[int, ...]:
        """Blocks per axis."""
        return tuple(math.ceil(n / b) for n, b in zip(self.shape, self.block))

    @cached_property
    def n_blocks(self) -> int:
        return math.prod(self.counts)

    @cached_property
    def frame_shape(self) -> tuple[int, ...]:
        return tuple(b + 2 * h for b, h in zip(self.block, self.halo))

    def index(self, block: int) -> tuple[int, ...]:
        """Grid position of a block id."""
        if not 0 <= block < self.n_blocks:
            raise InputError(f"Expected a block id between 0 and {self.n_blocks - 1}. Got {block} instead.")
        return tuple(int(i) for i in np.unravel_index(block, self.counts))

    def id(self, index: Sequence[int]) -> int:
        """Block id of a grid position."""
        return int(np.ravel_multi_index(tuple(index), self.counts))

    def split_axes(self) -> list[int]:
        """Axes cut into more than one block (the only ones with seams)."""
        return [a for a, g in enumerate(self.counts) if g > 1]

    def describe(self, block: int) -> str:
        core = ", ".join(f"{a} {s.start}:{s.stop}" for a, s in zip(self.axes, self.core(block)))
        return f"block {block} (core {core})"

    # ---- regions of one block

    def core(self, block: int) -> Region:
        return tuple(slice(i * b, min((i + 1) * b, n))
                     for i, b, n in zip(self.index(block), self.block, self.shape))

    def grown(self, block: int, margin: Sequence[int]) -> Region:
        """The core grown by ``margin`` voxels per side, clipped to the image."""
        return tuple(slice(max(c.start - m, 0), min(c.stop + m, n))
                     for c, m, n in zip(self.core(block), margin, self.shape))

    def extended(self, block: int, margin: Sequence[int] | None = None) -> Region:
        """The core grown by the halo (plus ``margin``), clipped to the image."""
        margin = margin or (0,) * self.ndim
        return self.grown(block, [h + m for h, m in zip(self.halo, margin)])

    def frame_origin(self, block: int) -> tuple[int, ...]:
        """Global coordinate of the first voxel of the block's frame (may be negative)."""
        return tuple(c.start - h for c, h in zip(self.core(block), self.halo))

    @staticmethod
    def within(inner: Region, outer: Region) -> Region:
        """``inner`` in the coordinates of ``outer`` (both global regions)."""
        return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))

    # ---- neighbours and face slabs

    def neighbours(self, block: int, forward_only: bool = False) -> Iterator[tuple[int, tuple[int, ...]]]:
        """Blocks whose frames overlap this one's (all ``3**ndim - 1`` around it),
        as ``(neighbour, delta)``.  With ``forward_only`` each unordered pair is
        produced once, by the block with the smaller id."""
        idx = self.index(block)
        for delta in itertools.product((-1, 0, 1), repeat=self.ndim):
            if not any(delta):
                continue
            nidx = tuple(i + d for i, d in zip(idx, delta))
            if any(not 0 <= j < g for j, g in zip(nidx, self.counts)):
                continue
            nid = self.id(nidx)
            if forward_only and nid < block:
                continue
            yield nid, delta

    def has_side(self, block: int, axis: int, side: str) -> bool:
        """Whether the block has a neighbour on ``side`` (lo/hi) of ``axis``."""
        i = self.index(block)[axis]
        return i > 0 if side == "lo" else i < self.counts[axis] - 1

    def slab_shape(self, axis: int) -> tuple[int, ...]:
        """Shape of a face slab across ``axis``: ``2 * halo`` thick, the frame elsewhere."""
        shape = list(self.frame_shape)
        shape[axis] = 2 * self.halo[axis]
        return tuple(shape)

    def slab_store_shape(self, axis: int) -> tuple[int, ...]:
        """Shape of the array that holds every block's slab across ``axis`` (one chunk per block)."""
        return tuple(g * s for g, s in zip(self.counts, self.slab_shape(axis)))

    def slab_chunk(self, block: int, axis: int) -> Region:
        """Where a block's slab across ``axis`` lies in that array."""
        slab = self.slab_shape(axis)
        return tuple(slice(i * s, (i + 1) * s) for i, s in zip(self.index(block), slab))

    def slab_origin(self, block: int, axis: int, side: str) -> tuple[int, ...]:
        """Global coordinate of a face slab's first voxel (``side`` is lo or hi)."""
        origin = list(self.frame_origin(block))
        if side == "hi":
            origin[axis] = self.core(block)[axis].start + self.block[axis] - self.halo[axis]
        return tuple(origin)

    def slab_from_extended(self, block: int, axis: int, side: str, ext: Region) -> tuple[Region, Region]:
        """``(source, target)``: the part of a block's extended region ``ext`` that
        its slab holds, in the coordinates of ``ext`` and of the slab."""
        origin, shape = self.slab_origin(block, axis, side), self.slab_shape(axis)
        src, dst = [], []
        for o, n, e in zip(origin, shape, ext):
            lo, hi = max(o, e.start), min(o + n, e.stop)
            src.append(slice(lo - e.start, hi - e.start))
            dst.append(slice(lo - o, hi - o))
        return tuple(src), tuple(dst)

    def overlap(self, a: int, b: int) -> Region:
        """Global region where the frames of blocks ``a`` and ``b`` overlap inside the image."""
        fa, fb, shape = self.frame_origin(a), self.frame_origin(b), self.frame_shape
        return tuple(slice(max(x, y, 0), min(x + s, y + s, n)) for x, y, s, n in zip(fa, fb, shape, self.shape))

    @staticmethod
    def slab_keys(a: int, b: int, delta: Sequence[int]) -> tuple[SlabKey, SlabKey]:
        """The slabs two neighbours compare (``b`` lies at ``delta`` from ``a``):
        across the first axis on which they differ, each on its facing side."""
        axis = next(i for i, d in enumerate(delta) if d)
        side_a, side_b = ("hi", "lo") if delta[axis] > 0 else ("lo", "hi")
        return (a, axis, side_a), (b, axis, side_b)

    def overlap_in_slab(self, key: SlabKey, region: Region) -> Region:
        """A global ``region`` in the coordinates of the slab ``key``."""
        block, axis, side = key
        origin = self.slab_origin(block, axis, side)
        return tuple(slice(r.start - o, r.stop - o) for r, o in zip(region, origin))
