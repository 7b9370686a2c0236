"""Images the caller holds in memory: numpy arrays, dask arrays, zarr arrays.

The Python API takes what a scientist has at hand.  A ``zarr.Array`` on a
local disk is read in place (it becomes its store's path plus the array's
path: a plan like any other).  Anything else — a numpy array, a dask array,
a zarr array in memory or on another store — is an *in-memory input*:

* **Identity.**  It is named ``memory://<fingerprint>`` in the plan, where the
  fingerprint is a SHA-256 of its shape, dtype and bytes (read plane by
  plane, never copied whole; ~0.5 GB/s here) or, for a dask array, dask's
  own token of its graph (no computation).  The plan hash therefore follows
  the content: the same array run again resumes; other data is another plan.
* **Reading.**  The process that holds the array reads its blocks directly
  (:func:`registered` makes it known to :func:`open_memory`).  Worker
  processes cannot see the caller's memory: for them the runner copies the
  array, block by block, into a zarr store in the work directory
  (:func:`stage`) and tells each worker where it is.  A step CLI given such a
  plan in another process gets a clear error.

This module knows nothing of plans: the runner decides where a copy goes.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import InputError

SCHEME = "memory://"
#: attribute of a staged copy: the fingerprint it holds, written after the last chunk
STAGED_ATTR = "pystitch_staged_input"

#: in-memory inputs this process can read: uri -> array object, or the path of a staged copy
_KNOWN: dict[str, Any] = {}


def is_memory_uri(uri: str) -> bool:
    return isinstance(uri, str) and uri.startswith(SCHEME)


def local_zarr_location(array: Any) -> tuple[str, str | None] | None:
    """``(store root, array path)`` of a zarr array on a local disk, else None."""
    try:
        import zarr
        from zarr.storage import LocalStore
    except ImportError:  # pragma: no cover - zarr is a dependency
        return None
    if not isinstance(array, zarr.Array) or not isinstance(array.store, LocalStore):
        return None
    return str(array.store.root), (array.path or None)


def is_array_input(obj: Any) -> bool:
    """Whether ``obj`` is an array (numpy, dask, zarr, or anything with shape, dtype and slicing)
    rather than a path."""
    if isinstance(obj, (str, bytes, os.PathLike)):
        return False
    return all(hasattr(obj, a) for a in ("shape", "dtype", "__getitem__"))


def fingerprint(array: Any) -> str:
    """``memory://...``: the identity of an in-memory array (see the module doc)."""
    shape = tuple(int(n) for n in array.shape)
    dtype = np.dtype(array.dtype)
    kind = type(array).__module__.split(".")[0]
    if kind == "dask":
        import dask.base

        return f"{SCHEME}dask-{dask.base.tokenize(array)}"
    h = hashlib.sha256(f"{shape}|{dtype.str}".encode())
    if len(shape) == 0:
        h.update(np.ascontiguousarray(np.asarray(array)).tobytes())
    else:
        for i in range(shape[0]):
            h.update(np.ascontiguousarray(np.asarray(array[i]), dtype=dtype).data)
    return f"{SCHEME}sha256-{h.hexdigest()[:40]}"


class ArrayReader:
    """An in-memory array as :class:`~pystitch.storage.images.ImageSource`
    reads it: basic slicing (plus ``oindex`` for a list of channels) returning
    numpy arrays; no chunk cache (nothing to decode)."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape = tuple(int(n) for n in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)
        self.oindex = _OIndex(self)
        self.chunks = None

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(self.array[index])


class _OIndex:
    def __init__(self, reader: ArrayReader) -> None:
        self.reader = reader

    def __getitem__(self, index: tuple) -> np.ndarray:
        # slices and integers first (a view or a small read), then the lists
        basic = tuple(slice(None) if isinstance(i, list) else i for i in index)
        data = self.reader[basic]
        axis = 0
        for i in index:
            if isinstance(i, list):
                data = np.take(data, i, axis=axis)
            if not isinstance(i, (int, np.integer)):
                axis += 1
        return data


@contextmanager
def registered(uri: str, array: Any) -> Iterator[None]:
    """Make ``array`` readable as ``uri`` in this process inside the block."""
    old = _KNOWN.get(uri)
    _KNOWN[uri] = array
    try:
        yield
    finally:
        if old is None:
            _KNOWN.pop(uri, None)
        else:
            _KNOWN[uri] = old


def register_staged(copies: dict[str, str]) -> None:
    """In a worker process: where the staged copies of in-memory inputs are."""
    _KNOWN.update(copies)


def open_memory(uri: str) -> Any:
    """The array behind ``uri``: an :class:`ArrayReader`, or the staged zarr copy."""
    target = _KNOWN.get(uri)
    if target is None:
        raise InputError(
            f"The input of this plan is an in-memory array ({uri}) held by the Python process that planned it. "
            "Expected that process: run it with pystitch.run(array, ...) or pystitch.segment(array, ...); "
            "step CLIs and other processes read only images on disk."
        )
    if isinstance(target, str):
        import zarr

        return zarr.open_array(store=target, mode="r")
    return ArrayReader(target)


def staged_copy_valid(path: str, uri: str) -> bool:
    """Whether ``path`` holds a finished copy of the input ``uri``."""
    import zarr

    try:
        arr = zarr.open_array(store=path, mode="r")
    except Exception:
        return False
    return dict(arr.attrs).get(STAGED_ATTR) == uri


def stage(uri: str, array: Any, path: str, regions: Sequence[tuple[slice, ...]], chunks: Sequence[int]) -> str:
    """Copy ``array`` into a zarr store at ``path``, one region at a time
    (``regions`` cover the array: the blocks' cores, all axes), for worker
    processes to read.  The fingerprint is written last: a copy cut short is
    never taken for a finished one.  An existing finished copy is reused."""
    import zarr

    from .files import remove_path

    if staged_copy_valid(path, uri):
        return path
    remove_path(path)
    from zarr.codecs import BloscCodec

    # a scratch copy: the fastest codec (lz4 at level 1 wrote 54 MiB of uint16 in 0.4 s here, zstd 1.5 s)
    target = zarr.create_array(store=path, shape=tuple(int(n) for n in array.shape),
                               chunks=tuple(int(c) for c in chunks), dtype=np.dtype(array.dtype), zarr_format=3,
                               compressors=[BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")])
    for region in regions:
        target[region] = np.asarray(array[region])
    target.attrs[STAGED_ATTR] = uri
    return path
