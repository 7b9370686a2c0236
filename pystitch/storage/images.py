"""Opening input images.

Inputs: zarr v2 and v3 arrays (a path to an array, or to a group plus an
array path), OME-Zarr multiscale images (level 0 by default, any level
selectable, axes and voxel sizes from the metadata), TIFF / OME-TIFF /
ImageJ files read lazily through tifffile's zarr interface, images kept in
many TIFF files (a glob or folder of planes, a multi-file OME-TIFF set or its
``.companion.ome`` file: :mod:`.planes`) and vendor formats through bioio
(:mod:`.vendor`).  Whatever the container, an :class:`ImageSource` exposes
the 2-D or 3-D *spatial* grid and reads regions of it as numpy arrays, with
the selected channel(s) and time point applied.
"""

from __future__ import annotations

import itertools
import logging
import math
import mmap
import os
import re
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zarr

from ..errors import InputError, InputNotFoundError
from .memory import is_memory_uri, open_memory
from . import remote as _remote
from . import planes as _planes
from . import vendor as _vendor

log = logging.getLogger(__name__)

SPATIAL_AXES = "zyx"
#: dtypes an input image may have (label and intensity images alike)
SUPPORTED_KINDS = {"b": "bool", "u": "unsigned integer", "i": "signed integer", "f": "float"}
TIFF_SUFFIXES = _planes.TIFF_SUFFIXES
#: files that hold zarr metadata: a folder with one of them is a zarr store, not a folder of planes
_ZARR_FILES = ("zarr.json", ".zarray", ".zgroup", ".zattrs")


def is_url(uri: str) -> bool:
    return _remote.is_url(uri)


def absolute_uri(uri: str | os.PathLike) -> str:
    """Make a local path absolute (later steps run in other directories); keep URLs
    (normalised: ``s3://b//x/`` is ``s3://b/x``; ``file://`` URLs are paths)."""
    uri = _remote.normalise(os.fspath(uri))
    return uri if is_url(uri) else str(Path(uri).expanduser().resolve())


#: ``channel="all"``: every channel, channel-first (what ``convert`` reads)
ALL_CHANNELS = "all"


def _as_channel(value: Any) -> tuple[int, ...] | str | None:
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return (int(value),)
    if isinstance(value, str) and value.strip().lower() == ALL_CHANNELS:
        return ALL_CHANNELS
    if isinstance(value, str):
        parts = [p for p in re.split(r"[,\s]+", value.strip()) if p]
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            raise InputError(f"Expected channel index(es) such as 0 or 0,1. Got {value!r} instead.") from None
    return tuple(int(v) for v in value)


def _as_voxel_size(value: Any) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    parts = [p for p in re.split(r"[,\s]+", value.strip()) if p] if isinstance(value, str) else list(value)
    try:
        sizes = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        sizes = ()
    if not sizes or len(sizes) > 3 or not all(np.isfinite(v) and v > 0 for v in sizes):
        raise InputError(f"Expected --voxel-size as one positive number per spatial axis (e.g. 2,0.4,0.4). "
                         f"Got {value!r} instead.")
    return sizes


#: ImageSpec fields written to plan.json only when set (plans of other inputs keep their hash)
_OPTIONAL_FIELDS = ("pattern", "scene", "voxel_size", "unit")


@dataclass(frozen=True)
class ImageSpec:
    """Where an input image is and which part of it to segment.

    ``channel`` selects one or more indices on the channel axis (several for
    segmenters that take more than one channel, returned channel-first);
    ``channel_axis`` names that axis for arrays without axis metadata;
    ``timepoint`` selects on a time axis; ``level`` picks an OME-Zarr
    multiscale level or a TIFF pyramid level.  ``pattern`` maps the file
    names of a plane sequence to axes (:mod:`.planes`); ``scene`` picks a
    series, scene or position (index or name) of a multi-image file;
    ``voxel_size``/``unit`` replace (or supply) the metadata's.
    """

    uri: str
    array_path: str | None = None
    level: int | None = None
    channel: tuple[int, ...] | str | None = None
    channel_axis: int | None = None
    timepoint: int | None = None
    pattern: str | None = None
    scene: str | None = None
    voxel_size: tuple[float, ...] | None = None
    unit: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "uri", absolute_uri(self.uri))
        object.__setattr__(self, "channel", _as_channel(self.channel))
        object.__setattr__(self, "voxel_size", _as_voxel_size(self.voxel_size))
        for name in ("pattern", "scene", "unit"):
            value = getattr(self, name)
            object.__setattr__(self, name, None if value is None or str(value).strip() == "" else str(value).strip())
        for name in ("level", "channel_axis", "timepoint"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, np.integer, str)):
                    raise InputError(f"Expected an integer for {name}. Got {value!r} instead.")
                try:
                    object.__setattr__(self, name, int(value))
                except ValueError:
                    raise InputError(f"Expected an integer for {name}. Got {value!r} instead.") from None
        if self.level is not None and self.level < 0:
            raise InputError(f"Expected a level >= 0. Got {self.level} instead.")
        if self.array_path is not None:
            object.__setattr__(self, "array_path", str(self.array_path).strip("/") or None)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel"] = list(self.channel) if isinstance(self.channel, tuple) else self.channel
        if self.voxel_size is not None:
            d["voxel_size"] = list(self.voxel_size)
        for name in _OPTIONAL_FIELDS:
            if d[name] is None:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ImageSpec":
        return cls(**d)

    @classmethod
    def from_options(cls, image: "str | os.PathLike | ImageSpec", options: dict) -> "ImageSpec":
        """The spec of a command's input options (``pattern``, ``scene``,
        ``voxel_size`` and ``unit`` are taken out of ``options``; the other
        input options are read and left in place)."""
        extra = {name: options.pop(name, None) for name in _OPTIONAL_FIELDS}
        if isinstance(image, ImageSpec):
            return image
        return cls(uri=image, array_path=options.get("array_path"), level=options.get("level"),
                   channel=options.get("channel"), channel_axis=options.get("channel_axis"),
                   timepoint=options.get("timepoint"), **extra)


@dataclass
class ImageSource:
    """A lazily read input image reduced to its spatial axes.

    ``shape``/``axes`` are spatial only (``"yx"`` or ``"zyx"``);
    ``n_channels`` is the number of selected channels (``read`` returns
    ``(C, *spatial)`` when it is more than one).
    """

    spec: ImageSpec
    array: Any  # zarr.Array
    full_axes: str
    shape: tuple[int, ...]
    axes: str
    dtype: np.dtype
    voxel_size: tuple[float, ...] | None = None
    unit: str | None = None
    #: physical position of voxel 0 (OME-Zarr translation of the chosen level), None when unknown
    translation: tuple[float, ...] | None = None
    n_channels: int = 1
    levels: list[tuple[int, ...]] = field(default_factory=list)
    _index: tuple = ()
    _channel_pos: int | None = None
    _keep: Any = None  # keeps files open while the array is used (a TiffFile, a PlaneStack, a BioImage)
    #: decoded chunks of this opening (see :class:`ChunkCache`); None: no cache
    cache: "ChunkCache | None" = None
    #: names of the selected channels, when the metadata has them
    channel_names: tuple[str, ...] | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def describe(self) -> str:
        where = self.spec.uri + (f" (array {self.spec.array_path})" if self.spec.array_path else "")
        return f"{where}: axes {self.full_axes} shape {tuple(self.array.shape)} dtype {self.dtype}"

    def read(self, region: Sequence[slice]) -> np.ndarray:
        """Read a spatial region (one slice per spatial axis)."""
        if len(region) != self.ndim:
            raise InputError(f"Expected {self.ndim} slices for a {self.ndim}-D image. Got {len(region)} instead.")
        it = iter(region)
        index = tuple(next(it) if s is None else s for s in self._index)
        try:
            if any(isinstance(s, list) for s in index):
                data = self.array.oindex[index]
            elif self.cache is not None and self.cache.capacity > 0 and _regular_chunks(self.array) is not None:
                data = self.cache.read(self.array, index)
            else:
                data = self.array[index]
            data = np.asarray(data)
        except (InputError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # decoding and storage errors come in many types
            raise self._unreadable(index, exc) from exc
        if self._channel_pos is not None:
            data = np.moveaxis(data, self._channel_pos, 0)
        return data

    def _unreadable(self, index: tuple, exc: Exception) -> InputError:
        """A one-line error naming the first chunk of ``index`` that cannot be read."""
        chunks = _regular_chunks(self.array)
        key = None
        if chunks is not None:
            spans = []
            for ix, c, n in zip(index, chunks, self.array.shape):
                if isinstance(ix, slice):
                    start, stop, _ = ix.indices(n)
                    spans.append(range(start // c, max(start // c + 1, -(-stop // c))))
                elif isinstance(ix, list):
                    spans.append(sorted({int(i) // c for i in ix}))
                else:
                    spans.append([int(ix) // c])
            for coords in itertools.product(*spans):
                box = tuple(slice(g * c, min((g + 1) * c, n)) for g, c, n in zip(coords, chunks, self.array.shape))
                try:
                    self.array[box]
                except Exception as chunk_exc:  # noqa: BLE001 - this is the one
                    encode = getattr(getattr(self.array, "metadata", None), "encode_chunk_key", None)
                    key = encode(coords) if encode else "/".join(map(str, coords))
                    exc = chunk_exc
                    break
        where = f"chunk {key} of {self.spec.uri}" if key is not None else f"{self.spec.uri}"
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return InputError(f"Could not read {where} ({type(exc).__name__}{': ' + detail if detail else ''}): "
                          "the image is damaged or unreadable there.")

    def chunks_touched(self, regions: Sequence[Sequence[slice]]) -> set[tuple]:
        """The chunks of the array that reading ``regions`` (spatial) reads through the cache."""
        chunks = _regular_chunks(self.array)
        if chunks is None:
            return set()
        touched: set[tuple] = set()
        for region in regions:
            it = iter(region)
            index = tuple(next(it) if s is None else s for s in self._index)
            spans = []
            for ix, c, n in zip(index, chunks, self.array.shape):
                if isinstance(ix, slice):
                    start, stop, _ = ix.indices(n)
                    spans.append(range(start // c, max(start // c + 1, -(-stop // c))))
                elif isinstance(ix, list):
                    spans.append(sorted({int(i) // c for i in ix}))
                else:
                    spans.append([int(ix) // c])
            touched.update(itertools.product(*spans))
        return touched

    def size_cache(self, regions: Sequence[Sequence[slice]]) -> int:
        """Size the chunk cache to hold every chunk that reading ``regions``
        touches (a task's blocks, read in turn), at most :data:`CACHE_CAP_MB`,
        so that the task decodes each chunk once and holds no more; a fixed
        ``PYSTITCH_READ_CACHE_MB`` is kept.  Returns the capacity in bytes."""
        if self.cache is None:
            return 0
        touched = self.chunks_touched(regions)
        for key in touched & self.cache.chunks.keys():  # what the task reuses is dropped last
            self.cache.chunks.move_to_end(key)
        fixed = cache_override()
        if fixed is not None:
            self.cache.resize(fixed)
        else:
            chunk_bytes = math.prod(_regular_chunks(self.array) or (0,)) * np.dtype(self.array.dtype).itemsize
            self.cache.resize(min(CACHE_CAP_MB * 2 ** 20, len(touched) * chunk_bytes))
        return self.cache.capacity

    def close(self) -> None:
        if self._keep is not None:
            close = getattr(self._keep, "close", None)
            if close is not None:
                close()
            self._keep = None


# --------------------------------------------------------------------------- chunk cache


def _regular_chunks(array: Any) -> tuple[int, ...] | None:
    try:
        chunks = array.chunks
    except (AttributeError, NotImplementedError, TypeError):
        return None
    return tuple(int(c) for c in chunks) if chunks and len(chunks) == array.ndim else None


#: kept chunks at least this large get pages of their own (:func:`_own_pages`)
OWN_PAGES_BYTES = 2 ** 20
#: chunks of a local image decoded at once when a block needs several: each
#: one decoding holds its encoded bytes, its decoded bytes and zarr's copy of
#: them, so a block needing 27 chunks at once held ~3x them on top of the cache
LOCAL_DECODES_AT_ONCE = 2


#: a private anonymous mapping, its pages made at once (Linux): one call
#: instead of a page fault per 4 KiB while the chunk is copied in, and no
#: shared-memory object behind it (half the time of ``mmap.mmap(-1, n)``'s
#: shared mapping for a 4 MiB chunk)
_OWN_PAGES_FLAGS = (mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
                    if hasattr(mmap, "MAP_ANONYMOUS") else None)


def _own_pages(data: np.ndarray) -> np.ndarray:
    """``data`` copied into an anonymous memory map of its own when it is at
    least :data:`OWN_PAGES_BYTES`: a chunk kept in the cache outlives many
    allocations made after it, and left on the heap it pins the memory around
    it; its own mapping goes back to the system the moment it is dropped."""
    if data.nbytes < OWN_PAGES_BYTES:
        return data
    pages = (mmap.mmap(-1, data.nbytes) if _OWN_PAGES_FLAGS is None
             else mmap.mmap(-1, data.nbytes, flags=_OWN_PAGES_FLAGS))
    own = np.frombuffer(pages, dtype=data.dtype).reshape(data.shape)
    np.copyto(own, data)
    return own


class ChunkCache:
    """Decoded chunks of one opened image, least recently used dropped first.

    Blocks read their core plus a halo, so neighbouring blocks read the same
    chunks: without a cache a chunk-sized block decodes up to 3**ndim chunks.
    A task that keeps the image open while it processes neighbouring blocks
    in order (the local runner's workers, a workflow's batches of consecutive
    ids) decodes each chunk about once.  The cache belongs to one opening of
    the image, so a later opening never sees chunks of an image rewritten in
    between.  A task sizes it to the chunks its blocks touch
    (:meth:`ImageSource.size_cache`); ``PYSTITCH_READ_CACHE_MB`` fixes its
    size instead (0 disables it).  ``decoded`` counts the chunks read from the
    image and ``peak`` is the most it held (bytes).
    """

    def __init__(self, capacity_bytes: int, at_once: int | None = LOCAL_DECODES_AT_ONCE) -> None:
        self.capacity = capacity_bytes
        #: missing chunks decoded concurrently (None: all a request needs at
        #: once, for URLs, where each one waits on the network)
        self.at_once = at_once
        self.used = 0
        self.peak = 0
        self.decoded = 0
        self.chunks: "OrderedDict[tuple, np.ndarray]" = OrderedDict()

    def clear(self) -> None:
        self.chunks.clear()
        self.used = 0

    def resize(self, capacity_bytes: int) -> None:
        """Hold at most ``capacity_bytes`` from now on (the least recently used dropped first)."""
        self.capacity = capacity_bytes
        self._evict()

    def _evict(self) -> None:
        while self.used > self.capacity:
            _, old = self.chunks.popitem(last=False)
            self.used -= old.nbytes

    def _put(self, key: tuple, data: np.ndarray) -> None:
        if data.nbytes > self.capacity:
            return
        self.chunks[key] = _own_pages(data)
        self.used += data.nbytes
        self._evict()
        self.peak = max(self.peak, self.used)

    def read(self, array: Any, index: tuple) -> np.ndarray:
        """``array[index]`` for an index of slices and integers, from cached chunks."""
        chunks = _regular_chunks(array)
        assert chunks is not None
        shape = array.shape
        spans = []   # per axis: (first chunk, last chunk + 1)
        for ix, c, n in zip(index, chunks, shape):
            if isinstance(ix, slice):
                start, stop, _ = ix.indices(n)
                spans.append((start // c, max(start // c + 1, -(-stop // c))))
            else:
                spans.append((int(ix) // c, int(ix) // c + 1))
        grid = list(itertools.product(*(range(a, b) for a, b in spans)))
        missing = []
        for g in grid:  # the cached ones this request uses are the most recently used: never dropped for it
            if g in self.chunks:
                self.chunks.move_to_end(g)
            else:
                missing.append(g)
        if missing:
            self.decoded += len(missing)
            # each missing chunk read on its own (concurrently from zarr): no box
            # around them to hold and copy out of, no chunk read that is cached already
            regions = [tuple(slice(gi * c, min((gi + 1) * c, n)) for gi, c, n in zip(g, chunks, shape))
                       for g in missing]
            if isinstance(array, zarr.Array):
                from .zarrs import read_concurrently

                step = self.at_once or len(regions)
                parts = [part for i in range(0, len(regions), step)
                         for part in read_concurrently([(array, r) for r in regions[i:i + step]])]
            else:
                parts = [np.asarray(array[r]) for r in regions]
            for g, part in zip(missing, parts):
                self._put(g, part)
            if any(g not in self.chunks for g in grid):
                return np.asarray(array[index])  # the request is larger than the cache
        out_shape = [len(range(*ix.indices(n))) for ix, n in zip(index, shape) if isinstance(ix, slice)]
        out = np.empty(out_shape, dtype=array.dtype)
        for g in grid:
            chunk = self.chunks[g]
            self.chunks.move_to_end(g)
            src, dst = [], []
            for ix, gi, c, n in zip(index, g, chunks, shape):
                c0 = gi * c
                if isinstance(ix, slice):
                    start, stop, _ = ix.indices(n)
                    lo_, hi_ = max(start, c0), min(stop, c0 + c)
                    src.append(slice(lo_ - c0, hi_ - c0))
                    dst.append(slice(lo_ - start, hi_ - start))
                else:
                    src.append(int(ix) - c0)
            out[tuple(dst)] = chunk[tuple(src)]
        return out


#: the most a chunk cache holds (MiB) when ``PYSTITCH_READ_CACHE_MB`` does not fix its size
CACHE_CAP_MB = 256


def cache_override() -> int | None:
    """Bytes of every chunk cache as ``PYSTITCH_READ_CACHE_MB`` fixes it; None when it is not set."""
    text = os.environ.get("PYSTITCH_READ_CACHE_MB", "").strip()
    if not text:
        return None
    try:
        mb = float(text)
    except ValueError:
        raise InputError(f"Expected PYSTITCH_READ_CACHE_MB to be a number of MiB. Got {text!r} instead.") from None
    return max(0, int(mb * 2 ** 20))


def cache_capacity() -> int:
    """The most bytes the chunk cache of an opened image holds: ``PYSTITCH_READ_CACHE_MB``
    when set, else :data:`CACHE_CAP_MB` (a task sizes it down to what its blocks touch)."""
    fixed = cache_override()
    return CACHE_CAP_MB * 2 ** 20 if fixed is None else fixed


# --------------------------------------------------------------------------- opening


def open_image(spec: ImageSpec | str, *, cache: bool = True, **kwargs: Any) -> ImageSource:
    """Open an input image.  ``spec`` may be an :class:`ImageSpec` or a path/URI
    with the other :class:`ImageSpec` fields as keyword arguments.  ``cache``:
    keep decoded chunks while the image is open (see :class:`ChunkCache`)."""
    if not isinstance(spec, ImageSpec):
        spec = ImageSpec(uri=spec, **kwargs)
    source = _open_any(spec)
    if spec.voxel_size is not None:
        if len(spec.voxel_size) != source.ndim:
            source.close()
            raise InputError(f"Expected --voxel-size with {source.ndim} values (axes {source.axes}) for "
                             f"{spec.uri}. Got {','.join(f'{v:g}' for v in spec.voxel_size)} instead.")
        source.voxel_size = spec.voxel_size
        source.unit = spec.unit or source.unit or "micrometer"
    elif spec.unit is not None:
        source.unit = spec.unit
    capacity = cache_capacity() if cache else 0
    if capacity:
        source.cache = ChunkCache(capacity, at_once=None if is_url(spec.uri) else LOCAL_DECODES_AT_ONCE)
    return source


#: what an input can be, for error messages
KINDS = ("a zarr / OME-Zarr store, a TIFF / OME-TIFF file, a glob or folder of TIFF planes, an OME companion "
         f"file ({_planes.COMPANION_SUFFIX}) or a vendor file ({', '.join(_vendor.VENDOR_READERS)}) read by bioio")


def _open_any(spec: ImageSpec) -> ImageSource:
    """Dispatch on what ``spec.uri`` is: URL, glob, folder, file extension."""
    uri = spec.uri
    if is_memory_uri(uri):  # an array the caller holds in memory (pystitch.run / segment)
        array = open_memory(uri)
        return _make_source(spec, array, _default_axes(array.shape, spec), None, None)
    if is_url(uri):
        _remote.check_scheme(uri, "input image")
        return _open_zarr(spec)
    path = Path(uri)
    if not path.exists():
        if _planes.is_glob(uri):
            return _open_planes(spec)
        raise InputNotFoundError(f"Input image not found: {uri}. Expected {KINDS}.")
    if spec.pattern is not None and not path.is_dir():
        raise InputError(f"--pattern is for a glob or folder of TIFF planes. Got the file {uri} instead.")
    if path.is_dir():
        if any((path / name).exists() for name in _ZARR_FILES) or spec.array_path:
            return _open_zarr(spec)
        if any(_planes.is_tiff_name(p.name) for p in path.iterdir()):
            return _open_planes(spec)
        return _open_zarr(spec)
    lower = uri.lower()
    if lower.endswith(_planes.COMPANION_SUFFIX):
        return _open_ome_files(spec)
    if lower.endswith(TIFF_SUFFIXES):
        if _is_multifile_ome(uri):
            return _open_ome_files(spec)
        return _open_tiff(spec)
    if _vendor.vendor_suffix(uri):
        return _open_vendor(spec)
    raise InputError(f"Unknown image file type: {uri} (extension {path.suffix or 'none'}). Expected {KINDS}.")


def _no_level(spec: ImageSpec, what: str) -> None:
    if spec.level not in (None, 0):
        raise InputError(f"level {spec.level} was requested but {spec.uri} ({what}) has a single level.")


def _open_planes(spec: ImageSpec) -> ImageSource:
    _no_level(spec, "a plane sequence")
    if spec.scene is not None:
        raise InputError(f"--scene is for files with several images. Got a plane sequence ({spec.uri}) instead.")
    stack, axes, info = _planes.open_sequence(spec.uri, spec.pattern)
    return _from_stack(spec, stack, axes, info)


def _open_ome_files(spec: ImageSpec) -> ImageSource:
    _no_level(spec, "a multi-file OME-TIFF")
    stack, axes, info = _planes.open_ome_files(spec.uri, spec.scene)
    return _from_stack(spec, stack, axes, info)


def _from_stack(spec: ImageSpec, stack: Any, axes: str, info: dict) -> ImageSource:
    try:
        if spec.channel_axis is not None and "c" not in axes:
            axes = _default_axes(stack.shape, spec)
        src = _make_source(spec, stack, axes, info.get("voxel_size"), info.get("unit"), keep=stack)
        src.channel_names = _selected_names(info.get("channel_names"), src)
        return src
    except Exception:
        stack.close()
        raise


def _open_vendor(spec: ImageSpec) -> ImageSource:
    _no_level(spec, "a vendor file read by bioio")
    image, array, axes, info = _vendor.open_vendor(spec.uri, spec.scene)
    src = _make_source(spec, array, axes, info.get("voxel_size"), info.get("unit"), keep=image)
    src.channel_names = _selected_names(info.get("channel_names"), src)
    return src


def _selected_names(names: Sequence[str] | None, src: ImageSource) -> tuple[str, ...] | None:
    if not names or "c" not in src.full_axes:
        return None
    ix = src._index[src.full_axes.index("c")]
    chosen = ix if isinstance(ix, list) else [ix]
    if not isinstance(ix, (int, list)) or max(chosen) >= len(names):
        return None
    return tuple(str(names[i]) for i in chosen)


def _is_multifile_ome(path: str) -> bool:
    """An OME-TIFF whose metadata places planes in other files (or in a companion file)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            xml = tf.pages[0].description if tf.pages and tf.is_ome else ""
            if not xml and tf.pages:
                desc = tf.pages[0].description or ""
                xml = desc if "BinaryOnly" in desc else ""
    except Exception:
        return False
    return bool(xml) and _planes.ome_references_other_files(xml, Path(path).name)


def _check_dtype(dtype: np.dtype, where: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind not in SUPPORTED_KINDS:
        raise InputError(
            f"Expected an image of bool, integer or float values. Got dtype {dtype} instead ({where})."
        )
    return dtype


def _open_zarr(spec: ImageSpec) -> ImageSource:
    try:
        node = zarr.open(store=spec.uri, mode="r", **_remote.zarr_kwargs(spec.uri))
    except Exception as exc:  # zarr raises several unrelated types here
        raise InputError(
            f"Could not open {spec.uri} as a zarr array or group ({type(exc).__name__}: {exc}). "
            "Expected a zarr v2/v3 array, a group with --array-path, an OME-Zarr image or a TIFF file."
        ) from exc
    if spec.array_path:
        if not isinstance(node, zarr.Group):
            raise InputError(
                f"No array or group {spec.array_path!r} in {spec.uri}: it is a single array. "
                "Expected --array-path only for a zarr group."
            )
        try:
            node = node[spec.array_path]
        except (KeyError, TypeError) as exc:
            raise InputError(f"No array or group {spec.array_path!r} in {spec.uri}.") from exc
    if isinstance(node, zarr.Group):
        multiscales = _multiscales(node)
        if multiscales is None:
            members = sorted(k for k, _ in node.members(max_depth=None) if isinstance(node[k], zarr.Array))
            raise InputError(
                f"{spec.uri} is a zarr group without OME-Zarr multiscales metadata. Expected an array: "
                f"give the array path (--array-path), one of: {', '.join(members[:10]) or '(no arrays)'}."
            )
        return _from_multiscales(spec, node, multiscales)
    if spec.level not in (None, 0):
        raise InputError(f"level {spec.level} was requested but {spec.uri} is a single array, not a multiscale image.")
    axes = _default_axes(node.shape, spec)
    return _make_source(spec, node, axes, None, None)


def _multiscales(group: zarr.Group) -> list | None:
    attrs = dict(group.attrs)
    if "ome" in attrs and isinstance(attrs["ome"], dict):  # NGFF 0.5 (zarr v3)
        attrs = attrs["ome"]
    ms = attrs.get("multiscales")
    return ms if isinstance(ms, list) and ms else None


def _axis_names(ms: dict, ndim: int) -> tuple[str, list[str | None]]:
    axes = ms.get("axes")
    if axes is None:  # NGFF 0.1 / 0.2: always 5-D tczyx
        names = "tczyx"[-ndim:]
        return names, [None] * ndim
    names, units = [], []
    for a in axes:
        if isinstance(a, dict):
            names.append(str(a.get("name", "?")).lower()[:1])
            units.append(a.get("unit"))
        else:
            names.append(str(a).lower()[:1])
            units.append(None)
    return "".join(names), units


def _scale_of(transforms: list | None, ndim: int, where: str = "the metadata") -> np.ndarray:
    scale = np.ones(ndim)
    for t in transforms or []:
        if t.get("type") == "scale" and "scale" in t:
            try:
                values = np.asarray(t["scale"], dtype=float)
            except (TypeError, ValueError):
                raise InputError(f"Expected numbers in the scale of {where}. Got {t['scale']!r} instead.") from None
            if values.shape != (ndim,):
                raise InputError(f"Expected a scale with {ndim} values (one per axis) in {where}. "
                                 f"Got {t['scale']!r} instead.")
            if not np.all(np.isfinite(values)) or np.any(values <= 0):
                raise InputError(f"Expected scale values > 0 in {where}. Got {t['scale']!r} instead.")
            scale = scale * values
    return scale


def _translation_of(transforms: list | None, ndim: int, where: str = "the metadata") -> np.ndarray:
    """The translation of NGFF coordinate transformations (scale first, then translation)."""
    shift = np.zeros(ndim)
    for t in transforms or []:
        if t.get("type") == "translation" and "translation" in t:
            try:
                values = np.asarray(t["translation"], dtype=float)
            except (TypeError, ValueError):
                raise InputError(f"Expected numbers in the translation of {where}. "
                                 f"Got {t['translation']!r} instead.") from None
            if values.shape != (ndim,) or not np.all(np.isfinite(values)):
                raise InputError(f"Expected a translation with {ndim} finite values (one per axis) in {where}. "
                                 f"Got {t['translation']!r} instead.")
            shift = shift + values
    return shift


def _from_multiscales(spec: ImageSpec, group: zarr.Group, multiscales: list) -> ImageSource:
    ms = multiscales[0]
    datasets = ms.get("datasets", [])
    level = spec.level or 0
    if not 0 <= level < len(datasets):
        raise InputError(
            f"Expected a multiscale level between 0 and {len(datasets) - 1}. Got {level} instead ({spec.uri})."
        )
    try:
        arrays = [group[d["path"]] for d in datasets]
    except KeyError as exc:
        raise InputError(f"OME-Zarr metadata of {spec.uri} names a missing dataset: {exc}") from exc
    array = arrays[level]
    axes, units = _axis_names(ms, array.ndim)
    if len(axes) != array.ndim:
        raise InputError(
            f"OME-Zarr metadata of {spec.uri} lists {len(axes)} axes ({axes}) but level {level} has "
            f"{array.ndim} dimensions."
        )
    where = f"the OME-Zarr metadata of {spec.uri} (level {level})"
    # the level's transformations, then the multiscale's: x -> S_ms (S_k x + T_k) + T_ms
    level_t = datasets[level].get("coordinateTransformations")
    ms_t = ms.get("coordinateTransformations")
    ms_scale = _scale_of(ms_t, array.ndim, where)
    scale = _scale_of(level_t, array.ndim, where) * ms_scale
    shift = _translation_of(level_t, array.ndim, where) * ms_scale + _translation_of(ms_t, array.ndim, where)
    spatial = [i for i, a in enumerate(axes) if a in SPATIAL_AXES]
    voxel = tuple(float(scale[i]) for i in spatial)
    unit_set = {units[i] for i in spatial if units[i]}
    unit = unit_set.pop() if len(unit_set) == 1 else None
    src = _make_source(spec, array, axes, voxel, unit)
    src.levels = [tuple(int(a.shape[i]) for i in spatial) for a in arrays]
    if any(shift[i] != 0 for i in spatial):
        src.translation = tuple(float(shift[i]) for i in spatial)
    return src


def _default_axes(shape: Sequence[int], spec: ImageSpec) -> str:
    """Axis names for an array without metadata: spatial ``yx``/``zyx`` plus a
    channel axis when ``channel_axis`` is given."""
    ndim = len(shape)
    if spec.channel_axis is not None:
        ca = spec.channel_axis
        if not -ndim <= ca < ndim:
            raise InputError(
                f"Expected a channel axis between {-ndim} and {ndim - 1} for an array of shape "
                f"{tuple(shape)}. Got {ca} instead ({spec.uri})."
            )
        ca %= ndim
        n_spatial = ndim - 1
        if n_spatial not in (2, 3):
            raise InputError(
                f"Expected a 2-D or 3-D image plus one channel axis. Got shape {tuple(shape)} "
                f"with channel axis {ca} instead ({spec.uri})."
            )
        spatial = SPATIAL_AXES[-n_spatial:]
        return spatial[:ca] + "c" + spatial[ca:]
    if ndim not in (2, 3):
        raise InputError(
            f"Expected a 2-D or 3-D image. Got an array of shape {tuple(shape)} instead ({spec.uri}); "
            "for a multi-channel array give --channel-axis and --channel."
        )
    return SPATIAL_AXES[-ndim:]


def _make_source(spec: ImageSpec, array: Any, axes: str, voxel: tuple | None, unit: str | None,
                 keep: Any = None) -> ImageSource:
    where = f"{spec.uri}" + (f" (array {spec.array_path})" if spec.array_path else "")
    dtype = _check_dtype(array.dtype, where)
    index: list = []
    channel_pos = None
    n_channels = 1
    out_pos = 0
    spatial_shape = []
    for ax, size in zip(axes, array.shape):
        if ax in SPATIAL_AXES:
            index.append(None)
            spatial_shape.append(int(size))
            out_pos += 1
        elif ax == "c":
            sel = spec.channel
            if sel == ALL_CHANNELS:
                sel = tuple(range(size))
            if sel is None:
                if size != 1:
                    raise InputError(
                        f"{where} has {size} channels (axis 'c'). Expected a channel choice: give --channel "
                        f"(one index, or several for segmenters that use more than one)."
                    )
                sel = (0,)
            for c in sel:
                if not 0 <= c < size:
                    raise InputError(
                        f"Expected channel indices between 0 and {size - 1}. Got {c} instead ({where} has "
                        f"{size} channels)."
                    )
            if len(sel) == 1:
                index.append(int(sel[0]))
            else:
                index.append(list(sel))
                channel_pos = out_pos
                n_channels = len(sel)
                out_pos += 1
        elif ax == "t":
            t = spec.timepoint
            if t is None:
                if size != 1:
                    raise InputError(f"{where} has {size} time points. Expected a choice: give --timepoint.")
                t = 0
            if not 0 <= t < size:
                raise InputError(f"Expected a time point between 0 and {size - 1}. Got {t} instead ({where}).")
            index.append(int(t))
        else:
            if size != 1:
                raise InputError(
                    f"{where} has a non-spatial axis {ax!r} of size {size} (axes {axes}). Expected spatial "
                    "axes z, y, x plus optional c and t."
                )
            index.append(0)
    if spec.timepoint is not None and "t" not in axes:
        raise InputError(
            f"--timepoint was given but {where} has no time axis (axes {axes}). Expected --timepoint only for "
            "images with a t axis."
        )
    if spec.channel is not None and spec.channel != ALL_CHANNELS and "c" not in axes:
        raise InputError(
            f"--channel was given but {where} has no channel axis (axes {axes}); give --channel-axis for "
            "arrays without axis metadata."
        )
    if len(spatial_shape) not in (2, 3):
        raise InputError(
            f"Expected a 2-D or 3-D image. Got {len(spatial_shape)} spatial axes instead ({where}, axes {axes})."
        )
    spatial_axes = "".join(a for a in axes if a in SPATIAL_AXES)
    if voxel is not None and len(voxel) != len(spatial_shape):
        voxel = None
    return ImageSource(
        spec=spec, array=array, full_axes=axes, shape=tuple(spatial_shape), axes=spatial_axes,
        dtype=dtype, voxel_size=voxel, unit=unit, n_channels=n_channels,
        levels=[tuple(spatial_shape)], _index=tuple(index), _channel_pos=channel_pos, _keep=keep,
    )


# --------------------------------------------------------------------------- TIFF

_TIFF_AXES = {"Z": "z", "Y": "y", "X": "x", "C": "c", "S": "c", "T": "t"}


def _open_tiff(spec: ImageSpec) -> ImageSource:
    import tifffile

    try:
        tf = tifffile.TiffFile(spec.uri)
    except Exception as exc:
        raise InputError(f"Could not read {spec.uri} as a TIFF file ({type(exc).__name__}: {exc}).") from exc
    try:
        names = [s.name or f"series {i}" for i, s in enumerate(tf.series)]
        series = tf.series[_planes.select_scene(names, spec.scene, spec.uri)]
        level = spec.level or 0
        if not 0 <= level < len(series.levels):
            raise InputError(
                f"Expected a pyramid level between 0 and {len(series.levels) - 1}. Got {level} instead ({spec.uri})."
            )
        array = zarr.open(store=series.aszarr(level=level), mode="r")
        axes = _tiff_axes(series.axes)
        if spec.channel_axis is not None and "c" not in axes:
            axes = _default_axes(array.shape, spec)
        voxel, unit = _tiff_voxel_size(tf, axes, tf.series.index(series))
        src = _make_source(spec, array, axes, voxel, unit, keep=tf)
        if tf.is_ome and tf.ome_metadata:
            images, _ = _planes.parse_ome(tf.ome_metadata, spec.uri)
            k = tf.series.index(series)
            if k < len(images) and images[k].channel_names and all(images[k].channel_names):
                src.channel_names = _selected_names(images[k].channel_names, src)
        src.levels = [tuple(int(s) for a, s in zip(axes, lv.shape) if a in SPATIAL_AXES)
                      for lv in series.levels]
        return src
    except Exception:
        tf.close()
        raise


def _tiff_axes(tiff_axes: str) -> str:
    names = [_TIFF_AXES.get(a, "?") for a in tiff_axes.upper()]
    # a plain multi-page file reports its page axis as I or Q: treat it as z
    if "z" not in names and sum(n == "?" for n in names) == 1 and len(names) == 3:
        names[names.index("?")] = "z"
    return "".join(names)


def _tiff_voxel_size(tf: Any, axes: str, series: int = 0) -> tuple[tuple | None, str | None]:
    spatial = [a for a in axes if a in SPATIAL_AXES]
    try:
        if tf.is_ome and tf.ome_metadata:
            root = ET.fromstring(tf.ome_metadata)
            all_pixels = [el for el in root.iter() if el.tag.endswith("Pixels")]
            pixels = all_pixels[series] if series < len(all_pixels) else all_pixels[0]
            sizes = {a: pixels.get(f"PhysicalSize{a.upper()}") for a in "zyx"}
            units = {pixels.get(f"PhysicalSize{a.upper()}Unit", "µm") for a in spatial if sizes[a]}
            if all(sizes[a] for a in spatial):
                return tuple(float(sizes[a]) for a in spatial), (units.pop() if len(units) == 1 else None)
        if tf.is_imagej and tf.imagej_metadata:
            meta = tf.imagej_metadata
            page = tf.pages[0]
            xr = page.tags.get("XResolution")
            yr = page.tags.get("YResolution")
            if xr and yr:
                x = xr.value[1] / xr.value[0]
                y = yr.value[1] / yr.value[0]
                sizes = {"x": x, "y": y, "z": float(meta.get("spacing", 1.0))}
                return tuple(float(sizes[a]) for a in spatial), meta.get("unit")
    except Exception as exc:  # metadata is optional: never fail a run on it
        log.warning("could not read voxel sizes from %s: %s", tf.filehandle.path, exc)
    return None, None
