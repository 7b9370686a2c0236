"""The block plan: grid, halo, settings and where every step reads and writes.

``plan-blocks`` writes plan.json once; every later step loads it, checks its
hash, and stamps that hash on what it writes, so outputs of different plans
are never mixed.

Geometry.  The image is cut into a grid of blocks whose *core* is
``block_shape`` (the last block of an axis may be smaller).  A block reads its
core grown by ``halo`` on every side (its *extended region*, clipped to the
image).  Block ids are flat C-order indices into the grid.  The block's
*frame* is its extended region before clipping; stored face slabs are laid out
in frame coordinates so blocks on the image border need no special case.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ._version import __version__
from .backends import Backend, get_backend, make_backend
from .errors import InputError, OutputExistsError, PlanMismatchError, StagingError
from . import io as image_io
from .io import ImageSource, ImageSpec, absolute_uri, is_url, open_image
from .output import NGFF_VERSIONS, OUTPUT_FORMATS, image_pyramid_factors, ngff_version_of, pyramid_factors
from .storage import atomic_write_json, read_json, remove_path

log = logging.getLogger(__name__)

PLAN_FORMAT = 1
RULES = ("exact", "match", "none")
LABEL_DTYPES = ("auto", "uint16", "uint32", "uint64")
#: IoU threshold of the match rule.  Mutual best matching is what keeps
#: touching cells apart; the threshold only refuses slivers.  Measured on
#: touching synthetic cells whose predictions disagree by 1-2 voxels near
#: block edges: no false join at any threshold from 0.05 to 0.5, and cells
#: left split from 0.3 up (tests/test_match.py).
DEFAULT_MIN_IOU = 0.2
#: plan fields that say where files go, not what is computed (not hashed)
LOCATION_FIELDS = ("work_dir", "output", "report_dir")
#: ``skip_empty`` value: mark empty blocks only when the image is scanned
#: anyway (for a global statistic); otherwise blocks are found empty when
#: segment-block reads them, which saves a pass over the image
WHEN_SCANNING = "when-scanning"
#: the plan-time intensity sample is capped at this many values in total
SAMPLE_TOTAL = 2_000_000


# --------------------------------------------------------------------------- parsing


def parse_shape(value: Any, ndim: int, what: str, minimum: int = 1) -> tuple[int, ...]:
    """One integer, or one per axis, from an int, a sequence or text like ``64,256,256``."""
    raw = value
    if isinstance(value, str):
        value = [v for v in re.split(r"[,x\s]+", value.strip()) if v]
    if np.ndim(value) == 0:
        value = [value]
    value = list(value)
    if len(value) == 1:
        value = value * ndim
    try:
        ints = tuple(int(v) for v in value)
        if any(float(v) != i for v, i in zip(value, ints)):
            raise ValueError
    except (TypeError, ValueError):
        raise InputError(f"Expected integers for {what}. Got {raw!r} instead.") from None
    if len(ints) != ndim:
        raise InputError(
            f"Expected {what} as one integer or {ndim} (one per axis of this {ndim}-D image). Got {raw!r} instead."
        )
    if any(v < minimum for v in ints):
        raise InputError(f"Expected {what} >= {minimum} on every axis. Got {ints} instead.")
    return ints


def parse_block_ids(value: Any, n_blocks: int | None = None) -> list[int]:
    """Block ids from ``7``, ``[1, 2]``, ``"0-9"``, ``"0-9,12,20-22"`` or ``"all"``.

    Ranges are inclusive.  Returns sorted, unique ids; checks them against
    ``n_blocks`` when given.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
        if n_blocks is None:
            raise InputError("Expected block ids. Got 'all' without a plan to count blocks in.")
        return list(range(n_blocks))
    items: list[Any]
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        items = [int(value)]
    elif isinstance(value, str):
        items = [p for p in re.split(r"[,\s]+", value.strip()) if p]
    elif isinstance(value, (list, tuple, range, np.ndarray)):
        items = list(value)
    else:
        raise InputError(f"Expected block ids like 7, 0-9 or 0,3,5. Got {value!r} instead.")
    ids: set[int] = set()
    for item in items:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            ids.add(int(item))
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", str(item).strip())
        if not m:
            raise InputError(f"Expected block ids like 7, 0-9 or 0,3,5. Got {item!r} instead.")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise InputError(f"Expected a block range low-high with low <= high. Got {item!r} instead.")
        ids.update(range(lo, hi + 1))
    out = sorted(ids)
    if n_blocks is not None:
        bad = [i for i in out if not 0 <= i < n_blocks]
        if bad:
            raise InputError(f"Expected block ids between 0 and {n_blocks - 1}. Got {bad[:5]} instead.")
    return out


def format_block_ids(ids: Sequence[int]) -> str:
    """Compact text for block ids: ``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``."""
    parts: list[str] = []
    ids = sorted(int(i) for i in ids)
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)


def batches(ids: Sequence[int], size: int) -> list[list[int]]:
    """Consecutive batches of at most ``size`` ids."""
    size = max(1, int(size))
    ids = list(ids)
    return [ids[i:i + size] for i in range(0, len(ids), size)]


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Plan:
    """Everything the later steps need; stored as plan.json."""

    image: ImageSpec | None  # None: labels provided by the caller (merge)
    shape: tuple[int, ...]
    dtype: str
    axes: str
    block_shape: tuple[int, ...]
    halo: tuple[int, ...]
    backend: dict
    rule: str
    work_dir: str
    output: str
    report_dir: str
    min_iou: float = DEFAULT_MIN_IOU
    label_dtype: str = "auto"
    voxel_size: tuple[float, ...] | None = None
    unit: str | None = None
    output_format: str = "ome-zarr"
    ngff_version: str = "0.4"
    pyramid: tuple[tuple[int, ...], ...] = ()
    label_name: str | None = None  # set when the labels go inside the input OME-Zarr image
    empty_blocks: tuple[int, ...] = ()
    stats: dict = field(default_factory=dict)
    format: int = PLAN_FORMAT

    # ---- validation and (de)serialisation

    def __post_init__(self) -> None:
        nd = len(self.shape)
        if nd not in (2, 3):
            raise InputError(f"Expected a 2-D or 3-D image. Got shape {self.shape} instead.")
        if len(self.block_shape) != nd or len(self.halo) != nd:
            raise InputError(f"block_shape and halo need {nd} values for a {nd}-D image.")
        for b, h, n, ax in zip(self.block_shape, self.halo, self.shape, self.axes):
            if b < 1:
                raise InputError(f"Expected a block size >= 1 on axis {ax}. Got {b} instead.")
            if h < 0:
                raise InputError(f"Expected a halo >= 0 on axis {ax}. Got {h} instead.")
            if h >= b:
                raise InputError(
                    f"Expected halo < block on every axis. Got halo {h} >= block {b} on axis {ax} "
                    f"(halo {self.halo}, block {self.block_shape})."
                )
            if h == 0 and n > b:
                raise InputError(
                    f"Expected a halo >= 1 on axis {ax}, which is cut into blocks (size {n}, block {b}): "
                    "without overlap, objects cannot be matched across the seam."
                )
        if self.rule not in RULES:
            raise InputError(f"Expected a stitch rule among {', '.join(RULES)}. Got {self.rule!r} instead.")
        if not 0.0 < self.min_iou <= 1.0:
            raise InputError(f"Expected min_iou in (0, 1]. Got {self.min_iou} instead.")
        if self.label_dtype not in LABEL_DTYPES:
            raise InputError(f"Expected label_dtype among {', '.join(LABEL_DTYPES)}. Got {self.label_dtype!r} instead.")
        if self.output_format not in OUTPUT_FORMATS:
            raise InputError(f"Expected an output format among {', '.join(OUTPUT_FORMATS)}. "
                             f"Got {self.output_format!r} instead.")
        if self.ngff_version not in NGFF_VERSIONS:
            raise InputError(f"Expected an NGFF version among {', '.join(NGFF_VERSIONS)}. "
                             f"Got {self.ngff_version!r} instead.")
        if not self.pyramid:
            object.__setattr__(self, "pyramid", ((1,) * nd,))
        for f in self.pyramid:
            if len(f) != nd or any(b % x for b, x in zip(self.block_shape, f)):
                raise InputError(f"Expected pyramid strides that divide the block shape {self.block_shape}. "
                                 f"Got {f} instead.")

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "image": self.image.to_dict() if self.image else None,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "axes": self.axes,
            "voxel_size": list(self.voxel_size) if self.voxel_size else None,
            "unit": self.unit,
            "block_shape": list(self.block_shape),
            "halo": list(self.halo),
            "backend": self.backend,
            "rule": self.rule,
            "min_iou": self.min_iou,
            "label_dtype": self.label_dtype,
            "work_dir": self.work_dir,
            "output": self.output,
            "report_dir": self.report_dir,
            "output_format": self.output_format,
            "ngff_version": self.ngff_version,
            "pyramid": [list(f) for f in self.pyramid],
            "label_name": self.label_name,
            "empty_blocks": list(self.empty_blocks),
            "stats": self.stats,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        d = dict(d)
        d.pop("hash", None)
        d.pop("grid", None)
        d.pop("n_blocks", None)
        d.pop("created_by", None)
        if d.get("format") != PLAN_FORMAT:
            raise PlanMismatchError(f"Expected plan format {PLAN_FORMAT}. Got {d.get('format')!r} instead.")
        d["image"] = ImageSpec.from_dict(d["image"]) if d.get("image") else None
        for key in ("shape", "block_shape", "halo", "empty_blocks"):
            d[key] = tuple(int(v) for v in d[key])
        d["pyramid"] = tuple(tuple(int(v) for v in f) for f in d.get("pyramid", ()))
        if d.get("voxel_size"):
            d["voxel_size"] = tuple(float(v) for v in d["voxel_size"])
        return cls(**d)

    @cached_property
    def hash(self) -> str:
        """Identity of the computation: every setting that changes a result,
        not where files go (the same run in another directory has the same
        hash, and its outputs are byte-identical)."""
        doc = {k: v for k, v in self.to_dict().items() if k not in LOCATION_FIELDS}
        canon = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(canon.encode()).hexdigest()

    def save(self, path: str | os.PathLike | None = None) -> Path:
        doc = self.to_dict()
        doc.update(hash=self.hash, grid=list(self.grid), n_blocks=self.n_blocks,
                   created_by=f"pystitch {__version__}")
        return atomic_write_json(path or self.plan_path, doc)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        path = Path(path)
        if path.is_dir():
            path = path / "plan.json"
        doc = read_json(path, "plan")
        if not isinstance(doc, dict) or "hash" not in doc:
            raise PlanMismatchError(f"{path} is not a pystitch plan (no hash).")
        try:
            plan = cls.from_dict(doc)
        except (KeyError, TypeError) as exc:
            raise PlanMismatchError(f"{path} is not a valid pystitch plan: {exc}") from exc
        if plan.hash != doc["hash"]:
            raise PlanMismatchError(
                f"{path} was edited after plan-blocks wrote it (its hash no longer matches); "
                "run plan-blocks again instead of editing the plan."
            )
        return plan

    # ---- layout of the work directory

    @property
    def plan_path(self) -> Path:
        return Path(self.work_dir) / "plan.json"

    @property
    def staging_uri(self) -> str:
        return str(Path(self.work_dir) / "staging.zarr")

    @property
    def manifest_dir(self) -> Path:
        return Path(self.work_dir) / "manifests"

    @property
    def pairs_dir(self) -> Path:
        return Path(self.work_dir) / "pairs"

    @property
    def lut_uri(self) -> str:
        return str(Path(self.work_dir) / "lut.zarr")

    @property
    def stats_dir(self) -> Path:
        return Path(self.work_dir) / "stats"

    @property
    def partial_output(self) -> str:
        return str(Path(self.work_dir) / "output.partial.zarr")

    @property
    def report_staging(self) -> Path:
        return Path(self.work_dir) / "report.partial"

    def owned_paths(self) -> list[Path]:
        """Everything pystitch writes into the work directory."""
        wd = Path(self.work_dir)
        return [self.plan_path, Path(self.staging_uri), self.manifest_dir, self.pairs_dir, Path(self.lut_uri),
                wd / "resolve.json", self.stats_dir, Path(self.partial_output), self.report_staging]

    def clean_work_dir(self) -> None:
        """Remove what pystitch wrote into the work directory (and the directory
        itself when nothing else is in it)."""
        for path in self.owned_paths():
            remove_path(path)
        try:
            Path(self.work_dir).rmdir()
        except OSError:
            pass

    # ---- geometry

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @cached_property
    def grid(self) -> tuple[int, ...]:
        return tuple(math.ceil(n / b) for n, b in zip(self.shape, self.block_shape))

    @cached_property
    def n_blocks(self) -> int:
        return math.prod(self.grid)

    @cached_property
    def empty_set(self) -> frozenset[int]:
        return frozenset(self.empty_blocks)

    @cached_property
    def frame_shape(self) -> tuple[int, ...]:
        return tuple(b + 2 * h for b, h in zip(self.block_shape, self.halo))

    def block_index(self, block: int) -> tuple[int, ...]:
        if not 0 <= block < self.n_blocks:
            raise InputError(f"Expected a block id between 0 and {self.n_blocks - 1}. Got {block} instead.")
        return tuple(int(i) for i in np.unravel_index(block, self.grid))

    def block_id(self, index: Sequence[int]) -> int:
        return int(np.ravel_multi_index(tuple(index), self.grid))

    def core(self, block: int) -> tuple[slice, ...]:
        return tuple(slice(i * b, min((i + 1) * b, n))
                     for i, b, n in zip(self.block_index(block), self.block_shape, self.shape))

    def grown(self, block: int, margin: Sequence[int]) -> tuple[slice, ...]:
        """The core grown by ``margin`` voxels per side, clipped to the image."""
        return tuple(slice(max(c.start - m, 0), min(c.stop + m, n))
                     for c, m, n in zip(self.core(block), margin, self.shape))

    def extended(self, block: int, margin: Sequence[int] | None = None) -> tuple[slice, ...]:
        """The core grown by the halo (plus ``margin``), clipped to the image."""
        margin = margin or (0,) * self.ndim
        return self.grown(block, [h + m for h, m in zip(self.halo, margin)])

    def frame_origin(self, block: int) -> tuple[int, ...]:
        return tuple(c.start - h for c, h in zip(self.core(block), self.halo))

    def neighbours(self, block: int, forward_only: bool = False) -> Iterator[tuple[int, tuple[int, ...]]]:
        """Blocks whose frames overlap this one's (all 3**ndim - 1 around it).

        With ``forward_only`` each unordered pair is produced once, by the
        block with the smaller id."""
        idx = self.block_index(block)
        for delta in itertools.product((-1, 0, 1), repeat=self.ndim):
            if not any(delta):
                continue
            nidx = tuple(i + d for i, d in zip(idx, delta))
            if any(not 0 <= j < g for j, g in zip(nidx, self.grid)):
                continue
            nid = self.block_id(nidx)
            if forward_only and nid < block:
                continue
            yield nid, delta

    def slab_shape(self, axis: int) -> tuple[int, ...]:
        """Shape of a face slab across ``axis``: 2*halo thick, the frame elsewhere."""
        shape = list(self.frame_shape)
        shape[axis] = 2 * self.halo[axis]
        return tuple(shape)

    def slab_origin(self, block: int, axis: int, side: str) -> tuple[int, ...]:
        """Global coordinate of a face slab's first voxel (``side`` is lo or hi)."""
        origin = list(self.frame_origin(block))
        if side == "hi":
            origin[axis] = self.core(block)[axis].start + self.block_shape[axis] - self.halo[axis]
        return tuple(origin)

    def split_axes(self) -> list[int]:
        return [a for a, g in enumerate(self.grid) if g > 1]

    def block_description(self, block: int) -> str:
        core = ", ".join(f"{a} {s.start}:{s.stop}" for a, s in zip(self.axes, self.core(block)))
        return f"block {block} (core {core})"

    def work_blocks(self) -> list[int]:
        """Blocks that need work (all but those planned empty)."""
        return [b for b in range(self.n_blocks) if b not in self.empty_set]

    def make_backend(self) -> Backend:
        return get_backend(self.backend["name"]).from_params(
            {k: v for k, v in self.backend.items() if k != "name"})


# --------------------------------------------------------------------------- plan-blocks


def output_stem(path: str) -> str:
    """``/data/labels.ome.zarr`` -> ``/data/labels``: the base of the report and work dir names."""
    return re.sub(r"\.(ome\.)?zarr$", "", path.rstrip("/"))


def default_report_dir(output: str) -> str:
    return f"{output_stem(output)}_report"


def default_work_dir(output: str) -> str:
    return f"{output_stem(output)}_work"


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
    workers: int = 1,
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
    progress: bool = False,
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
    """
    from .staging import create_staging  # local import: staging imports plan

    spec = image if isinstance(image, ImageSpec) else ImageSpec(
        uri=image, array_path=array_path, level=level, channel=channel,
        channel_axis=channel_axis, timepoint=timepoint)
    image_io.CHUNK_CACHE.clear()  # chunks decoded before this plan may belong to an image since rewritten
    source = open_image(spec)
    try:
        ndim = source.ndim
        output = absolute_uri(output)
        if is_url(output):
            raise InputError(f"Expected a local output path. Got {output} instead (object stores are not supported yet).")
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
        rule = rule or be.default_rule
        label_name, ngff, pyramid = _output_layout(source, output, block, output_format, ngff_version,
                                                   pyramid_levels)
        # labels inside the input image: report and work dir next to the image, not inside it
        stem = output if not label_name else f"{output_stem(spec.uri)}_{label_name}"
        wd = absolute_uri(work_dir) if work_dir else default_work_dir(stem)
        rd = absolute_uri(report_dir) if report_dir else default_report_dir(stem)
        if Path(output).exists() and not overwrite:
            raise OutputExistsError(f"The output {output} exists. Expected a new path, or --overwrite to replace it.")
        draft = Plan(
            image=spec, shape=source.shape, dtype=str(source.dtype), axes=source.axes,
            block_shape=block, halo=halo_t, backend={"name": be.name, **be.params()}, rule=rule,
            min_iou=DEFAULT_MIN_IOU if min_iou is None else float(min_iou), label_dtype=str(label_dtype),
            work_dir=wd, output=output, report_dir=rd, voxel_size=source.voxel_size, unit=source.unit, output_format=output_format,
            ngff_version=ngff, pyramid=tuple(pyramid), label_name=label_name,
        )
        request = {"backend": draft.backend, "scan": sorted(scan_needs(be, skip_empty)), "stats_level": stats_level}
        existing = Path(wd) / "plan.json"
        if existing.exists():
            old = _load_quietly(existing)
            if old is not None and _requested(old) == (draft.to_dict(), request):
                log.info("work dir %s already holds this plan (%s): resuming", wd, old.hash[:12])
                return old
            if not overwrite:
                raise OutputExistsError(
                    f"The work directory {wd} holds a different plan. Expected an empty work directory, "
                    "or --overwrite to discard it."
                )
        be_final, stats, empty = scan_image(draft, be, source, skip_empty=skip_empty,
                                            stats_level=stats_level, workers=workers, progress=progress)
        plan = replace(draft, backend={"name": be_final.name, **be_final.params()},
                       empty_blocks=tuple(empty), stats={**stats, "requested": request})
    finally:
        source.close()

    plan.clean_work_dir()  # what an earlier plan left here (never other files)
    Path(wd).mkdir(parents=True, exist_ok=True)
    create_staging(plan)
    plan.save()
    log.info("planned %d blocks (grid %s, block %s, halo %s, %d empty) for %s -> %s",
             plan.n_blocks, plan.grid, plan.block_shape, plan.halo, len(plan.empty_blocks), spec.uri, output)
    return plan


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
    out = Path(output)
    into_image = out.parent.name == "labels" and str(out.parent.parent) == source.spec.uri
    image_version = ngff_version_of(source) if into_image else None
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
    return (out.name if into_image else None), version, pyramid


def _load_quietly(path: Path) -> "Plan | None":
    try:
        return Plan.load(path)
    except (PlanMismatchError, StagingError, InputError):
        return None


def _requested(plan: Plan) -> tuple[dict, dict | None]:
    """The plan as it was requested, before the image scan resolved it."""
    request = plan.stats.get("requested")
    if not request:
        return plan.to_dict(), None
    draft = replace(plan, backend=request["backend"], empty_blocks=(), stats={})
    return draft.to_dict(), request


# --------------------------------------------------------------------------- image scan


def _level_region(plan: Plan, block: int, level_shape: Sequence[int], margin: Sequence[int]) -> tuple[slice, ...]:
    """The block's core grown by ``margin``, mapped onto a (coarser) level."""
    region = plan.grown(block, margin)
    out = []
    for s, n_full, n_lvl in zip(region, plan.shape, level_shape):
        f = n_lvl / n_full
        out.append(slice(int(math.floor(s.start * f)), max(int(math.ceil(s.stop * f)), int(math.floor(s.start * f)) + 1)))
    return tuple(out)


def _scan_block(args: tuple) -> tuple[int, float, np.ndarray | None]:
    plan_dict, block, level, margin, want_max, per_block = args
    plan = Plan.from_dict(plan_dict)
    spec = replace(plan.image, level=level) if level is not None else plan.image
    source = open_image(spec)
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
               workers: int = 1, progress: bool = False) -> tuple[Backend, dict, list[int]]:
    """One pass over the image (or a coarser level of it): the maximum of every
    block's core (grown by the backend's context) for empty-block detection and
    a deterministic, evenly strided intensity sample for global statistics."""
    from .runner import map_blocks  # local import: runner imports plan

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
    for block, bmax, sample in map_blocks(_scan_block, tasks, workers=workers, progress=progress,
                                          desc="scan image"):
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
