"""pystitch: segment images larger than memory block by block and stitch the
labels into one image with globally consistent, sequential, deterministic ids.

Python API::

    import pystitch
    summary = pystitch.run("image.zarr", "labels.zarr", block_shape=(64, 256, 256),
                           halo=(8, 16, 16), backend="threshold", threshold=500)

The step functions (``plan_blocks``, ``segment_blocks``, ``face_pairs``,
``resolve``, ``apply_lut``, ``finalize``) are what the CLIs and the Nextflow
pipeline call; ``merge`` stitches labels you computed yourself.
"""

from ._version import __version__
from .errors import (
    DeviceError, InputError, InputNotFoundError, LabelOverflowError, OutputExistsError, PlanMismatchError,
    PystitchError, SegmenterError, StagingError,
)
from .faces import face_pairs
from .finalize import finalize
from .merge import merge
from .plan import Plan, plan_blocks
from .relabel import apply_lut
from .resolve import resolve
from .runner import run
from .segment import segment_blocks

__all__ = [
    "__version__", "run", "Plan", "plan_blocks", "segment_blocks", "face_pairs", "resolve", "apply_lut",
    "finalize", "merge", "PystitchError", "InputError", "InputNotFoundError", "OutputExistsError",
    "PlanMismatchError", "StagingError", "LabelOverflowError", "SegmenterError", "DeviceError",
]
