"""plan-blocks: check the input, cut it into blocks, scan it once, write plan.json.

The scan (one pass over the image, or over a coarser level of it) collects
what the backend needs computed ONCE for the whole image — an intensity
sample for a global threshold or normalisation — and each block's maximum,
so that blocks which cannot hold objects are skipped end to end.  How the
scan's tasks are scheduled is the caller's business (``map_tasks``).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..backends import Backend, make_backend
from ..errors import InputError, OutputExistsError, PlanMismatchError, StagingError
from ..grid import parse_shape
from ..plan import DEFAULT_MIN_IOU, Plan, check_rule, default_report_dir, default_store_dir, default_work_dir, run_stem
from ..storage import remote
from ..storage.files import DirectoryLock, check_writable, contains, exists, real
from ..storage.images import ImageSource, ImageSpec, absolute_uri, is_url, open_image
from ..storage.labels import (
    OUTPUT_FORMATS, check_replaceable, image_pyramid_factors, is_published, ngff_version_of, pyramid_factors,
    read_marker,
)
from ..storage.flowstore import FlowStore
from ..storage.staging import create_staging

log = logging.getLogger(__name__)

#: ``skip_empty`` value: mark empty blocks only when the image is scanned
#: anyway (for a global statistic); otherwise blocks are found empty when
#: segment-block reads them, which saves a pass over the image
WHEN_SCANNING = "when-scanning"
#: the plan-time intensity sample is capped at this many values in total
SAMPLE_TOTAL = 2_000_000

#: ``map_tasks(fn, tasks)``: yields ``fn(task)`` for every task, in any order
TaskMap = Callable[[Callable[[Any], Any], Sequence[Any]], Iterable[Any]]


def _serial_map(fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Any]:
    return map(fn, tasks)


def plan_blocks(
    image: str | os.PathLike | ImageSpec,
    output: str | os.PathLike,
    *,
    block_shape: Any,
    halo: Any = None,
    backend: str = "threshold",
    rule: str | None = None,
    min_iou: float | None = None,
    label_dtype: str = "auto",
    work_dir: str | os.PathLike | None = None,
    report_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    skip_empty: bool | str = True,
    stats_level: int | None = None,
    map_tasks: TaskMap | None = None,
    array_path: str | None = None,
    level: int | None = None,
    channel: Any = None,
    channel_axis: int | None = None,
    timepoint: int | None = None,
    backend_options: dict | None = None,
    output_format: str = "ome-zarr",
    ngff_version: str | None = None,
    pyramid_levels: int | None = None,
    memory_gb: float | None = None,
    intensity_stats: bool = False,
    store_dir: str | os.PathLike | None = None,
    storage_options: Any = None,
) -> Plan:
    """Plan a run: validate everything, scan the image once for the statistics
    the backend needs, create the work directory and the staging store, and
    write plan.json.  Returns the :class:`Plan`.

    ``skip_empty``: True marks blocks that cannot hold objects (one pass over
    the image, so that a workflow engine does not even schedule them); False
    never; ``"when-scanning"`` only if the image is scanned anyway.

    If the work directory already holds a plan with identical settings, that
    plan is returned unchanged (resume); a different plan there is an error
    unless ``overwrite``.

    The image, ``output``, ``report_dir`` and ``store_dir`` (the big stores)
    may be ``s3://`` URLs, opened with ``storage_options`` (s3fs's keyword
    arguments; see :mod:`pystitch.storage.remote`); the work directory is a
    path.
    """
    with remote.using(storage_options):
        spec = image if isinstance(image, ImageSpec) else ImageSpec(
            uri=image, array_path=array_path, level=level, channel=channel,
            channel_axis=channel_axis, timepoint=timepoint)
        output = absolute_uri(output)
        stem = run_stem(spec.uri, output)
        wd = absolute_uri(work_dir) if work_dir else default_work_dir(stem)
        sd = absolute_uri(store_dir) if store_dir else default_store_dir(stem)
        check_run_locations(spec.uri, output, wd, report_dir, sd)
        with DirectoryLock(wd):
            return _plan(spec, output, wd, sd, block_shape=block_shape, halo=halo, backend=backend, rule=rule,
                         min_iou=min_iou, label_dtype=label_dtype, report_dir=report_dir, overwrite=overwrite,
                         skip_empty=skip_empty, stats_level=stats_level, map_tasks=map_tasks,
                         backend_options=backend_options, output_format=output_format, ngff_version=ngff_version,
                         pyramid_levels=pyramid_levels, memory_gb=memory_gb,
                         intensity_stats=intensity_stats)


class AlreadyDone(OutputExistsError):
    """The output already holds the finished labels of these settings."""

    def __init__(self, output: str, report_dir: str) -> None:
        super().__init__(
            f"The output {output} already holds the finished labels of this image with these settings: nothing "
            "to do. Expected another output, or --overwrite to compute them again.")
        self.output = output
        self.report_dir = report_dir


def _plan(spec: ImageSpec, output: str, wd: str, sd: str | None, *, block_shape: Any, halo: Any, backend: str, rule: str | None,
          min_iou: float | None, label_dtype: str, report_dir: Any, overwrite: bool, skip_empty: bool | str,
          stats_level: int | None, map_tasks: TaskMap | None, backend_options: dict | None, output_format: str,
          ngff_version: str | None, pyramid_levels: int | None, memory_gb: float | None,
          intensity_stats: bool = False) -> Plan:
    check_rule(rule, backend)
    source = open_image(spec, cache=False)
    try:
        ndim = source.ndim
        if not all(source.shape):
            axis = source.axes[list(source.shape).index(0)]
            raise InputError(f"Expected an image with at least one voxel on every axis. Got shape {source.shape} "
                             f"(axis {axis} is empty) in {source.describe()}.")
        be = make_backend(backend, ndim, **(backend_options or {})).adapt(source)
        if halo is None:
            halo_t = be.default_halo(ndim, source.voxel_size)
            if halo_t is None:
                raise InputError(f"Expected --halo (voxels per axis) for backend {backend!r}.")
        else:
            halo_t = parse_shape(halo, ndim, "halo", minimum=0)
        if isinstance(block_shape, str) and block_shape.strip().lower() == "auto":
            budget = _memory_budget(memory_gb)
            block = be.auto_block_shape(source.shape, halo_t, budget)
            log.info("block shape auto: %s for %.1f GB per task", block, budget / 1e9)
        else:
            block = parse_shape(block_shape, ndim, "block_shape")
        block, halo_t = clip_to_image(block, halo_t, source.shape)
        rule = rule or be.default_rule
        label_name, ngff, pyramid = _output_layout(source, output, block, output_format, ngff_version,
                                                   pyramid_levels)
        rd = absolute_uri(report_dir) if report_dir else default_report_dir(run_stem(spec.uri, output))
        check_locations(spec.uri, output, wd, rd, into_image=label_name is not None, store_dir=sd)
        for path, what in ((output, "output"), (wd, "work directory"), (rd, "report directory"),
                           (sd, "store directory")):
            if path is not None:
                check_writable(path, what)
        draft = Plan(
            image=spec, shape=source.shape, dtype=str(source.dtype), axes=source.axes,
            block_shape=block, halo=halo_t, backend={"name": be.name, **be.params()}, rule=rule,
            min_iou=DEFAULT_MIN_IOU if min_iou is None else float(min_iou), label_dtype=str(label_dtype),
            work_dir=wd, output=output, report_dir=rd, voxel_size=source.voxel_size, unit=source.unit,
            output_format=output_format, ngff_version=ngff, pyramid=tuple(pyramid), label_name=label_name,
            translation=source.translation, intensity_stats=bool(intensity_stats), store_dir=sd,
        )
        request = {"backend": draft.backend, "scan": sorted(scan_needs(be, skip_empty)), "stats_level": stats_level}
        requested = replace(draft, stats={"requested": request})
        existing = Path(wd) / "plan.json"
        old = _load_quietly(existing) if existing.exists() else None
        if old is not None and old.requested() == requested.requested():
            # resume; a finished output of this plan (killed after publishing) is recognised
            if exists(output) and not is_published(output, old.hash):
                check_replaceable(output, overwrite)
            log.info("work dir %s already holds this plan (%s): resuming", wd, old.hash[:12])
            return old
        if exists(output):
            marker = read_marker(output)
            if marker and marker.get("complete") and marker.get("request") == requested.request_digest \
                    and not overwrite:
                raise AlreadyDone(output, rd)
            check_replaceable(output, overwrite)
        if existing.exists():
            if not overwrite:
                raise OutputExistsError(
                    f"The work directory {wd} holds a different plan. Expected an empty work directory, "
                    "or --overwrite to discard it."
                )
        be_final, stats, empty = scan_image(draft, be, source, skip_empty=skip_empty,
                                            stats_level=stats_level, map_tasks=map_tasks or _serial_map)
        plan = replace(draft, backend={"name": be_final.name, **be_final.params()},
                       empty_blocks=tuple(empty), stats={**stats, "requested": request})
    finally:
        source.close()

    plan.clean_work_dir()  # what an earlier plan left here (never other files)
    Path(wd).mkdir(parents=True, exist_ok=True)
    create_staging(plan.staging_uri, plan.grid, plan.hash)
    if plan.rule == "flows":  # here, once: predict-flows tasks of different blocks write it at the same time
        FlowStore.create(plan.flows_uri, plan.shape, plan.block_shape, plan.hash)
    plan.save()
    log.info("planned %d blocks (grid %s, block %s, halo %s, %d empty) for %s -> %s",
             plan.n_blocks, plan.grid.counts, plan.block_shape, plan.halo, len(plan.empty_blocks), spec.uri, output)
    return plan


def clip_to_image(block: tuple[int, ...], halo: tuple[int, ...], shape: tuple[int, ...]
                  ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A block larger than the image is the image; on an axis cut into one block
    the halo has nothing to overlap and only needs to stay below the block.

    >>> clip_to_image((1000, 64), (8, 4), (64, 128))
    ((64, 64), (8, 4))
    >>> clip_to_image((32, 32), (18, 18), (10, 100))
    ((10, 32), (9, 18))
    """
    clipped = tuple(min(b, n) for b, n in zip(block, shape))
    halo = tuple(min(h, max(b - 1, 0)) if b >= n else h for h, b, n in zip(halo, clipped, shape))
    if clipped != tuple(block):
        log.info("block shape %s clipped to the image: %s", tuple(block), clipped)
    return clipped, halo


def check_run_locations(image: str, output: str, work_dir: str, report_dir: Any,
                        store_dir: str | None = None) -> None:
    """:func:`check_locations` from the paths alone, before anything (even a lock)
    is written: the work and report directories' defaults are derived here.
    A URL is checked here too (scheme, credentials, endpoint, bucket; the
    input must exist), so a bad one is one line before any work."""
    for uri, what in ((image, "input image"), (output, "output"), (report_dir, "report directory"),
                      (store_dir, "store directory")):
        if uri is not None:
            remote.check_scheme(os.fspath(uri), what)
    if is_url(work_dir):
        raise InputError(f"Expected a local or shared path for the work directory. Got {work_dir} instead: its small "
                         "files (plan, manifests, pairs, statistics) are written by rename, which object stores do "
                         "not have. Put the big stores on object storage with --store-dir.")
    rd = absolute_uri(report_dir) if report_dir else default_report_dir(run_stem(image, output))
    into_image = run_stem(image, output) != output
    check_locations(image, output, work_dir, rd, into_image=into_image, store_dir=store_dir)
    check_writable(work_dir, "work directory")
    remote.check_access(image, "input image", must_exist=True)
    for uri, what in ((output, "output"), (rd, "report directory"), (store_dir, "store directory")):
        if uri is not None:
            remote.check_access(uri, what)


def check_locations(image: str, output: str, work_dir: str, report_dir: str, *, into_image: bool,
                    store_dir: str | None = None) -> None:
    """Input, output, work, report and store directories must be separate
    places: none the same as another or inside another (so a run can never
    write into, or --overwrite remove, what it reads).  URLs are compared by
    bucket and key prefix.  The one exception is the labels of an OME-Zarr
    image written inside it (``<image>/labels/<name>``)."""
    places = [("input image", image), ("output", output), ("work directory", work_dir),
              ("report directory", report_dir)] + ([("store directory", store_dir)] if store_dir else [])
    for i, (name_a, a) in enumerate(places):
        for name_b, b in places[i + 1:]:
            if into_image and {name_a, name_b} == {"input image", "output"}:
                continue
            if contains(a, b) or contains(b, a):
                same = (real(a) == real(b)) if not (is_url(a) or is_url(b)) else \
                    remote.normalise(a) == remote.normalise(b)
                inner, outer = ((name_b, b), (name_a, a)) if contains(a, b) else ((name_a, a), (name_b, b))
                relation = "is the same path as" if same else "lies inside"
                raise InputError(
                    f"The {inner[0]} {inner[1]} {relation} the {outer[0]} {outer[1]}. Expected separate places: "
                    "pystitch never writes into, or removes, what it reads."
                )


def _memory_budget(memory_gb: float | None) -> int:
    """Bytes one segmentation task may use: ``memory_gb``, else the memory of
    the GPU torch sees on this machine, else half of the available RAM."""
    if memory_gb is not None:
        if not memory_gb > 0:
            raise InputError(f"Expected --memory-gb > 0. Got {memory_gb} instead.")
        return int(memory_gb * 1e9)
    try:
        import torch  # optional: only to size blocks for the GPU of this machine

        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info()[1] * 0.8)
    except ImportError:
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(pages * 0.5)


def _output_layout(source: ImageSource, output: str, block: tuple[int, ...], output_format: str,
                   ngff_version: str | None, levels: int | None) -> tuple[str | None, str, list]:
    """(label name when writing into the input image, NGFF version, pyramid strides)."""
    if output_format not in OUTPUT_FORMATS:
        raise InputError(f"Expected an output format among {', '.join(OUTPUT_FORMATS)}. Got {output_format!r} instead.")
    into_image = remote.name(remote.parent(output)) == "labels" and \
        remote.parent(remote.parent(output)) == source.spec.uri
    image_version = ngff_version_of(source.spec.uri) if into_image else None
    if into_image and (image_version is None or output_format != "ome-zarr" or source.spec.array_path):
        raise InputError(
            f"Labels can go inside the input image ({output}) only when the input is an OME-Zarr image and the "
            "output format is ome-zarr. Expected another output path."
        )
    if into_image and ngff_version not in (None, image_version):
        raise InputError(f"The labels of an NGFF {image_version} image must be NGFF {image_version}. "
                         f"Got --ngff-version {ngff_version} instead.")
    version = image_version or ngff_version or "0.4"
    if output_format == "zarr":
        if levels not in (None, 1):
            raise InputError("A pyramid needs --output-format ome-zarr.")
        return None, version, [(1,) * source.ndim]
    pyramid = None
    if into_image and levels is None:
        factors = image_pyramid_factors(source.levels)
        if factors and len(factors) > 1 and all(b % f == 0 for fs in factors for b, f in zip(block, fs)):
            pyramid = factors  # the same levels as the image, so viewers overlay them
    if pyramid is None:
        pyramid = pyramid_factors(source.shape, block, source.voxel_size, levels)
    return (remote.name(output) if into_image else None), version, pyramid


def _load_quietly(path: Path) -> "Plan | None":
    try:
        return Plan.load(path)
    except (PlanMismatchError, StagingError, InputError):
        return None


# --------------------------------------------------------------------------- image scan


def _level_region(plan: Plan, block: int, level_shape: Sequence[int], margin: Sequence[int]) -> tuple[slice, ...]:
    """The block's core grown by ``margin``, mapped onto a (coarser) level."""
    region = plan.grid.grown(block, margin)
    out = []
    for s, n_full, n_lvl in zip(region, plan.shape, level_shape):
        f = n_lvl / n_full
        out.append(slice(int(math.floor(s.start * f)), max(int(math.ceil(s.stop * f)), int(math.floor(s.start * f)) + 1)))
    return tuple(out)


def _scan_block(args: tuple) -> tuple[int, float, np.ndarray | None]:
    plan_dict, block, level, margin, want_max, per_block = args
    plan = Plan.from_dict(plan_dict)
    spec = replace(plan.image, level=level) if level is not None else plan.image
    source = open_image(spec, cache=False)
    try:
        data = source.read(_level_region(plan, block, source.shape, margin))
    finally:
        source.close()
    bmax = float(np.max(data)) if (want_max and data.size) else float("-inf")
    sample = None
    if per_block:
        # (channels, values): several selected channels are sampled separately
        flat = data.reshape(data.shape[0] if data.ndim > plan.ndim else 1, -1)
        step = max(1, flat.shape[1] // per_block)
        sample = np.asarray(flat[:, ::step][:, :per_block], dtype=np.float64)
    return block, bmax, sample


def scan_needs(backend: Backend, skip_empty: bool | str) -> set[str]:
    """What the plan-time pass over the image collects: "max" per block and/or an intensity "sample"."""
    needed = set(backend.stats_needed)
    if not skip_empty or (skip_empty == WHEN_SCANNING and "sample" not in needed):
        needed.discard("max")
    return needed


def scan_image(plan: Plan, backend: Backend, source: ImageSource, *, skip_empty: bool | str, stats_level: int | None,
               map_tasks: TaskMap = _serial_map) -> tuple[Backend, dict, list[int]]:
    """One pass over the image (or a coarser level of it): the maximum of every
    block's core (grown by the backend's context) for empty-block detection and
    a deterministic, evenly strided intensity sample for global statistics."""
    needed = scan_needs(backend, skip_empty)
    if not needed:
        return backend, {}, []
    if stats_level not in (None, 0) and not source.levels[1:]:
        raise InputError(f"--stats-level {stats_level} was requested but {plan.image.uri} has a single level.")
    per_block = max(16, SAMPLE_TOTAL // plan.n_blocks) if "sample" in needed else 0
    margin = backend.context(plan.ndim) if "max" in needed else (0,) * plan.ndim
    doc = plan.to_dict()
    tasks = [(doc, b, stats_level, margin, "max" in needed, per_block) for b in range(plan.n_blocks)]
    maxima = np.full(plan.n_blocks, -np.inf)
    samples: dict[int, np.ndarray] = {}
    for block, bmax, sample in map_tasks(_scan_block, tasks):
        maxima[block] = bmax
        if sample is not None:
            samples[block] = sample
    sample = np.concatenate([samples[b] for b in sorted(samples)], axis=1) if samples else None
    if sample is not None and sample.shape[0] == 1:
        sample = sample[0]
    backend, stats = backend.finish_plan(sample)
    empty: list[int] = []
    below = backend.empty_below() if "max" in needed else None
    if below is not None:
        empty = [int(b) for b in np.flatnonzero(maxima <= below)]
        stats["empty_rule"] = f"max over the core grown by {list(margin)} voxels <= {below}"
        if stats_level not in (None, 0):
            stats["empty_rule"] += f" (measured on level {stats_level}: approximate)"
    stats["scan_level"] = int(stats_level or 0)
    return backend, stats, empty
