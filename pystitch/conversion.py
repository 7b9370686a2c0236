"""convert: any input image to OME-Zarr with a pyramid, block by block.

``pystitch convert IN OUT.ome.zarr`` reads the input (TIFF planes, OME-TIFF,
a vendor file, zarr ...) in chunk-aligned regions of bounded size, in
parallel (the runner's :class:`~pystitch.runner.Scheduler`), and writes an
OME-Zarr image (NGFF 0.4 on zarr v2, or 0.5 on zarr v3) with every channel,
the voxel sizes and channel names, and a pyramid of 2x averages (level k
from level k-1, axes with the finest voxels halved first).

Where things are while it runs (``OUT`` = ``dir/name``):

* ``dir/.name.partial``: the image being written; renamed to ``OUT`` only
  when every level is complete, so a failed or killed convert leaves nothing
  at ``OUT``.
* ``dir/.name.convert/``: ``convert.json`` (the settings and their hash) and
  ``done/<level>-<region>.json``, one small file per finished region.

Resume.  A region's marker is written (temporary name, then rename) only
after zarr has stored every chunk of that region, so a region with a marker
holds complete chunks; a region without one (a task killed mid-write, whose
last chunk may be truncated) is written again in full.  Running the same
command again skips the regions with markers; other settings, or an input of
another shape or type, are an error unless ``--overwrite``.  Only paths this
command created are ever removed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zarr

from . import params
from ._version import __version__
from .errors import InputError, OutputExistsError
from .grid import parse_shape
from .runner import Scheduler, available_memory, sweep_order, usable_cores
from .storage.files import atomic_write_json, read_json, remove_path, replace_tree
from .storage.images import ALL_CHANNELS, ImageSource, ImageSpec, absolute_uri, open_image
from .storage.labels import level_shape, pyramid_factors

log = logging.getLogger(__name__)

#: input bytes one region reads at most (a region is a run of whole chunks;
#: ``PYSTITCH_CONVERT_TASK_MB`` changes it)
TASK_BYTES = 128 * 2 ** 20
#: regions per task of the scheduler (a worker keeps its open input across them)
REGIONS_PER_TASK = 4
_UNITS = {"µm": "micrometer", "um": "micrometer", "micron": "micrometer", "microns": "micrometer",
          "nm": "nanometer", "mm": "millimeter"}


def convert(image: Any, target: Any, **options: Any) -> dict:
    core, _ = params.bind("convert", options)
    return _convert(image, target, **core)


convert.__doc__ = params.document("convert", """Convert ``image`` to the OME-Zarr image ``target``.

Blockwise (bounded memory), in ``workers`` processes, resumable (run it
again after an interruption); every channel unless ``channel`` picks some;
a pyramid of 2x averages.  Returns a summary (``output``, ``shape``,
``chunks``, ``levels``, ``regions_written``, ``regions_skipped``, ``seconds``).""")


# --------------------------------------------------------------------------- layout


def default_chunks(shape: Sequence[int]) -> tuple[int, ...]:
    """32,128,128 in 3-D, 512,512 in 2-D, at most the image.

    >>> default_chunks((100, 1000, 50))
    (32, 128, 50)
    """
    want = (32, 128, 128) if len(shape) == 3 else (512, 512)
    return tuple(min(int(n), c) for n, c in zip(shape, want))


def task_bytes() -> int:
    text = os.environ.get("PYSTITCH_CONVERT_TASK_MB")
    if text is None:
        return TASK_BYTES
    try:
        return max(1, int(float(text) * 2 ** 20))
    except ValueError:
        raise InputError(f"Expected PYSTITCH_CONVERT_TASK_MB to be a number of MiB. Got {text!r} instead.") from None


def regions(shape: Sequence[int], chunks: Sequence[int], bytes_per_voxel: int, read_factor: int = 1,
            budget: int = TASK_BYTES) -> list[tuple[slice, ...]]:
    """Chunk-aligned regions covering ``shape`` in C order, each as large as
    ``budget`` allows (reading ``read_factor`` voxels per written one): whole
    rows of chunks along the last axis first, then the next axes.

    >>> regions((4, 10), (2, 4), 1, budget=24)
    [(slice(0, 2, None), slice(0, 10, None)), (slice(2, 4, None), slice(0, 10, None))]
    """
    nd = len(shape)
    grid = [math.ceil(n / c) for n, c in zip(shape, chunks)]
    take = [1] * nd
    for a in reversed(range(nd)):
        per = bytes_per_voxel * read_factor * math.prod(c * t for c, t in zip(chunks, take)) // take[a]
        per_chunk_run = max(1, per)
        take[a] = max(1, min(grid[a], budget // per_chunk_run))
        if take[a] < grid[a]:
            break
    out = []
    for start in itertools.product(*(range(0, g, t) for g, t in zip(grid, take))):
        out.append(tuple(slice(s * c, min((s + t) * c, n)) for s, t, c, n in zip(start, take, chunks, shape)))
    return out


def _unit(unit: str | None) -> str | None:
    return _UNITS.get(unit, unit) if unit else None


def _multiscales(axes: str, unit: str | None, voxel: Sequence[float] | None, factors: list[tuple[int, ...]],
                 has_c: bool, version: str, name: str) -> dict:
    spatial = list(axes)
    vox = list(voxel) if voxel else [1.0] * len(spatial)
    ax = ([{"name": "c", "type": "channel"}] if has_c else []) + [
        {"name": a, "type": "space", **({"unit": _unit(unit)} if unit else {})} for a in spatial]
    datasets = [{"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": (
        [1.0] if has_c else []) + [float(v * f) for v, f in zip(vox, factor)]}]} for k, factor in enumerate(factors)]
    ms = {"name": name, "axes": ax, "datasets": datasets, "type": "mean",
          "metadata": {"description": "level k = level k-1 averaged over 2-voxel windows along the halved axes",
                       "method": "pystitch.convert (numpy mean)", "factors": [list(f) for f in factors]}}
    if version == "0.4":
        ms["version"] = "0.4"
    return ms


def _omero(names: Sequence[str] | None, n_channels: int, dtype: np.dtype, version: str) -> dict:
    if np.issubdtype(dtype, np.integer):
        lo, hi = float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)
    else:
        lo, hi = 0.0, 1.0
    colors = ["0000FF", "00FF00", "FF0000", "FF00FF", "00FFFF", "FFFF00", "FFFFFF"]
    channels = [{"label": str(names[i]) if names else f"channel {i}", "color": colors[i % len(colors)],
                 "active": True, "coefficient": 1.0, "family": "linear", "inverted": False,
                 "window": {"min": lo, "max": hi, "start": lo, "end": hi}} for i in range(n_channels)]
    return {"channels": channels, "rdefs": {"model": "color"}, **({"version": "0.4"} if version == "0.4" else {})}


# --------------------------------------------------------------------------- per-process state

#: open inputs of this process by spec (a worker keeps its input open across its tasks)
_SOURCES: dict[str, ImageSource] = {}


def _source(spec_doc: dict) -> ImageSource:
    key = json.dumps(spec_doc, sort_keys=True)
    src = _SOURCES.get(key)
    if src is None:
        _close_sources()
        src = _SOURCES[key] = open_image(ImageSpec.from_dict(spec_doc))
    return src


def _close_sources() -> None:
    for src in _SOURCES.values():
        src.close()
    _SOURCES.clear()


def _marker(state: Path, level: int, index: int) -> Path:
    return state / "done" / f"{level}-{index}.json"


def _region_done(path: Path, digest: str) -> bool:
    try:
        return read_json(path, "region marker").get("hash") == digest
    except Exception:
        return False


def _downsample(data: np.ndarray, factor: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """Mean over ``factor`` windows (an odd last voxel is averaged with itself)."""
    out = data.astype(np.float64) if data.dtype != np.float64 else data
    lead = data.ndim - len(factor)
    for a, f in enumerate(factor):
        if f == 1:
            continue
        ax = lead + a
        n = out.shape[ax]
        if n % 2:
            last = np.take(out, [n - 1], axis=ax)
            out = np.concatenate([out, last], axis=ax)
        shape = out.shape[:ax] + (out.shape[ax] // 2, 2) + out.shape[ax + 1:]
        out = out.reshape(shape).mean(axis=ax + 1)
    if dtype == np.bool_:
        return out >= 0.5
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(dtype)
    return out.astype(dtype)


def _task(args: tuple) -> int:
    """Write the regions of one task; returns how many were written (not skipped)."""
    partial, state, digest, spec_doc, level, step, has_c, items = args
    state = Path(state)
    written = 0
    group = zarr.open_group(store=partial, mode="r+")
    dst = group[str(level)]
    lead = (slice(None),) if has_c else ()
    for index, region in items:
        marker = _marker(state, level, index)
        if _region_done(marker, digest):
            continue
        if level == 0:
            data = _source(spec_doc).read(region)
        else:
            src = group[str(level - 1)]
            read = tuple(slice(s.start * f, min(s.stop * f, n)) for s, f, n in zip(region, step, src.shape[-len(step):]))
            data = _downsample(np.asarray(src[lead + read]), step, np.dtype(dst.dtype))
        dst[lead + region] = data
        atomic_write_json(marker, {"hash": digest, "level": level, "region": [[s.start, s.stop] for s in region]})
        written += 1
    return written


# --------------------------------------------------------------------------- the command


def _owned(path: Path) -> bool:
    """Whether ``path`` is an image pystitch convert wrote (the only kind --overwrite replaces)."""
    try:
        group = zarr.open_group(store=str(path), mode="r")
    except Exception:
        return False
    attrs = dict(group.attrs)
    return isinstance(attrs.get("pystitch"), dict) and "convert" in attrs["pystitch"]


def _convert(image: Any, target: Any, *, array_path: str | None, level: int | None, channel: Any,
             channel_axis: int | None, timepoint: int | None, ngff_version: str | None,
             pyramid_levels: int | None, overwrite: bool, workers: Any, progress: bool, pattern: str | None,
             scene: Any, voxel_size: Any, unit: str | None, chunks: Any) -> dict:
    t0 = time.perf_counter()
    spec = ImageSpec.from_options(image, {
        "array_path": array_path, "level": level, "channel": ALL_CHANNELS if channel is None else channel,
        "channel_axis": channel_axis, "timepoint": timepoint, "pattern": pattern, "scene": scene,
        "voxel_size": voxel_size, "unit": unit})
    version = ngff_version or "0.4"
    out = Path(absolute_uri(target))
    if "://" in str(target):
        raise InputError(f"Expected a local output path. Got {target} instead.")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"The output {out} exists. Expected a new path, or --overwrite to replace it.")
    if out.exists() and not _owned(out):
        raise OutputExistsError(f"The output {out} exists and was not written by pystitch convert: not replacing it. "
                                "Expected a new path.")
    source = open_image(spec, cache=False)
    try:
        shape, axes, dtype = source.shape, source.axes, np.dtype(source.dtype)
        n_channels, voxel, vunit = source.n_channels, source.voxel_size, source.unit
        names = source.channel_names
        has_c = n_channels > 1
    finally:
        source.close()
    spatial_chunks = default_chunks(shape) if chunks in (None, "auto") else \
        tuple(min(c, n) for c, n in zip(parse_shape(chunks, len(shape), "chunks"), shape))
    factors = pyramid_factors(shape, None, voxel, pyramid_levels)
    settings = {"input": spec.to_dict(), "shape": list(shape), "axes": axes, "dtype": dtype.str,
                "channels": n_channels, "chunks": list(spatial_chunks), "pyramid": [list(f) for f in factors],
                "ngff_version": version, "voxel_size": list(voxel) if voxel else None, "unit": vunit,
                "channel_names": list(names) if names else None}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    partial = out.with_name(f".{out.name}.partial")
    state = out.with_name(f".{out.name}.convert")
    settings_file = state / "convert.json"
    resume = False
    if settings_file.exists():
        try:
            old = read_json(settings_file, "convert settings")
        except Exception:
            old = {}
        if old.get("hash") == digest and partial.exists():
            resume = True
            log.info("resuming the conversion in %s", partial)
        elif not overwrite:
            raise OutputExistsError(
                f"{state} holds an unfinished conversion with other settings (or of another input). Expected the "
                "same command to resume it, or --overwrite to start again.")
    if not resume:
        # start afresh: only what an earlier convert to this output wrote is removed
        if state.exists():
            if not settings_file.exists():
                raise OutputExistsError(f"{state} exists and was not written by pystitch convert. Expected it gone.")
            remove_path(state)
        if partial.exists():
            if not _owned(partial):
                raise OutputExistsError(f"{partial} exists and was not written by pystitch convert. Expected it gone.")
            remove_path(partial)
        _create(partial, shape, dtype, spatial_chunks, factors, has_c, n_channels, axes, voxel, vunit, names,
                version, out.name, digest)
        atomic_write_json(settings_file, {"hash": digest, "settings": settings, "version": __version__})

    written = skipped = 0
    if workers == "auto":  # the cores, as many as the memory holds at a region read and written per worker
        workers = max(1, min(usable_cores(), available_memory() // (3 * task_bytes())))
        log.info("%d worker process%s (auto)", workers, "" if workers == 1 else "es")
    try:
        with Scheduler(workers, progress) as scheduler:
            spec_doc = spec.to_dict()
            for k, factor in enumerate(factors):
                lshape = level_shape(shape, factor)
                lchunks = tuple(min(c, n) for c, n in zip(spatial_chunks, lshape))
                step = tuple(f // p for f, p in zip(factor, factors[k - 1])) if k else (1,) * len(shape)
                per_voxel = dtype.itemsize * max(1, n_channels)
                todo = list(enumerate(regions(lshape, lchunks, per_voxel, math.prod(step), task_bytes())))
                pending = [(i, r) for i, r in todo if not _region_done(_marker(state, k, i), digest)]
                skipped += len(todo) - len(pending)
                batches = [pending[i:i + REGIONS_PER_TASK] for i in range(0, len(pending), REGIONS_PER_TASK)]
                ordered = sweep_order(batches, workers)
                tasks = [(str(partial), str(state), digest, spec_doc, k, step, has_c, b) for b in ordered]
                for n in scheduler.map(_task, tasks, desc=f"convert level {k}", sizes=[len(b) for b in ordered]):
                    written += n
                log.info("level %d %s: %d regions written, %d already done", k, lshape, len(pending),
                         len(todo) - len(pending))
    finally:
        _close_sources()
    if out.exists():
        _replace_owned(partial, out)
    else:
        replace_tree(partial, out)
    remove_path(state)
    summary = {"output": str(out), "shape": list(shape), "axes": ("c" if has_c else "") + axes,
               "chunks": list(spatial_chunks), "levels": len(factors), "ngff_version": version,
               "regions_written": written, "regions_skipped": skipped,
               "seconds": round(time.perf_counter() - t0, 3)}
    log.info("converted %s -> %s (%s, %d levels) in %.1fs", spec.uri, out, "x".join(map(str, shape)), len(factors),
             summary["seconds"])
    return summary


def _replace_owned(partial: Path, out: Path) -> None:
    if not _owned(out):  # checked at the start; checked again right before removing anything
        raise OutputExistsError(f"The output {out} exists and was not written by pystitch convert: not replacing it.")
    remove_path(out)
    replace_tree(partial, out)


def _create(partial: Path, shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...],
            factors: list[tuple[int, ...]], has_c: bool, n_channels: int, axes: str, voxel: Any, unit: Any,
            names: Any, version: str, name: str, digest: str) -> None:
    fmt = 2 if version == "0.4" else 3
    attrs = {"pystitch": {"convert": digest, "version": __version__}}
    group = zarr.open_group(store=str(partial), mode="w", zarr_format=fmt, attributes=attrs)
    dims = (["c"] if has_c else []) + list(axes)
    for k, factor in enumerate(factors):
        lshape = level_shape(shape, factor)
        lchunks = tuple(min(c, n) for c, n in zip(chunks, lshape))
        if fmt == 2:
            from numcodecs import Blosc

            kwargs: dict = {"compressors": Blosc(cname="zstd", clevel=5, shuffle=Blosc.SHUFFLE),
                            "chunk_key_encoding": {"name": "v2", "separator": "/"}}
        else:
            from zarr.codecs import BloscCodec

            kwargs = {"compressors": [BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")],
                      "dimension_names": dims}
        group.create_array(name=str(k), shape=((n_channels,) if has_c else ()) + lshape,
                           chunks=((1,) if has_c else ()) + lchunks, dtype=dtype, fill_value=0, **kwargs)
    ome: dict = {"multiscales": [_multiscales(axes, unit, voxel, factors, has_c, version, name)]}
    if has_c:
        ome["omero"] = _omero(names, n_channels, dtype, version)
    if version == "0.4":
        group.attrs.update(ome)
    else:
        group.attrs.update({"ome": {"version": version, **ome}})


