"""The staging store: every block's local labels, before stitching.

Layout of ``<work_dir>/staging.zarr`` (a zarr v3 group stamped with the plan
hash):

``core``
    uint32 labels, image shape, chunks = block core: every block writes its
    core labels (local ids ``1..n``) into exactly one chunk, so blocks never
    write the same chunk.
``face-<axis>-lo`` / ``face-<axis>-hi``
    uint32, one chunk per block (shape ``grid * slab``): the block's labels on
    the slab ``2*halo`` thick across its low / high face on ``axis``, the
    frame's extent on the other axes (:class:`~pystitch.grid.BlockGrid`).
    These hold what the block predicted in its halo (ids ``n+1..m`` are
    objects seen only there) and are all ``face-pairs`` reads.

What a block wrote is recorded in its manifest (:mod:`pystitch.manifests`),
written after the chunks.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import zarr

from ..errors import StagingError
from ..grid import SIDES, BlockGrid, Region, SlabKey
from .files import check_plan_hash
from .zarrs import create_group_array, read_concurrently, write_concurrently

STAGING_DTYPE = np.uint32
#: local ids are stored as uint32: at most this many objects per block
MAX_LOCAL_LABELS = int(np.iinfo(STAGING_DTYPE).max)


def slab_name(axis: int, side: str) -> str:
    return f"face-{axis}-{side}"


def create_staging(uri: str, grid: BlockGrid, plan_hash: str) -> None:
    """Create an empty staging store for ``grid`` (replacing what ``uri`` held)."""
    group = zarr.open_group(store=uri, mode="w", attributes={"plan_hash": plan_hash})
    create_group_array(group, "core", grid.shape, grid.block, STAGING_DTYPE)
    for axis in grid.split_axes():
        for side in SIDES:
            create_group_array(group, slab_name(axis, side), grid.slab_store_shape(axis), grid.slab_shape(axis),
                               STAGING_DTYPE)


class Staging:
    """Read/write access to one plan's staging store."""

    def __init__(self, uri: str, grid: BlockGrid, plan_hash: str, mode: str = "r") -> None:
        self.uri = uri
        self.grid = grid
        try:
            self.group = zarr.open_group(store=uri, mode="r+" if mode != "r" else "r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
            raise StagingError(f"Staging store not found: {uri} (run plan-blocks first).") from exc
        check_plan_hash(self.group.attrs.get("plan_hash"), plan_hash, uri)
        self.core = self.group["core"]
        self._slabs = {(a, side): self.group[slab_name(a, side)] for a in grid.split_axes() for side in SIDES}

    def block_pieces(self, block: int, labels: np.ndarray, ext: Region) -> list[tuple[str, np.ndarray]]:
        """What a block stores, as ``(name, array)``: its core, then the face
        slabs it shares with existing neighbours, cut from its labels over the
        extended region ``ext``."""
        grid = self.grid
        pieces = [("core", labels[grid.within(grid.core(block), ext)])]
        for axis in grid.split_axes():
            for side in SIDES:
                if not grid.has_side(block, axis, side):
                    continue
                src, dst = grid.slab_from_extended(block, axis, side, ext)
                slab = np.zeros(grid.slab_shape(axis), dtype=STAGING_DTYPE)
                slab[dst] = labels[src]
                pieces.append((slab_name(axis, side), slab))
        return pieces

    def write_pieces(self, block: int, pieces: Sequence[tuple[str, np.ndarray]]) -> None:
        """Store pieces made by :meth:`block_pieces` (concurrently)."""
        writes = []
        for name, data in pieces:
            if name == "core":
                writes.append((self.core, self.grid.core(block), data))
            else:
                axis, side = _parse_slab_name(name)
                writes.append((self._slabs[axis, side], self.grid.slab_chunk(block, axis), data))
        write_concurrently(writes)

    def read_slab(self, block: int, axis: int, side: str) -> np.ndarray:
        return self._slabs[axis, side][self.grid.slab_chunk(block, axis)]

    def read_slabs(self, keys: Sequence[SlabKey]) -> list[np.ndarray]:
        """Several (block, axis, side) slabs read concurrently."""
        return read_concurrently([(self._slabs[axis, side], self.grid.slab_chunk(block, axis))
                                  for block, axis, side in keys])

    def read_core(self, block: int) -> np.ndarray:
        return self.core[self.grid.core(block)]


def _parse_slab_name(name: str) -> tuple[int, str]:
    _, axis, side = name.split("-")
    return int(axis), side
