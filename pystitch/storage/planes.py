"""Images stored as many TIFF files: plane sequences and multi-file OME-TIFF.

A :class:`PlaneStack` is a zarr-like, read-only array whose leading axes
(z, c, t) pick a file (and a page of it) and whose last axes are a page's
plane.  It opens each file when a read first needs it and keeps it open (up
to :data:`MAX_OPEN_FILES`) for as long as the stack is open, so a task that
reads many blocks opens every file once.  A read decodes only what it needs:
uncompressed pages are memory-mapped (a window of a plane touches only its
own rows), compressed ones are read through tifffile's zarr interface, strip
by strip or tile by tile (the strips are then the ``chunks`` that the
image's chunk cache keeps).

Two ways to get a stack:

* :func:`open_sequence`: a glob (``stack/plane_*.tif``) or a folder of TIFF
  files, in natural sort order (``plane_2`` before ``plane_10``).  Without a
  pattern the file order is z; a pattern maps file names to axes, either
  with placeholders (``plane_{z}_ch{c}.tif``; a placeholder matches digits,
  or a name such as ``DAPI``, which becomes the channel's name) or in
  tifffile's regular-expression syntax (``_(z)(\\d+)_(c)(\\d+)``).  Each file
  may itself hold a 2-D plane, a z-stack or channels (tifffile's series
  axes).
* :func:`open_ome_files`: the planes that OME-XML metadata (of an OME-TIFF
  file, or of a ``.companion.ome`` file) places in several TIFF files.

Planes of a different shape or dtype than the first file's are an error
naming the offending file, raised when that file is first read (checking
every file's header at each opening would cost every task a pass over the
whole folder).
"""

from __future__ import annotations

import glob
import logging
import os
import re
import resource
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError, InputNotFoundError

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf2", ".tf8", ".lsm")
GLOB_CHARS = "*?["
COMPANION_SUFFIX = ".companion.ome"
#: axis names a file-name pattern may give
PATTERN_AXES = "zct"
#: tifffile's axis codes -> pystitch's axes (S: samples of an RGB plane, read as channels)
TIFF_AXES = {"Z": "z", "Y": "y", "X": "x", "C": "c", "S": "c", "T": "t"}


def _max_open_files() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(8, min(512, (soft if soft > 0 else 1024) // 4))


#: files a stack keeps open at once (least recently used closed first)
MAX_OPEN_FILES = _max_open_files()


def is_glob(uri: str) -> bool:
    return any(ch in uri for ch in GLOB_CHARS)


def is_tiff_name(name: str) -> bool:
    return name.lower().endswith(TIFF_SUFFIXES)


def natural_key(text: str) -> list:
    """Sort key: digit runs compare as numbers (``plane_2`` before ``plane_10``).

    >>> sorted(["p10.tif", "p2.tif", "p1.tif"], key=natural_key)
    ['p1.tif', 'p2.tif', 'p10.tif']
    """
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", text)]


# --------------------------------------------------------------------------- reading files


@dataclass
class _Page:
    """Where one plane is: a file and, inside it, either the index of a page
    of its first series (``series_index``) or an IFD number (``ifd``)."""

    file: int
    series_index: tuple[int, ...] | None = None
    ifd: int | None = None


class _OpenFile:
    """One opened TIFF file and the readers of its planes."""

    def __init__(self, path: str, series: int | None) -> None:
        import tifffile

        self.path = path
        try:
            self.tf = tifffile.TiffFile(path)
        except FileNotFoundError:
            raise InputNotFoundError(f"Plane file not found: {path} (it was listed when the image was opened).") \
                from None
        except Exception as exc:
            raise InputError(f"Could not read {path} as a TIFF file ({type(exc).__name__}: {exc}).") from exc
        self.series_no = series
        self._series_array: Any = None
        self._pages: dict[int, Any] = {}

    def series(self) -> Any:
        return self.tf.series[self.series_no or 0]

    def series_array(self) -> Any:
        """The first series as an array (memory-mapped when it is stored uncompressed in one piece)."""
        if self._series_array is None:
            s = self.series()
            arr = _memmap(self.path, self.tf, s.dataoffset, s.shape, s.dtype)
            self._series_array = arr if arr is not None else _zarr(s.aszarr())
        return self._series_array

    def page_array(self, ifd: int) -> Any:
        arr = self._pages.get(ifd)
        if arr is None:
            try:
                page = self.tf.pages[ifd]
            except IndexError:
                raise InputError(f"{self.path} has no page (IFD) {ifd}; its OME metadata says it holds that plane.") \
                    from None
            offset = page.dataoffsets[0] if page.is_memmappable else None
            arr = _memmap(self.path, self.tf, offset, page.shape, page.dtype)
            arr = self._pages[ifd] = arr if arr is not None else _zarr(page.aszarr())
        return arr

    def close(self) -> None:
        self.tf.close()


def _memmap(path: str, tf: Any, offset: int | None, shape: Sequence[int], dtype: Any) -> np.ndarray | None:
    if offset is None or not tf.filehandle.is_file:
        return None
    dtype = np.dtype(dtype).newbyteorder(tf.byteorder)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape))


def _zarr(store: Any) -> Any:
    import zarr

    return zarr.open(store=store, mode="r")


class PlaneStack:
    """A read-only N-D array over planes kept in TIFF files (see the module doc).

    ``lead_shape`` indexes ``pages`` (one :class:`_Page` per plane; the page
    arrays of every file must have ``plane_shape`` and ``dtype``).  Indexing
    takes integers, slices of step 1 and, on the leading axes, lists (like
    zarr's ``oindex``).  ``opened`` counts how often each file was opened.
    """

    def __init__(self, files: Sequence[str], lead_shape: Sequence[int], pages: np.ndarray,
                 plane_shape: Sequence[int], dtype: Any, chunks: tuple[int, ...] | None, where: str,
                 series: int | None = None) -> None:
        self.files = list(files)
        self.lead_shape = tuple(int(s) for s in lead_shape)
        self.plane_shape = tuple(int(s) for s in plane_shape)
        self.shape = self.lead_shape + self.plane_shape
        self.ndim = len(self.shape)
        self.dtype = np.dtype(dtype)
        self.pages = pages
        self.where = where
        self.series = series
        #: the chunk cache's unit: one strip/tile of one plane (None: memory-mapped, no cache needed)
        self.chunks = None if chunks is None else (1,) * len(self.lead_shape) + tuple(chunks)
        self.opened: dict[str, int] = {}
        self._open: "OrderedDict[int, _OpenFile]" = OrderedDict()
        self._checked: set[int] = set()
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ files

    def _file(self, i: int) -> _OpenFile:
        f = self._open.get(i)
        if f is not None:
            self._open.move_to_end(i)
            return f
        while len(self._open) >= MAX_OPEN_FILES:
            _, old = self._open.popitem(last=False)
            old.close()
        path = self.files[i]
        f = _OpenFile(path, self.series)
        self.opened[path] = self.opened.get(path, 0) + 1
        self._open[i] = f
        return f

    def _plane(self, page: _Page) -> Any:
        f = self._file(page.file)
        if page.ifd is not None:
            arr = f.page_array(page.ifd)
            plane = arr
        else:
            arr = f.series_array()
            plane = None
        if page.file not in self._checked:
            shape = tuple(arr.shape) if page.ifd is not None else tuple(arr.shape[len(arr.shape) - len(self.plane_shape):])
            if shape != self.plane_shape or np.dtype(arr.dtype).newbyteorder("=") != self.dtype.newbyteorder("="):
                raise InputError(
                    f"{f.path} holds planes of shape {shape} and dtype {np.dtype(arr.dtype).name}. Expected shape "
                    f"{self.plane_shape} and dtype {self.dtype.name} like {self.files[0]} (every plane of "
                    f"{self.where} must match)."
                )
            if page.ifd is None:
                inner = tuple(arr.shape[:len(arr.shape) - len(self.plane_shape)])
                if page.series_index is not None and any(i >= n for i, n in zip(page.series_index, inner)):
                    raise InputError(f"{f.path} holds {inner} planes. Expected as many as {self.files[0]} "
                                     f"(every file of {self.where} must match).")
            self._checked.add(page.file)
        if plane is None:
            return arr, page.series_index or ()
        return plane, ()

    def close(self) -> None:
        with self._lock:
            for f in self._open.values():
                f.close()
            self._open.clear()

    # ------------------------------------------------------------------ reading

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        if any(ix is Ellipsis for ix in index):
            raise TypeError("PlaneStack does not take Ellipsis")
        index = index + (slice(None),) * (self.ndim - len(index))
        lead, window = index[:len(self.lead_shape)], index[len(self.lead_shape):]
        lead_sel: list[list[int]] = []
        keep: list[bool] = []
        for ix, n in zip(lead, self.lead_shape):
            if isinstance(ix, slice):
                start, stop, step = ix.indices(n)
                lead_sel.append(list(range(start, stop, step)))
                keep.append(True)
            elif isinstance(ix, (list, tuple, np.ndarray)):
                lead_sel.append([int(i) % n for i in ix])
                keep.append(True)
            else:
                lead_sel.append([int(ix) % n])
                keep.append(False)
        win: list[Any] = []
        out_plane: list[int] = []
        for ix, n in zip(window, self.plane_shape):
            if isinstance(ix, slice):
                start, stop, step = ix.indices(n)
                if step != 1:
                    raise TypeError("PlaneStack reads slices of step 1 only")
                win.append(slice(start, max(start, stop)))
                out_plane.append(max(0, stop - start))
            else:
                win.append(int(ix) % n)
        out = np.empty([len(s) for s in lead_sel] + out_plane, dtype=self.dtype)
        with self._lock:
            for pos in np.ndindex(*[len(s) for s in lead_sel]):
                page = self.pages[tuple(s[p] for s, p in zip(lead_sel, pos))]
                arr, inner = self._plane(page)
                out[pos] = np.asarray(arr[tuple(inner) + tuple(win)])
        squeeze = tuple(a for a, k in enumerate(keep) if not k)
        return out.reshape([n for a, n in enumerate(out.shape) if a not in squeeze]) if squeeze else out

    @property
    def oindex(self) -> "PlaneStack":
        return self


# --------------------------------------------------------------------------- plane sequences


def list_sequence(uri: str) -> tuple[list[str], str]:
    """The files of a glob or a folder of TIFF planes, in natural order, and a description."""
    if is_glob(uri):
        files = [f for f in glob.glob(uri) if os.path.isfile(f)]
        what = f"the glob {uri}"
        if not files:
            raise InputNotFoundError(f"No file matches {uri}. Expected a glob that matches TIFF planes "
                                     "(quote it so that the shell does not expand it).")
        others = [f for f in files if not is_tiff_name(f)]
        if others:
            raise InputError(f"{uri} matches {others[0]}, which is not a TIFF file. Expected a glob that matches "
                             f"TIFF planes only ({', '.join(TIFF_SUFFIXES)}).")
    else:
        folder = Path(uri)
        files = [str(p) for p in folder.iterdir() if p.is_file() and is_tiff_name(p.name)]
        what = f"the folder {uri}"
        if not files:
            raise InputNotFoundError(f"{uri} is a folder without TIFF files and without zarr metadata. Expected a "
                                     "zarr store, an OME-Zarr image or a folder of TIFF planes.")
    return sorted(files, key=natural_key), what


def _brace_regex(pattern: str) -> tuple[re.Pattern, list[str]]:
    """``plane_{z}_ch{c}.tif`` -> a regular expression with one named group per axis."""
    parts = re.split(r"(\{[^{}]*\})", pattern)
    regex, axes = "", []
    for part in parts:
        m = re.fullmatch(r"\{\s*([A-Za-z])\s*\}", part)
        if m:
            ax = m.group(1).lower()
            if ax not in PATTERN_AXES:
                raise InputError(f"Expected placeholders among {{z}}, {{c}}, {{t}} in --pattern. Got {part} "
                                 f"instead ({pattern!r}).")
            if ax in axes:
                raise InputError(f"--pattern {pattern!r} names {{{ax}}} twice. Expected each axis once.")
            axes.append(ax)
            regex += rf"(?P<{ax}>\d+|[A-Za-z][A-Za-z0-9-]*?)"
        elif part.startswith("{"):
            raise InputError(f"Expected placeholders such as {{z}} or {{c}} in --pattern. Got {part} instead "
                             f"({pattern!r}).")
        else:
            regex += ".*?".join(re.escape(p) for p in part.split("*"))
    return re.compile(regex), axes


def _value_order(values: list[str]) -> list[str]:
    return sorted(set(values), key=natural_key)


def parse_pattern(files: Sequence[str], pattern: str, what: str) -> tuple[str, list[list[str]], list[tuple]]:
    """Map each file to its index per axis.  Returns ``(axes, values per axis, index per file)``.

    ``pattern`` with placeholders is matched against the whole file name
    (or the path relative to the folder when it holds a ``/``); without
    placeholders it is tifffile's regular-expression pattern syntax.
    """
    names = [os.path.basename(f) for f in files]
    if "{" in pattern:
        regex, axes = _brace_regex(pattern)
        if not axes:
            raise InputError(f"--pattern {pattern!r} has no placeholder. Expected {{z}}, {{c}} or {{t}}.")
        raw = []
        for f, name in zip(files, names):
            target = f if "/" in pattern else name
            m = regex.fullmatch(target) if "/" not in pattern else regex.search(target)
            if m is None:
                raise InputError(f"{f} does not match --pattern {pattern!r}. Expected every file of {what} to "
                                 "match it (or a glob that selects only those files).")
            raw.append(tuple(m.group(a) for a in axes))
    else:
        import tifffile

        try:
            seq = tifffile.TiffSequence(files, pattern=pattern, sort=False)
        except (ValueError, re.error) as exc:
            cause = exc.__cause__ or exc
            raise InputError(f"--pattern {pattern!r} does not fit the files of {what} ({cause}). Expected "
                             "placeholders (plane_{z}_ch{c}.tif) or tifffile's pattern syntax.") from None
        if list(seq) != list(files):
            raise InputError(f"--pattern {pattern!r} does not match every file of {what}.")
        axes = []
        for d in seq.dims:
            ax = TIFF_AXES.get(d.upper(), d.lower()[:1])
            if ax not in PATTERN_AXES:
                raise InputError(f"--pattern {pattern!r} names the axis {d!r}. Expected z, c or t.")
            if ax in axes:
                raise InputError(f"--pattern {pattern!r} names the axis {ax} twice. Expected each axis once.")
            axes.append(ax)
        raw = [tuple(str(i) for i in ix) for ix in seq.indices]
    values = [_value_order([r[a] for r in raw]) for a in range(len(axes))]
    lookup = [{v: i for i, v in enumerate(vs)} for vs in values]
    index = [tuple(lookup[a][r[a]] for a in range(len(axes))) for r in raw]
    return "".join(axes), values, index


def open_sequence(uri: str, pattern: str | None) -> tuple[PlaneStack, str, dict]:
    """Open a glob or folder of TIFF files as one stack.  Returns ``(stack, axes, info)``;
    ``info`` holds ``voxel_size``/``unit`` (x/y from the first file, when it has them and the
    files give z) and ``channel_names`` (from a pattern's named channels)."""
    import tifffile

    files, what = list_sequence(uri)
    if pattern:
        seq_axes, values, index = parse_pattern(files, pattern, what)
    else:
        seq_axes, values, index = "z", [[str(i) for i in range(len(files))]], [(i,) for i in range(len(files))]
    seq_shape = tuple(len(v) for v in values)
    where = {}
    for f, ix in zip(files, index):
        if ix in where:
            names = ", ".join(f"{a}={values[a_i][i]}" for a_i, (a, i) in enumerate(zip(seq_axes, ix)))
            raise InputError(
                f"{where[ix]} and {f} are both the plane at {names}: the file names leave an axis ambiguous. "
                "Expected a --pattern with a placeholder for every part of the name that varies "
                "(e.g. plane_{z}_ch{c}.tif)."
            )
        where[ix] = f
    if len(where) != int(np.prod(seq_shape)):
        for ix in np.ndindex(*seq_shape):
            if ix not in where:
                missing = ", ".join(f"{a}={values[k][i]}" for k, (a, i) in enumerate(zip(seq_axes, ix)))
                raise InputError(f"No file of {what} is the plane at {missing} (pattern {pattern!r}). Expected one "
                                 f"file for every combination of {', '.join(seq_axes)}.")
    # the first file tells the plane's shape, dtype and the axes inside each file
    try:
        with tifffile.TiffFile(files[0]) as tf:
            series = tf.series[0]
            file_axes = [TIFF_AXES.get(a, "?") for a in series.axes.upper()]
            file_shape = tuple(int(s) for s in series.shape)
            dtype = series.dtype
            chunks = None if series.dataoffset is not None and tf.filehandle.is_file else \
                tuple(int(c) for c in _zarr(series.aszarr()).chunks[-2:])
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"Could not read {files[0]} as a TIFF file ({type(exc).__name__}: {exc}).") from exc
    # a file's own axes: its plane (y, x and an RGB sample axis) plus any stack inside it
    plane_start = max(i for i, a in enumerate(file_axes) if a in "yx") - 1
    if file_axes[-1] == "c" and file_axes[-2] == "x":  # RGB: samples last
        plane_start = len(file_axes) - 3
    inner_axes = file_axes[:plane_start]
    inner_shape = file_shape[:plane_start]
    plane_axes = file_axes[plane_start:]
    plane_shape = file_shape[plane_start:]
    if len(plane_axes) == 3 and plane_axes[0] == "c" and plane_axes[1:] != ["y", "x"]:
        raise InputError(f"{files[0]}: planes with axes {series.axes} are not supported. Expected YX planes "
                         "(or YXS colour planes).")
    keep = [i for i, n in enumerate(inner_shape) if n > 1]
    inner_axes = [inner_axes[i] for i in keep]
    named = []
    for a in inner_axes:
        if a == "?":  # a plain multi-page file: its pages are z unless the file names give z
            a = "z" if "z" not in seq_axes and "z" not in named else "?"
        if a == "?" or a in seq_axes or a in named:
            raise InputError(
                f"Each file of {what} holds a stack ({files[0]}: axes {series.axes}, shape {file_shape}) along an "
                f"axis the file names also give ({seq_axes}). Expected a --pattern naming what the files stand "
                "for (e.g. ch{c}.tif for one z-stack per channel)."
            )
        named.append(a)
    if "c" in plane_axes and ("c" in seq_axes or "c" in named):
        raise InputError(f"{files[0]} holds colour planes and the file names give channels too: not supported.")
    axes = seq_axes + "".join(named) + "".join(plane_axes)
    inner_keep_shape = tuple(inner_shape[i] for i in keep)
    lead_shape = seq_shape + inner_keep_shape
    pages = np.empty(lead_shape, dtype=object)
    pos = {f: i for i, f in enumerate(files)}
    for ix, f in where.items():
        for inner in np.ndindex(*inner_keep_shape):
            full = [0] * len(inner_shape)
            for k, i in zip(keep, inner):
                full[k] = i
            pages[ix + inner] = _Page(file=pos[f], series_index=tuple(full))
    stack = PlaneStack(files, lead_shape, pages, plane_shape, dtype, chunks, uri)
    channel_names = None
    if "c" in seq_axes:
        vals = values[seq_axes.index("c")]
        if not all(v.isdigit() for v in vals):
            channel_names = list(vals)
    # voxel sizes: a plane's own metadata never holds the z step, so they come from --voxel-size
    return stack, axes, {"voxel_size": None, "unit": None, "channel_names": channel_names}


# --------------------------------------------------------------------------- OME metadata in several files


def _ns(root: ET.Element) -> str:
    return root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""


@dataclass
class OmeImage:
    """One Image of OME-XML metadata: sizes, voxel sizes, channels and where its planes are."""

    name: str
    sizes: dict[str, int]
    dimension_order: str
    dtype: np.dtype
    voxel_size: dict[str, float]
    units: dict[str, str]
    channel_names: list[str | None]
    planes: dict[tuple[int, int, int], tuple[str | None, int]]  # (t, c, z) -> (file name or None: this file, IFD)


_OME_TYPES = {"int8": "i1", "int16": "i2", "int32": "i4", "uint8": "u1", "uint16": "u2", "uint32": "u4",
              "float": "f4", "double": "f8", "bit": "u1"}


def parse_ome(xml: str, where: str) -> tuple[list[OmeImage], str | None]:
    """The images of an OME-XML document and, for a BinaryOnly document, the
    metadata file it points to."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise InputError(f"The OME-XML metadata of {where} is not valid XML ({exc}).") from exc
    ns = _ns(root)
    binary = root.find(f"{ns}BinaryOnly")
    if binary is not None:
        return [], binary.get("MetadataFile")
    images = []
    for n, image in enumerate(root.findall(f"{ns}Image")):
        pixels = image.find(f"{ns}Pixels")
        if pixels is None:
            continue
        sizes = {a: int(pixels.get(f"Size{a.upper()}", "1")) for a in "xyzct"}
        order = pixels.get("DimensionOrder", "XYZCT").upper()
        ptype = pixels.get("Type", "uint16")
        if ptype not in _OME_TYPES:
            raise InputError(f"{where}: OME pixel type {ptype!r} is not supported.")
        voxel = {a: float(pixels.get(f"PhysicalSize{a.upper()}")) for a in "xyz"
                 if pixels.get(f"PhysicalSize{a.upper()}")}
        units = {a: pixels.get(f"PhysicalSize{a.upper()}Unit", "µm") for a in voxel}
        channels = [c.get("Name") for c in pixels.findall(f"{ns}Channel")]
        inner = [a for a in order[2:].lower()]  # fastest first, e.g. z, c, t
        dims = [sizes[a] for a in inner]
        total = int(np.prod(dims))

        def plane_at(p: int) -> tuple[int, int, int]:
            idx: dict[str, int] = {}
            rest = p
            for a, size in zip(inner, dims):
                idx[a] = rest % size
                rest //= size
            return int(idx["t"]), int(idx["c"]), int(idx["z"])

        planes: dict[tuple[int, int, int], tuple[str | None, int]] = {}
        tiffdata = pixels.findall(f"{ns}TiffData")
        for td in tiffdata:
            uuid = td.find(f"{ns}UUID")
            fname = uuid.get("FileName") if uuid is not None else None
            first = {a: int(td.get(f"First{a.upper()}", "0")) for a in "zct"}
            ifd = int(td.get("IFD", "0"))
            if td.get("PlaneCount") is not None:
                count = int(td.get("PlaneCount"))
            elif td.get("IFD") is not None:
                count = 1
            else:
                count = total
            start = 0
            mult = 1
            for a, size in zip(inner, dims):
                start += first[a] * mult
                mult *= size
            for k in range(count):
                if start + k >= total:
                    break
                planes[plane_at(start + k)] = (fname, ifd + k)
        images.append(OmeImage(
            name=image.get("Name") or image.get("ID") or f"image {n}", sizes=sizes, dimension_order=order,
            dtype=np.dtype(_OME_TYPES[ptype]), voxel_size=voxel, units=units, channel_names=channels,
            planes=planes))
    return images, None


def ome_references_other_files(xml: str, own_name: str) -> bool:
    """Whether OME-XML puts planes in files other than ``own_name`` (a multi-file set)."""
    try:
        images, metadata_file = parse_ome(xml, own_name)
    except InputError:
        return False
    if metadata_file:
        return True
    return any(fname is not None and fname != own_name for im in images for fname, _ in im.planes.values())


def read_ome_xml(path: str) -> str:
    """OME-XML of a companion file, or of a TIFF (its first ImageDescription), following BinaryOnly."""
    import tifffile

    if path.lower().endswith(COMPANION_SUFFIX):
        try:
            return Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise InputNotFoundError(f"Could not read the OME companion file {path}: {exc.strerror}.") from None
    with tifffile.TiffFile(path) as tf:
        xml = tf.pages[0].description if tf.pages else ""
    return xml


def open_ome_files(path: str, scene: Any) -> tuple[PlaneStack, str, dict]:
    """Open the planes that OME-XML metadata (a ``.companion.ome`` file, or a
    TIFF of a multi-file OME-TIFF set) places in several TIFF files."""
    import tifffile

    xml = read_ome_xml(path)
    images, metadata_file = parse_ome(xml, path)
    folder = Path(path).parent
    own = Path(path).name
    if metadata_file:
        companion = folder / metadata_file
        if not companion.exists():
            raise InputNotFoundError(f"{path} keeps its OME metadata in {companion}, which does not exist. Expected "
                                     "the companion file beside the TIFF files.")
        images, _ = parse_ome(companion.read_text(encoding="utf-8"), str(companion))
        own = None
    if not images:
        raise InputError(f"The OME metadata of {path} describes no image.")
    k = select_scene([im.name for im in images], scene, path)
    im = images[k]
    sizes = im.sizes
    files: list[str] = []
    pos: dict[str, int] = {}
    pages = np.empty((sizes["t"], sizes["c"], sizes["z"]), dtype=object)
    for t, c, z in np.ndindex(sizes["t"], sizes["c"], sizes["z"]):
        ref = im.planes.get((t, c, z))
        if ref is None:
            raise InputError(f"The OME metadata of {path} places no plane at t={t}, c={c}, z={z} of image "
                             f"{im.name!r}. Expected TiffData for every plane.")
        fname, ifd = ref
        name = fname if fname is not None else own
        if name is None:
            raise InputError(f"The OME companion file {path} lists a plane (t={t}, c={c}, z={z}) without a file "
                             "name. Expected UUID elements with FileName.")
        file_path = str(folder / name)
        if file_path not in pos:
            if not Path(file_path).is_file():
                raise InputNotFoundError(
                    f"{file_path} is missing: the OME metadata of {path} places planes of image {im.name!r} in it "
                    f"(first at t={t}, c={c}, z={z}). Expected every file of the OME-TIFF set beside {path}."
                )
            pos[file_path] = len(files)
            files.append(file_path)
        pages[t, c, z] = _Page(file=pos[file_path], ifd=ifd)
    with tifffile.TiffFile(files[0]) as tf:
        first = pages.flat[0]
        page = tf.pages[first.ifd]
        shape = tuple(int(s) for s in page.shape)
        chunks = None if page.is_memmappable and tf.filehandle.is_file else \
            tuple(int(c) for c in _zarr(page.aszarr()).chunks[-2:])
    if shape != (sizes["y"], sizes["x"]):
        raise InputError(f"{files[0]} holds planes of shape {shape}. Expected ({sizes['y']}, {sizes['x']}) as its OME "
                         "metadata says (colour planes in multi-file OME-TIFF are not supported).")
    axes = "tczyx"
    if sizes["z"] == 1:  # a 2-D image
        pages, axes = pages[:, :, 0], "tcyx"
    stack = PlaneStack(files, pages.shape, pages, shape, im.dtype if page.dtype is None else page.dtype, chunks,
                       path)
    spatial = [a for a in "zyx" if a != "z" or sizes["z"] > 1]
    voxel = tuple(im.voxel_size[a] for a in spatial) if all(a in im.voxel_size for a in spatial) else None
    units = {im.units[a] for a in spatial if a in im.units}
    names = im.channel_names if len(im.channel_names) == sizes["c"] and all(im.channel_names) else None
    return stack, axes, {"voxel_size": voxel, "unit": units.pop() if len(units) == 1 else None,
                            "channel_names": names}


def select_scene(names: Sequence[str], scene: Any, where: str) -> int:
    """The index of ``scene`` (an index or a name) among ``names``; default 0."""
    if scene is None or scene == "":
        return 0
    text = str(scene).strip()
    if text in names:
        return list(names).index(text)
    if re.fullmatch(r"-?\d+", text):
        k = int(text)
        if 0 <= k < len(names):
            return k
    listing = ", ".join(f"{i}: {n}" for i, n in enumerate(names[:20]))
    raise InputError(f"Expected --scene between 0 and {len(names) - 1} or one of the names of {where} "
                     f"({listing}). Got {scene!r} instead.")
