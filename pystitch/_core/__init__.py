"""Compiled kernels (Cython) behind validating wrappers.

The extension modules (``_lut``, ``_unionfind``, ``_contingency``,
``_regions``) trust their arguments; the functions here check dtypes, shapes
and ranges in Python, with messages that name what arrived, then call them.
Import the wrappers, never the extension modules.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ._ccl import label_local
from ._contingency import contingency_flat
from ._lut import apply_lut_flat
from ._regions import region_stats_3d
from ._unionfind import union_find_dense, union_find_min

__all__ = ["apply_lut_array", "contingency", "label_foreground", "region_stats", "union_find", "union_find_dense"]

#: objects a block's local labels (uint32) can number
MAX_LOCAL_OBJECTS = int(np.iinfo(np.uint32).max)

LABEL_DTYPES = (np.uint8, np.uint16, np.uint32, np.uint64)
VALUE_DTYPES = (np.uint8, np.uint16, np.uint32, np.uint64)


def apply_lut_array(labels: np.ndarray, lut: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Return ``lut[labels]`` computed by the compiled kernel.

    ``labels`` and ``lut`` must be unsigned integer arrays (read-only and
    non-contiguous inputs are accepted); a label outside the table is an
    error that names it.

    >>> apply_lut_array(np.array([0, 2, 1], np.uint32), np.array([0, 7, 9], np.uint64))
    array([0, 9, 7], dtype=uint64)
    """
    labels = np.asarray(labels)
    lut = np.asarray(lut)
    if labels.dtype.type not in LABEL_DTYPES:
        raise InputError(f"Expected unsigned integer labels (uint8..uint64). Got dtype {labels.dtype} instead.")
    if lut.dtype.type not in VALUE_DTYPES or lut.ndim != 1:
        raise InputError(f"Expected a 1-D unsigned integer lut. Got dtype {lut.dtype}, shape {lut.shape} instead.")
    if out is None:
        out = np.empty(labels.shape, dtype=lut.dtype)
    elif out.shape != labels.shape or out.dtype != lut.dtype or not out.flags.c_contiguous:
        raise InputError(f"Expected out as a C-contiguous {lut.dtype} array of shape {labels.shape}.")
    if labels.size == 0:
        return out
    flat = np.ascontiguousarray(labels).reshape(-1)
    bad = apply_lut_flat(flat, np.ascontiguousarray(lut), out.reshape(-1))
    if bad >= 0:
        raise InputError(f"Label {int(flat[bad])} is outside the lut (which has {len(lut)} entries).")
    return out


def union_find(left: np.ndarray, right: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """Join elements ``left[i]`` and ``right[i]`` of ``0..n-1``.

    Returns ``(roots, merges)``; ``roots[k]`` is the smallest element joined
    with ``k`` (whatever the order of the pairs).  Read-only and any integer
    dtype inputs are accepted.

    >>> roots, merges = union_find(np.array([3, 1]), np.array([1, 0]), 4)
    >>> roots.tolist(), merges
    ([0, 0, 2, 0], 2)
    """
    left = np.ascontiguousarray(left, dtype=np.int64)
    right = np.ascontiguousarray(right, dtype=np.int64)
    if left.shape != right.shape or left.ndim != 1:
        raise InputError(f"Expected two 1-D index arrays of equal length. Got shapes {left.shape} and {right.shape}.")
    if left.size and (min(left.min(), right.min()) < 0 or max(left.max(), right.max()) >= n):
        raise InputError(f"Expected indices in [0, {n}). Got values outside that range.")
    return union_find_min(left, right, int(n))


def contingency(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel counts of every (non-zero label in ``a``, non-zero label in ``b``)
    pair over the same voxels, sorted by (a, b).

    >>> la, lb, n = contingency(np.array([1, 1, 2, 0]), np.array([5, 5, 5, 3]))
    >>> la.tolist(), lb.tolist(), n.tolist()
    ([1, 2], [5, 5], [2, 1])
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise InputError(f"Expected two label arrays of one shape. Got {a.shape} and {b.shape} instead.")
    for x in (a, b):
        if x.dtype.kind not in "ui" or (x.dtype.kind == "i" and x.size and x.min() < 0) or \
                (x.size and int(x.max()) > np.iinfo(np.uint32).max):
            raise InputError(f"Expected non-negative labels that fit in uint32. Got dtype {x.dtype}.")
    a32 = np.ascontiguousarray(a, dtype=np.uint32).reshape(-1)
    b32 = np.ascontiguousarray(b, dtype=np.uint32).reshape(-1)
    return contingency_flat(a32, b32)


def region_stats(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per label ``1..n`` of a 2-D or 3-D uint32 label array: voxel count,
    bounding box (lo inclusive, hi exclusive) and coordinate sums.

    Returns ``(counts (n,), lo (n, ndim), hi (n, ndim), sums (n, ndim))``;
    labels above ``n`` are an error.
    """
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3) or labels.dtype != np.uint32:
        raise InputError(f"Expected a 2-D or 3-D uint32 label array. Got {labels.dtype} of shape {labels.shape}.")
    ndim = labels.ndim
    try:
        counts, lo, hi, sums = region_stats_3d(
            np.ascontiguousarray(labels).reshape((1,) * (3 - ndim) + labels.shape), n)
    except ValueError as exc:  # the kernel names the first label above n
        raise InputError(str(exc)) from None
    return counts[1:], lo[1:, 3 - ndim:], hi[1:, 3 - ndim:], sums[1:, 3 - ndim:]


def label_foreground(mask: np.ndarray, connectivity: int, core: tuple[slice, ...]
                     ) -> tuple[np.ndarray, int, int, int]:
    """Connected components of a 2-D or 3-D boolean ``mask``, numbered as a
    block stores them: objects present in ``core`` (one slice per axis) are
    ``1..n`` and objects only outside it ``n+1..m``, each group in the order
    of their first voxel (the order of ``scipy.ndimage.label``).

    ``connectivity`` 1..ndim as in ``scipy.ndimage.generate_binary_structure``.
    Returns ``(uint32 labels, n, m, foreground voxels of the core)``; more
    than 2**32 - 1 objects is an error (``OverflowError``).

    >>> mask = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 1]], bool)
    >>> labels, n, m, fg = label_foreground(mask, 1, (slice(0, 3), slice(1, 3)))
    >>> labels.tolist(), n, m, fg
    ([[4, 0, 1], [0, 2, 0], [0, 0, 3]], 3, 4, 3)
    """
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.ndim not in (2, 3):
        raise InputError(f"Expected a 2-D or 3-D boolean mask. Got {mask.dtype} of shape {mask.shape} instead.")
    if not 1 <= int(connectivity) <= mask.ndim:
        raise InputError(f"Expected a connectivity between 1 and {mask.ndim}. Got {connectivity} instead.")
    if len(core) != mask.ndim:
        raise InputError(f"Expected one core slice per axis ({mask.ndim}). Got {len(core)} instead.")
    bounds = [s.indices(n)[:2] for s, n in zip(core, mask.shape)]
    bounds = [(0, 1)] * (3 - mask.ndim) + bounds
    out = np.zeros(mask.shape, np.uint32)
    flat = np.ascontiguousarray(mask).view(np.uint8).reshape((1,) * (3 - mask.ndim) + mask.shape)
    n, m, fg = label_local(flat, int(connectivity), *(v for b in bounds for v in b),
                           out.reshape(flat.shape))
    if m > MAX_LOCAL_OBJECTS:
        raise OverflowError(f"{m} objects; at most {MAX_LOCAL_OBJECTS} fit in uint32 local labels")
    return out, n, m, fg
