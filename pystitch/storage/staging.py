"""The staging store: every block's local labels, before stitching.

Layout of ``<store dir>/staging.zarr`` (a zarr v3 group stamped with the plan
hash; the store dir is the work directory unless ``--store-dir`` names
another place, e.g. an ``s3://`` URL):

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

Every chunk carries a CRC32C of its encoded bytes (verified by zarr on every
read), and what a block wrote — the foreground voxels and a CRC32 of the
labels of each piece — is recorded in its manifest (:mod:`pystitch.manifests`),
written after the chunks.  Readers check the foreground count of what they
read against it, so a damaged, deleted or foreign chunk is an error that
names the block, never a silent change of the result.
"""

from __future__ import annotations

import errno
import zlib
from typing import Sequence

import numpy as np
import zarr

from ..errors import StagingError
from ..grid import SIDES, BlockGrid, Region, SlabKey
from .files import check_plan_hash
from .remote import zarr_kwargs
from .zarrs import create_group_array, dense, read_concurrently, write_concurrently

STAGING_DTYPE = np.uint32
#: local ids are stored as uint32: at most this many objects per block
MAX_LOCAL_LABELS = int(np.iinfo(STAGING_DTYPE).max)


def slab_name(axis: int, side: str) -> str:
    return f"face-{axis}-{side}"


def create_staging(uri: str, grid: BlockGrid, plan_hash: str) -> None:
    """Create an empty staging store for ``grid`` (replacing what ``uri`` held)."""
    group = zarr.open_group(store=uri, mode="w", attributes={"plan_hash": plan_hash}, **zarr_kwargs(uri))
    create_group_array(group, "core", grid.shape, grid.block, STAGING_DTYPE, checksum=True)
    for axis in grid.split_axes():
        for side in SIDES:
            create_group_array(group, slab_name(axis, side), grid.slab_store_shape(axis), grid.slab_shape(axis),
                               STAGING_DTYPE, checksum=True)


def piece_record(data: np.ndarray) -> dict[str, int]:
    """What a manifest records of one piece a block wrote: its foreground
    voxels and a CRC32 of its labels."""
    data = np.ascontiguousarray(data)
    return {"voxels": int(np.count_nonzero(data)), "crc32": zlib.crc32(memoryview(data).cast("B"))}


class Staging:
    """Read/write access to one plan's staging store."""

    def __init__(self, uri: str, grid: BlockGrid, plan_hash: str, mode: str = "r") -> None:
        self.uri = uri
        self.grid = grid
        try:
            self.group = zarr.open_group(store=uri, mode="r+" if mode != "r" else "r", **zarr_kwargs(uri))
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
            raise StagingError(f"Staging store not found: {uri} (run plan-blocks first).") from exc
        check_plan_hash(self.group.attrs.get("plan_hash"), plan_hash, uri)
        self.core = dense(self.group["core"])
        self._slabs = {(a, side): dense(self.group[slab_name(a, side)])
                       for a in grid.split_axes() for side in SIDES}

    def block_pieces(self, block: int, labels: np.ndarray, ext: Region) -> list[tuple[str, np.ndarray]]:
        """What a block stores, as ``(name, array)``: its core, then the face
        slabs it shares with existing neighbours, cut from its labels over the
        extended region ``ext``."""
        grid = self.grid
        # contiguous once: its CRC32 and its encoding would each copy a strided view
        pieces = [("core", np.ascontiguousarray(labels[grid.within(grid.core(block), ext)]))]
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
        """Store pieces made by :meth:`block_pieces` (concurrently).  A piece
        that cannot be stored is one line naming its chunk and the block."""
        writes = []
        for name, data in pieces:
            if name == "core":
                writes.append((self.core, self.grid.core(block), data))
            else:
                axis, side = _parse_slab_name(name)
                writes.append((self._slabs[axis, side], self.grid.slab_chunk(block, axis), data))
        try:
            write_concurrently(writes)
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # storage errors come in many types: find which piece, and say so
            for (name, _), write in zip(pieces, writes):
                try:
                    write_concurrently([write])
                except Exception as piece_exc:  # noqa: BLE001 - this is the one
                    exc, failed = piece_exc, name
                    break
            else:
                failed = pieces[0][0]
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            if isinstance(exc, OSError) and exc.errno:  # the reason, not the paths it names
                detail = f"{exc.strerror or detail} ({errno.errorcode.get(exc.errno, exc.errno)})"
            raise StagingError(
                f"Could not write the staging chunk {self.chunk_path(block, failed)} of {self.grid.describe(block)} "
                f"({type(exc).__name__}{': ' + detail if detail else ''}): the block has no manifest, so it counts "
                f"as unfinished. Check that {self.uri} is writable and has space, then run segment-block for block "
                f"{block} again."
            ) from exc

    def chunk_path(self, block: int, name: str) -> str:
        """Where the chunk of ``block`` in array ``name`` is stored (for messages)."""
        return f"{self.uri.rstrip('/')}/{name}/c/" + "/".join(map(str, self.grid.index(block)))

    def _damaged(self, block: int, name: str, exc: BaseException) -> StagingError:
        return StagingError(
            f"The staging chunk {self.chunk_path(block, name)} of {self.grid.describe(block)} cannot be read "
            f"({type(exc).__name__}: {str(exc)[:200]}): it is damaged. Run segment-block for block {block} again."
        )

    def _verify(self, block: int, name: str, data: np.ndarray, expected: dict | None) -> np.ndarray:
        if expected is not None:
            voxels = int(np.count_nonzero(data))
            if voxels != expected["voxels"]:
                state = "missing (it reads as background)" if voxels == 0 else "not the one this block wrote"
                raise StagingError(
                    f"The staging chunk {self.chunk_path(block, name)} of {self.grid.describe(block)} holds "
                    f"{voxels} labelled voxels; its manifest recorded {expected['voxels']}: the chunk is {state}. "
                    f"Run segment-block for block {block} again."
                )
        return data

    def read_slab(self, block: int, axis: int, side: str, expected: dict | None = None) -> np.ndarray:
        name = slab_name(axis, side)
        try:
            data = self._slabs[axis, side][self.grid.slab_chunk(block, axis)]
        except Exception as exc:  # codec, checksum or storage errors come in many types
            raise self._damaged(block, name, exc) from exc
        return self._verify(block, name, data, expected)

    def read_slabs(self, keys: Sequence[SlabKey], expected: Sequence[dict | None] | None = None
                   ) -> list[np.ndarray]:
        """Several (block, axis, side) slabs read concurrently, each checked
        against ``expected`` (its manifest's record) when given."""
        expected = list(expected) if expected is not None else [None] * len(keys)
        try:
            found = read_concurrently([(self._slabs[axis, side], self.grid.slab_chunk(block, axis))
                                       for block, axis, side in keys])
        except Exception:  # find which one, and say so
            return [self.read_slab(*key, expected=e) for key, e in zip(keys, expected)]
        return [self._verify(block, slab_name(axis, side), data, e)
                for (block, axis, side), data, e in zip(keys, found, expected)]

    def read_core(self, block: int, expected: dict | None = None) -> np.ndarray:
        try:
            data = self.core[self.grid.core(block)]
        except Exception as exc:
            raise self._damaged(block, "core", exc) from exc
        return self._verify(block, "core", data, expected)


def _parse_slab_name(name: str) -> tuple[int, str]:
    _, axis, side = name.split("-")
    return int(axis), side
