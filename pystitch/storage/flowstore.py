"""The flow store of the ``flows`` rule: Cellpose's network output for the whole image.

A zarr group beside the other big stores (``flows.zarr`` in the store
directory: the work directory, or an ``s3://`` URL) with two float32 arrays
chunked like the blocks: ``dP`` (ndim, *shape; flows per axis) and
``cellprob`` (*shape).  Its attributes name the plan it belongs to
(``plan_hash``, checked on every open like the other staging stores), name
the store itself (``store_id``, new with every store created) and say
when every block was written (``complete``, set last, with ``niter``: the
dynamics steps of the model, so that the dynamics need not load it).  Each block written is
marked by an empty object ``blocks-done/<block>`` (written after its chunks):
a predict killed halfway is resumed from the blocks not marked.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from ..errors import StagingError
from . import remote
from .files import atomic_write_bytes, check_plan_hash, exists, remove_path
from .remote import zarr_kwargs

#: the directory (prefix) in the store of the marks of the blocks written
DONE = "blocks-done"


class FlowStore:
    """Read/write access to one plan's flow store."""

    def __init__(self, group: zarr.Group, uri: str) -> None:
        self.group = group
        self.uri = uri
        self.dP = group["dP"]
        self.cellprob = group["cellprob"]

    @classmethod
    def create(cls, uri: str, shape: Sequence[int], block: Sequence[int], plan_hash: str) -> "FlowStore":
        """An empty store (replacing what ``uri`` held)."""
        remove_path(uri)
        shape = tuple(int(s) for s in shape)
        block = tuple(int(b) for b in block)
        group = zarr.open_group(store=uri, mode="w", attributes={"plan_hash": plan_hash, "complete": False,
                                                                 "store_id": uuid.uuid4().hex},
                                **zarr_kwargs(uri))
        for name, s, c in (("dP", (len(shape), *shape), (1, *block)), ("cellprob", shape, block)):
            group.create_array(name=name, shape=s, chunks=c, dtype=np.float32, fill_value=np.nan,
                               compressors=[Crc32cCodec()])
        return cls(group, uri)

    @classmethod
    def open(cls, uri: str, plan_hash: str) -> "FlowStore":
        """The store at ``uri``, refused unless written for ``plan_hash``."""
        try:
            group = zarr.open_group(store=uri, mode="r+", **zarr_kwargs(uri))
            found = group.attrs.get("plan_hash")
            group["dP"], group["cellprob"]
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError) as exc:
            raise StagingError(f"Flow store {uri} is missing or incomplete ({exc}).") from exc
        check_plan_hash(found, plan_hash, uri)
        return cls(group, uri)

    @property
    def complete(self) -> bool:
        return bool(self.group.attrs.get("complete"))

    def mark_complete(self, **facts: int) -> None:
        """Say every block is written, with what the network's side knows that
        the dynamics need (``niter``: set together with ``complete``)."""
        self.group.attrs.update({**{k: int(v) for k, v in facts.items()}, "complete": True})

    @property
    def store_id(self) -> str:
        """Set when the store is created: what was computed from its flows
        names it (an empty string in older stores)."""
        return str(self.group.attrs.get("store_id", ""))

    @property
    def niter(self) -> int | None:
        """The dynamics steps of the model that predicted (set when complete; None in older stores)."""
        value = self.group.attrs.get("niter")
        return None if value is None else int(value)

    def write(self, core: tuple[slice, ...], dP: np.ndarray, cellprob: np.ndarray, block: int | None = None) -> None:
        """Write a block's core; then, given its number, mark it written."""
        self.dP[(slice(None), *core)] = np.asarray(dP, np.float32)
        self.cellprob[core] = np.asarray(cellprob, np.float32)
        if block is not None:
            mark = remote.join(self.uri, DONE, str(int(block)))
            if remote.is_remote(mark):
                remote.write_bytes(mark, b"")
            else:
                atomic_write_bytes(mark, b"")

    def blocks_done(self) -> set[int]:
        """The blocks marked written (their chunks are whole)."""
        root = remote.join(self.uri, DONE)
        if not exists(root):
            return set()
        return {int(n) for n in remote.list_below(root) if n.isdigit()}
