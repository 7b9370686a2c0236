"""One error hierarchy for pystitch.

Every error a user can cause derives from :class:`PystitchError` and also from
the standard-library type that fits, so callers may catch either.  Messages say
what was expected, what arrived and where (file, block id).
"""

from __future__ import annotations


class PystitchError(Exception):
    """Base class of every error raised on purpose by pystitch."""


class InputError(PystitchError, ValueError):
    """An input image, argument or option is not what a step expects."""


class InputNotFoundError(InputError, FileNotFoundError):
    """An input path does not exist or cannot be opened."""


class OutputExistsError(PystitchError, FileExistsError):
    """The output exists and ``overwrite`` was not requested."""


class PlanMismatchError(PystitchError, ValueError):
    """A file was produced for a different plan than the one in use."""


class StagingError(PystitchError, RuntimeError):
    """An intermediate result (manifest, pairs, lut, staging chunk) is missing or corrupt."""


class LabelOverflowError(PystitchError, OverflowError):
    """More labels than the id dtype can hold."""


class SegmenterError(PystitchError, RuntimeError):
    """A segmentation backend failed or returned something that is not a label image."""


class DeviceError(PystitchError, RuntimeError):
    """A requested compute device (GPU) is not available."""
