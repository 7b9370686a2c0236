"""The contract between pystitch and a segmentation backend."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import InputError

_REGISTRY: dict[str, type["Backend"]] = {}

#: memory of one worker process of the local runner for a backend without a
#: model of its own: TASK_BASE_BYTES + TASK_BYTES_PER_VOXEL x voxels of a block
#: (core + halo).  Measured with benchmarks/worker_memory.py (threshold backend
#: with smoothing, segment + face-pairs + apply-lut, chunk cache off): ~100 MiB
#: plus ~64 bytes per voxel; the constants add a margin.
TASK_BASE_BYTES = 128 * 2 ** 20
TASK_BYTES_PER_VOXEL = 80


@dataclass(frozen=True)
class SegmentationContext:
    """What a backend may want to know about the block it segments."""

    block: int
    ndim: int
    voxel_size: tuple[float, ...] | None = None


class Backend(ABC):
    """One segmentation method with its settings.

    Subclasses are immutable after :meth:`finish_plan`; ``params()`` must hold
    everything needed to rebuild the backend from plan.json.
    """

    name: ClassVar[str]
    #: stitching rule used when the user does not choose one
    default_rule: ClassVar[str] = "match"
    #: what the plan-time pass over the image must collect: "max" per block
    #: (empty-block detection) and/or a global intensity "sample"
    stats_needed: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    @abstractmethod
    def from_options(cls, ndim: int, **options: Any) -> "Backend":
        """Validate user options (plan time).  Unknown options are an error."""

    @classmethod
    def from_params(cls, params: dict) -> "Backend":
        """Rebuild from the ``params()`` stored in plan.json (task time)."""
        return cls(**params)

    @abstractmethod
    def params(self) -> dict:
        """JSON-serialisable settings, stored in plan.json."""

    def context(self, ndim: int) -> tuple[int, ...]:
        """Extra voxels per side that must be read beyond the block's halo so that
        the labels of the halo region are exactly those of the whole image."""
        return (0,) * ndim

    def finish_plan(self, sample: np.ndarray | None) -> tuple["Backend", dict]:
        """Resolve values computed once for the whole image from the plan-time
        ``sample`` of intensities.  Returns the final backend and the statistics
        to record in plan.json."""
        return self, {}

    def empty_below(self) -> float | None:
        """Blocks whose maximum intensity (over the core grown by ``context``)
        is at or below this value cannot hold labels in their core and are
        skipped end to end.  ``None``: never skip."""
        return None

    def adapt(self, source: Any) -> "Backend":
        """Take what the backend needs from the input image (plan time):
        number of channels, voxel sizes."""
        return self

    def auto_block_shape(self, shape: tuple[int, ...], halo: tuple[int, ...], memory_bytes: int) -> tuple[int, ...]:
        """A block shape sized for ``memory_bytes`` per task (``--block-shape auto``)."""
        raise InputError(f"--block-shape auto needs a backend with a memory model (cellpose). "
                         f"Got backend {self.name!r}: give the block shape.")

    def task_memory(self, voxels: int) -> int:
        """Bytes one worker process needs to segment blocks of ``voxels`` voxels
        (core + halo), the image's chunk cache not included (``--workers auto``).
        A callable's own memory is unknown: this is a floor for it."""
        return TASK_BASE_BYTES + TASK_BYTES_PER_VOXEL * int(voxels)

    def default_halo(self, ndim: int, voxel_size: tuple[float, ...] | None) -> tuple[int, ...] | None:
        """A halo suited to the method, or None when the user must give one."""
        return None

    def open(self, ctx: SegmentationContext | None = None, **runtime: Any) -> "Backend":
        """Prepare for a task (load a model once per task, not once per block).

        ``runtime`` holds per-task settings that do not change results'
        identity (e.g. ``device``); backends without any reject them.
        """
        if runtime:
            raise InputError(f"The {self.name} backend takes no run-time options. Got {sorted(runtime)} instead.")
        return self

    def close(self) -> None:
        """Release what ``open`` acquired."""

    @abstractmethod
    def segment(self, data: np.ndarray, crop: tuple[slice, ...], ctx: SegmentationContext) -> np.ndarray:
        """Label ``data`` and return the labels of the region ``crop`` of it.

        ``data`` is the block's core + halo + ``context`` (channel-first when
        several channels are selected); ``crop`` selects core + halo in its
        spatial axes.  Labels are integers, 0 is background.
        """

    def segment_local(self, data: np.ndarray, crop: tuple[slice, ...], core: tuple[slice, ...],
                      ctx: SegmentationContext) -> tuple[np.ndarray, int, int] | None:
        """Optional: the labels of ``crop`` already numbered as a block stores
        them, ``(uint32 labels, n, m)``: objects present in ``core`` (a region
        of the crop) are ``1..n`` and objects only outside it ``n+1..m``, each
        group in the order of the labels :meth:`segment` would return.  None
        (the default): pystitch checks and renumbers what :meth:`segment`
        returns."""
        return None

    def info(self) -> dict:
        """What to record in each block manifest (versions, device...)."""
        return {"backend": self.name}


def register(cls: type[Backend]) -> type[Backend]:
    _REGISTRY[cls.name] = cls
    return cls


def get_backend(name: str) -> type[Backend]:
    if name not in _REGISTRY and name == "cellpose":
        from . import cellpose_backend  # noqa: F401  (imports cellpose lazily itself)
    try:
        return _REGISTRY[name]
    except KeyError:
        known = sorted(set(_REGISTRY) | {"cellpose"})
        raise InputError(f"Expected a backend among {', '.join(known)}. Got {name!r} instead.") from None


def make_backend(name: str, ndim: int, **options: Any) -> Backend:
    return get_backend(name).from_options(ndim, **options)


def reject_unknown(backend: str, options: dict, known: set[str]) -> None:
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(
            f"Unknown option(s) for backend {backend!r}: {', '.join('--' + u.replace('_', '-') for u in unknown)}. "
            f"Expected some of: {', '.join('--' + k.replace('_', '-') for k in sorted(known))}."
        )


def parse_bool(value: Any, name: str) -> bool:
    """A flag from True/False or text (true/false, yes/no, 1/0)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise InputError(f"Expected true or false for --{name}. Got {value!r} instead.")


def per_axis(value: Any, ndim: int, what: str, cast=float) -> tuple:
    """A scalar or one value per spatial axis, as a tuple of length ``ndim``."""
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    if np.ndim(value) == 0:
        value = [value] * ndim
    value = list(value)
    if len(value) == 1:
        value = value * ndim
    if len(value) != ndim:
        raise InputError(f"Expected one {what} or one per axis ({ndim} for this image). Got {value!r} instead.")
    try:
        return tuple(cast(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"Expected numbers for {what}. Got {value!r} instead.") from None
