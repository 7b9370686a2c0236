"""The output label image: plain zarr, or OME-Zarr with a label-safe pyramid.

OME-Zarr output (the default) is a multiscale label image (NGFF 0.4 on zarr
v2, read by every current viewer, or NGFF 0.5 on zarr v3) with
``image-label`` metadata, axes and voxel sizes of the input.  When the output
path is ``<input image>/labels/<name>``, the labels are published inside the
input OME-Zarr image and listed in its ``labels`` group.

Pyramid.  Level ``k`` is level 0 subsampled with a stride (``level0[::f]``),
never averaged, so every id of a coarse level exists at level 0.  The strides
divide the block shape, so each block writes its own chunk on every level
(chunks = block / stride) while ``apply-lut`` writes level 0: the pyramid
costs no second pass over the labels.  Axes with the smallest physical voxel
size are halved first, which evens out anisotropy.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import zarr
from numcodecs import Blosc

from .._version import __version__
from ..errors import InputError, OutputExistsError, StagingError
from . import remote
from .files import check_plan_hash, exists, link_tree, remove_path, replace_tree
from .zarrs import LABEL_CODEC, dense, write_concurrently

log = logging.getLogger(__name__)

OUTPUT_FORMATS = ("ome-zarr", "zarr")
NGFF_VERSIONS = ("0.4", "0.5")
#: automatic pyramids stop when the largest side of a level is at most this
PYRAMID_MIN_SIDE = 256
#: nor do they make chunks smaller than this along a halved axis
PYRAMID_MIN_CHUNK = 8


def pyramid_factors(shape: Sequence[int], block_shape: Sequence[int] | None, voxel_size: Sequence[float] | None,
                    levels: int | None = None) -> list[tuple[int, ...]]:
    """Per-level stride factors, level 0 first: each level halves the axes
    whose physical voxel is within 1.5x of the finest (axes of one voxel stay).

    ``levels`` None: as many as keep halving useful (largest side above
    PYRAMID_MIN_SIDE) and possible (with ``block_shape``, the stride divides
    the block shape and leaves chunks of at least PYRAMID_MIN_CHUNK).  An
    explicit number that cannot be reached is an error.

    >>> pyramid_factors((40, 1024, 1024), None, (2.0, 0.5, 0.5))
    [(1, 1, 1), (1, 2, 2), (1, 4, 4)]
    >>> pyramid_factors((40, 1024, 1024), (8, 64, 64), (2.0, 0.5, 0.5), levels=5)  # the 4th would halve z: 8 // 2 < 8
    Traceback (most recent call last):
    ...
    pystitch.errors.InputError: Expected at most 3 pyramid levels for blocks of (8, 64, 64): each level halves axes and its stride must divide the block shape leaving chunks of >= 8. Got 5 instead.
    """
    nd = len(shape)
    size = np.asarray(voxel_size if voxel_size else [1.0] * nd, dtype=float)
    cur = [1] * nd
    out = [tuple(cur)]
    while levels is None or len(out) < levels:
        level_shape = [math.ceil(n / f) for n, f in zip(shape, cur)]
        if levels is None and max(level_shape) <= PYRAMID_MIN_SIDE:
            break
        phys = size * np.asarray(cur)
        axes = [a for a in range(nd) if level_shape[a] > 1 and phys[a] <= 1.5 * phys[[i for i in range(nd)
                                                                                   if level_shape[i] > 1]].min()]
        nxt = [c * 2 if a in axes else c for a, c in enumerate(cur)]
        ok = axes and (block_shape is None or all(block_shape[a] % nxt[a] == 0
                                                  and block_shape[a] // nxt[a] >= PYRAMID_MIN_CHUNK for a in axes))
        if not ok:
            if levels is not None and block_shape is None:
                raise InputError(f"Expected at most {len(out)} pyramid levels for an image of shape "
                                 f"{tuple(shape)}. Got {levels} instead.")
            if levels is not None:
                raise InputError(
                    f"Expected at most {len(out)} pyramid levels for blocks of {tuple(block_shape)}: each level "
                    f"halves axes and its stride must divide the block shape leaving chunks of >= "
                    f"{PYRAMID_MIN_CHUNK}. Got {levels} instead."
                )
            break
        cur = nxt
        out.append(tuple(cur))
    return out


def level_shape(shape: Sequence[int], factor: Sequence[int]) -> tuple[int, ...]:
    return tuple(math.ceil(n / f) for n, f in zip(shape, factor))


def image_pyramid_factors(levels: list[tuple[int, ...]]) -> list[tuple[int, ...]] | None:
    """Stride factors of an input image's pyramid, if they are powers of two."""
    out = []
    for lv in levels:
        f = []
        for n0, n in zip(levels[0], lv):
            r = round(n0 / n) if n else 0
            if r < 1 or r & (r - 1) or math.ceil(n0 / r) != n:
                return None
            f.append(r)
        out.append(tuple(f))
    return out


# --------------------------------------------------------------------------- metadata


@dataclass(frozen=True)
class LabelLayout:
    """What the output label image looks like: its grid, pyramid and metadata."""

    shape: tuple[int, ...]
    block: tuple[int, ...]
    axes: str
    pyramid: tuple[tuple[int, ...], ...]
    voxel_size: tuple[float, ...] | None = None
    unit: str | None = None
    output_format: str = "ome-zarr"
    ngff_version: str = "0.4"
    #: set when the labels go inside the input OME-Zarr image (``<image>/labels/<name>``)
    label_name: str | None = None
    #: physical position of voxel 0 (the input's translation); the same on every level (strided pyramid)
    translation: tuple[float, ...] | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)


def _axes_meta(axes: str, unit: str | None) -> list[dict]:
    return [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in axes]


def multiscales_meta(layout: LabelLayout, name: str) -> dict:
    voxel = layout.voxel_size or (1.0,) * layout.ndim
    ms = {
        "name": name,
        "axes": _axes_meta(layout.axes, _ngff_unit(layout.unit)),
        "datasets": [{"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [float(v * f) for v, f in zip(voxel, factor)]}]
            # level k holds level 0's voxels 0, f, 2f, ...: voxel 0 is where level 0's is
            + ([{"type": "translation", "translation": [float(t) for t in layout.translation]}]
               if layout.translation else [])}
            for k, factor in enumerate(layout.pyramid)],
        "type": "stride",
        "metadata": {"description": "level k = level 0 subsampled with a stride (label-safe: no averaging)",
                     "method": "numpy slicing [::factor]", "factors": [list(f) for f in layout.pyramid]},
    }
    if layout.ngff_version == "0.4":
        ms["version"] = "0.4"
    return ms


_UNITS = {"µm": "micrometer", "um": "micrometer", "micron": "micrometer", "nm": "nanometer", "mm": "millimeter"}


def _ngff_unit(unit: str | None) -> str | None:
    if not unit:
        return None
    return _UNITS.get(unit, unit)


def _set_ome_attrs(group: zarr.Group, version: str, attrs: dict) -> None:
    if version == "0.4":
        group.attrs.update(attrs)
    else:
        group.attrs.update({"ome": {"version": version, **attrs}})


def _read_ome_attrs(group: zarr.Group) -> dict:
    attrs = dict(group.attrs)
    return attrs.get("ome", attrs) if isinstance(attrs.get("ome"), dict) else attrs


# --------------------------------------------------------------------------- writing


class LabelOutput:
    """A label image being written: all pyramid levels (the partial output in
    the work directory until ``finalize`` publishes it)."""

    def __init__(self, layout: LabelLayout, levels: list[zarr.Array]) -> None:
        self.layout = layout
        self.levels = levels

    @property
    def level0(self) -> zarr.Array:
        return self.levels[0]

    @classmethod
    def create(cls, uri: str, layout: LabelLayout, dtype: np.dtype, plan_hash: str) -> "LabelOutput":
        remove_path(uri)
        attrs = {"pystitch": {"plan_hash": plan_hash, "version": __version__}}
        if layout.output_format == "zarr":
            arr = zarr.create_array(store=uri, shape=layout.shape, chunks=layout.block, dtype=dtype,
                                    fill_value=0, zarr_format=3, compressors=[LABEL_CODEC], attributes=attrs,
                                    **remote.zarr_kwargs(uri))
            return cls(layout, [arr])
        fmt = 2 if layout.ngff_version == "0.4" else 3
        group = zarr.open_group(store=uri, mode="w", zarr_format=fmt, attributes=attrs, **remote.zarr_kwargs(uri))
        name = layout.label_name or "labels"
        levels = []
        for k, factor in enumerate(layout.pyramid):
            chunks = tuple(b // f for b, f in zip(layout.block, factor))
            kwargs: dict = ({"compressors": [LABEL_CODEC]} if fmt == 3 else
                            {"compressors": Blosc(cname="lz4", clevel=5, shuffle=Blosc.BITSHUFFLE),
                             "chunk_key_encoding": {"name": "v2", "separator": "/"}})
            levels.append(group.create_array(name=str(k), shape=level_shape(layout.shape, factor), chunks=chunks,
                                             dtype=dtype, fill_value=0, **kwargs))
        ome = {"multiscales": [multiscales_meta(layout, name)],
               "image-label": {"source": {"image": "../../"} if layout.label_name else {},
                               **({"version": "0.4"} if layout.ngff_version == "0.4" else {})}}
        if not layout.label_name:
            ome["image-label"].pop("source")
        _set_ome_attrs(group, layout.ngff_version, ome)
        return cls(layout, levels)

    @classmethod
    def open(cls, uri: str, layout: LabelLayout, plan_hash: str) -> "LabelOutput":
        try:
            node = zarr.open(store=uri, mode="r+", **remote.zarr_kwargs(uri))
        except (FileNotFoundError, zarr.errors.NodeNotFoundError) as exc:
            raise StagingError(f"The partial output {uri} is missing (run resolve first).") from exc
        meta = dict(node.attrs).get("pystitch", {})
        check_plan_hash(meta.get("plan_hash"), plan_hash, uri)
        # every block apply-lut writes holds objects: no fill-value comparison (zarrs.dense)
        if isinstance(node, zarr.Array):
            return cls(layout, [dense(node)])
        return cls(layout, [dense(node[str(k)]) for k in range(len(layout.pyramid))])

    def write_block(self, core: tuple[slice, ...], labels: np.ndarray) -> None:
        """Write a block's final labels (its ``core`` region) on every level."""
        writes = [(self.levels[0], core, labels)]
        for arr, factor in zip(self.levels[1:], self.layout.pyramid[1:]):
            region = tuple(slice(s.start // f, -(-s.stop // f)) for s, f in zip(core, factor))
            writes.append((arr, region, labels[tuple(slice(None, None, f) for f in factor)]))
        write_concurrently(writes)


def read_marker(uri: str | Path) -> dict | None:
    """pystitch's marker of a label image it wrote (``{"plan_hash", "version",
    "complete", ...}``); None when ``uri`` is not a zarr store pystitch wrote.
    At a URL, the leftovers of a publication that was killed (objects without
    the root's metadata, and the publishing marker) are pystitch's too:
    ``{"interrupted": True, ...}``."""
    uri = str(uri)
    if not exists(uri):
        return None
    try:
        node = zarr.open(store=uri, mode="r", **remote.zarr_kwargs(uri))
    except Exception:  # not zarr, damaged: not ours to judge
        node = None
    marker = dict(node.attrs).get("pystitch") if node is not None else None
    if isinstance(marker, dict) and "plan_hash" in marker:
        return marker
    leftover = remote.publishing_marker(uri) if remote.is_remote(uri) else None
    if leftover is not None:
        return {"plan_hash": leftover.get("plan_hash"), "interrupted": True}
    return None


def is_published(uri: str | Path, plan_hash: str) -> bool:
    """Whether ``uri`` holds the finished label image of this plan."""
    marker = read_marker(uri)
    return bool(marker and marker.get("plan_hash") == plan_hash and marker.get("complete"))


def mark_complete(uri: str, request: str) -> None:
    """Stamp a finished label image (before it is published): the settings it
    was requested with, so that a later run with the same settings knows it."""
    node = zarr.open(store=uri, mode="r+", **remote.zarr_kwargs(uri))
    marker = dict(dict(node.attrs).get("pystitch", {}))
    marker.update(complete=True, request=request)
    node.attrs["pystitch"] = marker


def remove_partial_files(uri: str | Path) -> int:
    """Delete the temporary chunk files a killed writer of this store left
    (``<chunk>.<32 hex digits>.partial``, zarr's own naming); returns how many.
    (An object store writes each chunk whole: nothing to remove there.)"""
    if remote.is_url(str(uri)):
        return 0
    pattern = re.compile(r".+\.[0-9a-f]{32}\.partial$")
    removed = 0
    for path in Path(uri).rglob("*.partial"):
        if pattern.fullmatch(path.name) and path.is_file():
            path.unlink()
            removed += 1
    return removed


def read_level(uri: str, level: int = 0) -> zarr.Array:
    node = zarr.open(store=uri, mode="r", **remote.zarr_kwargs(uri))
    return node if isinstance(node, zarr.Array) else node[str(level)]


def publish(partial: str, target: str | Path, layout: LabelLayout, plan_hash: str, overwrite: bool,
            keep_partial: bool = False) -> str:
    """Move the finished partial output to ``target`` (atomically where the
    filesystem allows) and, for labels inside an image, list them there.
    ``keep_partial``: hard-link it there instead, keeping the partial output
    (a workflow's task publishes into its own directory, and a retry of the
    task must find the partial output again).

    At an ``s3://`` target, where nothing can be renamed, the partial output
    is copied (by the server when both are in one object store) with the
    root's metadata documents LAST (:func:`.remote.copy_tree`), then removed
    unless ``keep_partial``: a reader sees the label image only once it is
    whole, and a failed copy leaves nothing at the target.

    An existing ``target`` is replaced only with ``overwrite`` and only when
    pystitch wrote it (it carries pystitch's marker); one that already holds
    this plan's finished output is kept as it is (a rerun after a kill)."""
    target = str(target)
    if is_published(target, plan_hash):
        if exists(partial) and not keep_partial:
            remove_path(partial)
    else:
        if exists(target):
            check_replaceable(target, overwrite)
            remove_path(target)
        if remote.is_remote(target):
            remote.copy_tree(partial, target, marker={"plan_hash": plan_hash})
            if not keep_partial:
                remove_path(partial)
        elif remote.is_remote(partial):  # from an object store onto a filesystem: download, then rename
            incoming = Path(target).with_name(f".{Path(target).name}.incoming")
            remove_path(incoming)
            remote.download_tree(partial, incoming)
            replace_tree(incoming, target)
            if not keep_partial:
                remove_path(partial)
        else:
            (link_tree if keep_partial else replace_tree)(partial, target)
    if layout.label_name:
        where = remote.parent(target)
        labels = zarr.open_group(store=where, mode="a", zarr_format=2 if layout.ngff_version == "0.4" else 3,
                                 **remote.zarr_kwargs(where))
        listed = list(_read_ome_attrs(labels).get("labels", []))
        if layout.label_name not in listed:
            listed.append(layout.label_name)
            _set_ome_attrs(labels, layout.ngff_version, {"labels": listed})
    return target


def check_replaceable(target: str | Path, overwrite: bool) -> None:
    """An existing output may be replaced only with ``overwrite`` and only when
    pystitch wrote it: nothing pystitch did not write is ever removed.  What
    a killed publication left at a URL (:func:`read_marker`: interrupted) is
    pystitch's own and always replaced."""
    marker = read_marker(target)
    if marker is not None and marker.get("interrupted"):
        return
    if not overwrite:
        raise OutputExistsError(f"The output {target} exists. Expected a new path, or --overwrite to replace it.")
    if marker is None:
        raise OutputExistsError(
            f"The output {target} exists and was not written by pystitch (it has no pystitch marker): it is "
            "never removed, even with --overwrite. Expected another output path, or remove it yourself."
        )


def ngff_version_of(uri: str) -> str | None:
    """NGFF version of an OME-Zarr image (None when it is not one)."""
    try:
        group = zarr.open_group(store=uri, mode="r", **remote.zarr_kwargs(uri))
    except Exception:
        return None
    attrs = dict(group.attrs)
    if isinstance(attrs.get("ome"), dict):
        return str(attrs["ome"].get("version", "0.5"))
    ms = attrs.get("multiscales")
    if isinstance(ms, list) and ms:
        return str(ms[0].get("version", "0.4"))
    return None
