"""The lut store: provisional id -> final id, and the block offsets.

``lut.zarr`` (zarr v3 group, stamped with the plan hash) holds ``lut``
(provisional id -> final id; entry 0 is background), ``offsets`` (one per
block, plus the total: block ``b``'s local id ``k`` is provisional id
``offsets[b] + k``) and the resolve summary as attributes.  It is written
under a temporary name and renamed, so it exists only when complete; at an
``s3://`` URL, where nothing can be renamed, the group's attributes (the
plan hash with them) are written LAST, and a lut without them is incomplete.
"""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np
import zarr

from ..errors import StagingError
from .files import check_plan_hash, remove_path
from .remote import is_remote, remove as remove_remote, zarr_kwargs

LUT_CHUNK = 1 << 18


def write_lut(uri: str, pieces: Iterable[np.ndarray], n_entries: int, offsets: np.ndarray, dtype: np.dtype,
              attrs: dict, extra: dict[str, np.ndarray] | None = None) -> None:
    """Write a complete lut store at ``uri``: ``pieces`` are consecutive parts of
    the lut (``n_entries`` in all); ``extra`` small per-block arrays (e.g. the
    foreground voxels each block's core must hold).  Atomic: the store
    appears only when whole (at a URL: its attributes are written last)."""
    remote = is_remote(uri)
    tmp = uri.rstrip("/") if remote else f"{uri.rstrip('/')}.incomplete"
    if remote:
        remove_remote(tmp)
    else:
        remove_path(tmp)
    group = zarr.open_group(store=tmp, mode="w", **zarr_kwargs(tmp),
                            attributes={} if remote else {**attrs, "dtype": np.dtype(dtype).name})
    lut = group.create_array(name="lut", shape=(n_entries,), chunks=(LUT_CHUNK,), dtype=dtype, fill_value=0)
    pos = 0
    for piece in pieces:
        lut[pos:pos + len(piece)] = piece.astype(dtype)
        pos += len(piece)
    group.create_array(name="offsets", shape=offsets.shape, chunks=(max(1, len(offsets)),), dtype=np.uint64,
                       fill_value=0)[:] = offsets
    for name, values in (extra or {}).items():
        group.create_array(name=name, shape=values.shape, chunks=(max(1, len(values)),), dtype=values.dtype,
                           fill_value=0)[:] = values
    if remote:
        group.attrs.update({**attrs, "dtype": np.dtype(dtype).name})
        return
    remove_path(uri)
    os.replace(tmp, uri)


class Lut:
    """Read access to a finished lut store (what apply-lut and finalize use)."""

    def __init__(self, group: zarr.Group, uri: str) -> None:
        self.group = group
        self.uri = uri
        self.lut = group["lut"]
        self.offsets = group["offsets"][:]  # one entry per block: read once, not per block
        #: foreground voxels of each block's core, from its manifest (None: not recorded)
        self.voxels = group["voxels"][:] if "voxels" in group else None
        self.attrs = dict(group.attrs)
        self.dtype = np.dtype(self.attrs["dtype"])
        self._chunks: dict[int, np.ndarray] = {}

    @classmethod
    def open(cls, uri: str, plan_hash: str) -> "Lut":
        try:
            group = zarr.open_group(store=uri, mode="r", **zarr_kwargs(uri))
            if "plan_hash" not in group.attrs:  # written last: the lut is being written, or its writer died
                raise KeyError("plan_hash")
            check_plan_hash(group.attrs.get("plan_hash"), plan_hash, uri)
            group["lut"], group["offsets"], group.attrs["dtype"]
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError) as exc:
            raise StagingError(f"lut store {uri} is missing or incomplete (run resolve first): {exc}") from exc
        return cls(group, uri)

    @property
    def n_objects(self) -> int:
        return int(self.attrs["n_objects"])

    def block_range(self, block: int) -> tuple[int, int]:
        """``(offset, n)``: block ``block``'s ids are ``offset + 1 .. offset + n``."""
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
