"""zarr arrays pystitch writes: the label codec, array creation, and reads and
writes that overlap (several chunks at once, the next block while this one is
worked on)."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.sync import sync as zarr_sync


#: compression for label arrays: labels are long runs of few values, which
#: bit-shuffled lz4 packs small and decodes fastest (see benchmarks/)
LABEL_CODEC = BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")


#: zarr's setting of its codec thread pool, as an environment variable
ZARR_THREADS_ENV = "ZARR_THREADING__MAX_WORKERS"


def set_codec_threads(threads: int | None = None) -> int:
    """Give zarr's codec thread pool of this process ``threads`` threads (None:
    the cores this process may run on, a batch job's allocation) instead of
    zarr's default, the node's cores + 4: more threads than cores only wait,
    and each one that allocates while another does gets a malloc arena of
    its own, which keeps its high-water mark.  A positive integer in
    ``ZARR_THREADING__MAX_WORKERS`` still decides.  Call it before zarr's
    first read or write (its pool is made then).  Returns the threads set."""
    value = os.environ.get(ZARR_THREADS_ENV, "").strip()
    if value.isdigit() and int(value) > 0:
        threads = int(value)
    elif threads is None:
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            threads = os.cpu_count() or 1
    threads = max(1, int(threads))
    zarr.config.set({"threading.max_workers": threads})
    return threads


def write_concurrently(writes: Sequence[tuple[zarr.Array, tuple[slice, ...], np.ndarray]]) -> None:
    """``array[region] = data`` for several (array, region, data) at once: the
    chunks are encoded and stored concurrently instead of one after another."""
    async def run() -> None:
        await asyncio.gather(*(arr.async_array.setitem(region, data) for arr, region, data in writes))

    zarr_sync(run())


def read_concurrently(reads: Sequence[tuple[zarr.Array, tuple[slice, ...]]]) -> list[np.ndarray]:
    """``[array[region] for array, region in reads]``, fetched and decoded
    concurrently (one round trip to zarr's event loop instead of one each)."""
    async def run() -> list[Any]:
        return await asyncio.gather(*(arr.async_array.getitem(region) for arr, region in reads))

    return [np.asarray(a) for a in zarr_sync(run())] if reads else []


def read_ahead(items: Sequence[Any], read: Callable[[Any], Any]) -> Iterator[tuple[Any, Any]]:
    """Yield ``(item, read(item))`` in order while the next item is already
    being read in a background thread (one read ahead: bounded memory)."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pystitch-read") as pool:
        nxt = pool.submit(read, items[0])
        for i, item in enumerate(items):
            data = nxt.result()
            if i + 1 < len(items):
                nxt = pool.submit(read, items[i + 1])
            yield item, data


class WriteBehind:
    """Run writes in a background thread, at most one in flight (the caller
    goes on with the next block meanwhile).  Leaving the ``with`` block waits
    for the last write and re-raises its error."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pystitch-write")
        self._pending: Future | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self.wait()
        self._pending = self._pool.submit(fn, *args)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def __enter__(self) -> "WriteBehind":
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if exc[0] is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True)


def dense(arr: zarr.Array) -> zarr.Array:
    """``arr`` for writing chunks that are known to hold labels: zarr stores
    each chunk without first comparing it with the fill value (numpy's
    ``array_equal`` over the whole chunk, which costs about twice the chunk's
    encoding).  pystitch writes no block without objects, so the comparison
    never skips a write; a chunk of zeros, if one is written, is stored as
    such and reads back the same."""
    return arr.with_config({"write_empty_chunks": True})


def create_group_array(group: zarr.Group, name: str, shape: Sequence[int], chunks: Sequence[int],
                       dtype: Any, attributes: dict | None = None, checksum: bool = False) -> zarr.Array:
    """A label array in ``group``; ``checksum`` adds a CRC32C of every encoded
    chunk, which zarr verifies when it reads the chunk (a flipped byte is an
    error, never other labels)."""
    return dense(group.create_array(
        name=name, shape=tuple(int(s) for s in shape), chunks=tuple(int(c) for c in chunks),
        dtype=np.dtype(dtype), fill_value=0, overwrite=True,
        compressors=[LABEL_CODEC, Crc32cCodec()] if checksum else [LABEL_CODEC], attributes=attributes or {},
    ))
