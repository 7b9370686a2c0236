"""Segmentation backends.

A backend turns one block of image data into integer labels.  It is built
from the options given to ``plan-blocks`` (validated there, stored in
plan.json) and rebuilt from plan.json by every ``segment-block`` task, so
all blocks of one plan are segmented with identical settings, including
values computed ONCE for the whole image (a global threshold, normalisation
percentiles).
"""

from __future__ import annotations

from .base import Backend, SegmentationContext, get_backend, make_backend, register

# importing the modules registers the backends
from . import threshold as _threshold  # noqa: F401,E402
from . import function as _function  # noqa: F401,E402

__all__ = ["Backend", "SegmentationContext", "get_backend", "make_backend", "register"]
