"""pystitch: segment images larger than memory block by block and stitch the
labels into one image with globally consistent, sequential, deterministic ids.

Python API::

    import pystitch
    summary = pystitch.run("image.zarr", "labels.zarr", block_shape=(64, 256, 256),
                           halo=(8, 16, 16), backend="threshold", threshold=500)
    labels = pystitch.segment(numpy_or_dask_array, block_shape=256, halo=16, threshold=500)

``run`` and ``segment`` take a path, a zarr array, or an array in memory
(numpy, dask); ``segment`` returns the label image as a zarr array.

The step functions (``plan_blocks``, ``segment_blocks``, ``face_pairs``,
``resolve``, ``apply_lut``, ``finalize``) are what the CLIs and the Nextflow
pipeline call; ``merge`` stitches labels you computed yourself.

Names are imported on first use, so ``import pystitch`` (and the CLIs'
``--help``) stay quick.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .errors import (
    DeviceError, InputError, InputNotFoundError, LabelOverflowError, OutputExistsError, PlanMismatchError,
    PystitchError, SegmenterError, StagingError,
)

#: public name -> module that defines it
_LAZY = {
    "run": "pystitch.runner",
    "segment": "pystitch.runner",
    "Plan": "pystitch.plan",
    "BlockGrid": "pystitch.grid",
    "plan_blocks": "pystitch.steps.plan_blocks",
    "segment_blocks": "pystitch.steps.segment_block",
    "face_pairs": "pystitch.steps.face_pairs",
    "resolve": "pystitch.steps.resolve",
    "apply_lut": "pystitch.steps.apply_lut",
    "finalize": "pystitch.steps.finalize",
    "merge": "pystitch.merge",
    "convert": "pystitch.conversion",
}

__all__ = [
    "__version__", *_LAZY, "PystitchError", "InputError", "InputNotFoundError", "OutputExistsError",
    "PlanMismatchError", "StagingError", "LabelOverflowError", "SegmenterError", "DeviceError",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pystitch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
