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
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zarr
from numcodecs import Blosc

from ._version import __version__
from .errors import InputError, OutputExistsError, StagingError
from .io import LABEL_CODEC, write_concurrently
from .storage import check_plan_hash, remove_path, replace_tree

log = logging.getLogger(__name__)

OUTPUT_FORMATS = ("ome-zarr", "zarr")
NGFF_VERSIONS = ("0.4", "0.5")
#: automatic pyramids stop when the largest side of a level is at most this
PYRAMID_MIN_SIDE = 256
#: nor do they make chunks smaller than this along a halved axis
PYRAMID_MIN_CHUNK = 8


def pyramid_factors(shape: Sequence[int], block_shape: Sequence[int], voxel_size: Sequence[float] | None,
                    levels: int | None = None) -> list[tuple[int, ...]]:
    """Per-level stride factors, level 0 first.

    ``levels`` None: as many as keep halving useful (largest side above
    PYRAMID_MIN_SIDE) and possible (the stride divides the block shape and
    leaves chunks of at least PYRAMID_MIN_CHUNK).  An explicit number that
    cannot be reached is an error.
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
        ok = axes and all(block_shape[a] % nxt[a] == 0 and block_shape[a] // nxt[a] >= PYRAMID_MIN_CHUNK
                          for a in axes)
        if not ok:
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


def _axes_meta(axes: str, unit: str | None) -> list[dict]:
    return [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in axes]


def multiscales_meta(plan: Any, name: str) -> dict:
    voxel = plan.voxel_size or (1.0,) * plan.ndim
    ms = {
        "name": name,
        "axes": _axes_meta(plan.axes, _ngff_unit(plan.unit)),
        "datasets": [{"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [float(v * f) for v, f in zip(voxel, factor)]}]}
            for k, factor in enumerate(plan.pyramid)],
        "type": "stride",
        "metadata": {"description": "level k = level 0 subsampled with a stride (label-safe: no averaging)",
                     "method": "numpy slicing [::factor]", "factors": [list(f) for f in plan.pyramid]},
    }
    if plan.ngff_version == "0.4":
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
    """The partial output in the work directory: all pyramid levels."""

    def __init__(self, plan: Any, levels: list[zarr.Array]) -> None:
        self.plan = plan
        self.levels = levels

    @property
    def level0(self) -> zarr.Array:
        return self.levels[0]

    @classmethod
    def create(cls, plan: Any, dtype: np.dtype) -> "LabelOutput":
        uri = plan.partial_output
        remove_path(uri)
        attrs = {"pystitch": {"plan_hash": plan.hash, "version": __version__}}
        if plan.output_format == "zarr":
            arr = zarr.create_array(store=uri, shape=plan.shape, chunks=plan.block_shape, dtype=dtype,
                                    fill_value=0, zarr_format=3, compressors=[LABEL_CODEC], attributes=attrs)
            return cls(plan, [arr])
        fmt = 2 if plan.ngff_version == "0.4" else 3
        group = zarr.open_group(store=uri, mode="w", zarr_format=fmt, attributes=attrs)
        name = plan.label_name or "labels"
        levels = []
        for k, factor in enumerate(plan.pyramid):
            chunks = tuple(b // f for b, f in zip(plan.block_shape, factor))
            kwargs: dict = ({"compressors": [LABEL_CODEC]} if fmt == 3 else
                            {"compressors": Blosc(cname="lz4", clevel=5, shuffle=Blosc.BITSHUFFLE),
                             "chunk_key_encoding": {"name": "v2", "separator": "/"}})
            levels.append(group.create_array(name=str(k), shape=level_shape(plan.shape, factor), chunks=chunks,
                                             dtype=dtype, fill_value=0, **kwargs))
        ome = {"multiscales": [multiscales_meta(plan, name)],
               "image-label": {"source": {"image": "../../"} if plan.label_name else {},
                               **({"version": "0.4"} if plan.ngff_version == "0.4" else {})}}
        if not plan.label_name:
            ome["image-label"].pop("source")
        _set_ome_attrs(group, plan.ngff_version, ome)
        return cls(plan, levels)

    @classmethod
    def open(cls, plan: Any) -> "LabelOutput":
        uri = plan.partial_output
        try:
            node = zarr.open(store=uri, mode="r+")
        except (FileNotFoundError, zarr.errors.NodeNotFoundError) as exc:
            raise StagingError(f"The partial output {uri} is missing (run resolve first).") from exc
        meta = dict(node.attrs).get("pystitch", {})
        check_plan_hash(meta.get("plan_hash"), plan.hash, uri)
        if isinstance(node, zarr.Array):
            return cls(plan, [node])
        return cls(plan, [node[str(k)] for k in range(len(plan.pyramid))])

    def write_block(self, block: int, labels: np.ndarray) -> None:
        """Write a block's final labels (its core) on every level."""
        core = self.plan.core(block)
        writes = [(self.levels[0], core, labels)]
        for arr, factor in zip(self.levels[1:], self.plan.pyramid[1:]):
            region = tuple(slice(s.start // f, -(-s.stop // f)) for s, f in zip(core, factor))
            writes.append((arr, region, labels[tuple(slice(None, None, f) for f in factor)]))
        write_concurrently(writes)


def read_level(plan: Any, uri: str, level: int = 0) -> zarr.Array:
    node = zarr.open(store=uri, mode="r")
    return node if isinstance(node, zarr.Array) else node[str(level)]


def publish(plan: Any, overwrite: bool) -> Path:
    """Move the finished partial output to the output path (atomically where the
    filesystem allows) and, for labels inside an image, list them there."""
    target = Path(plan.output)
    if target.exists():
        if not overwrite:
            raise OutputExistsError(f"{target} exists. Expected a new path, or --overwrite to replace it.")
        remove_path(target)
    replace_tree(plan.partial_output, target)
    if plan.label_name:
        labels = zarr.open_group(store=str(target.parent), mode="a",
                                 zarr_format=2 if plan.ngff_version == "0.4" else 3)
        listed = list(_read_ome_attrs(labels).get("labels", []))
        if plan.label_name not in listed:
            listed.append(plan.label_name)
        _set_ome_attrs(labels, plan.ngff_version, {"labels": listed})
    return target


def ngff_version_of(source: Any) -> str | None:
    """NGFF version of an OME-Zarr input (None when it is not one)."""
    try:
        group = zarr.open_group(store=source.spec.uri, mode="r")
    except Exception:
        return None
    attrs = dict(group.attrs)
    if isinstance(attrs.get("ome"), dict):
        return str(attrs["ome"].get("version", "0.5"))
    ms = attrs.get("multiscales")
    if isinstance(ms, list) and ms:
        return str(ms[0].get("version", "0.4"))
    return None
