"""Follow: the end point of every foreground voxel of a block, in global coordinates.

Cellpose moves every voxel with ``cellprob > threshold`` along the flows for
``niter`` steps and keeps the integer part of where it ends.  A trajectory reads
only the flows around the positions it visits, and the flows are zero outside
the foreground, so a voxel's end point can be computed from a *window* of the
flows around it; :mod:`pystitch._core._flows` does it with Cellpose's own
arithmetic and the *whole image's* shape (the normalisation of ``grid_sample``
and the clamping at the image border depend on it), which makes the end points
identical to those of the whole-image computation.

Data in and out of one follow task (a block core, ``n`` foreground voxels):

* in: ``dP`` (ndim, *window) float32 and ``cellprob`` (*window) of the core
  grown by the halo (clipped to the image); 4 (ndim + 1) bytes per window voxel;
* out: :class:`FollowedBlock` -- ``ends`` (n,) int64 global flat index of each
  end point, in the C order of the core's foreground voxels (8 n bytes; the
  foreground mask of the core is ``cellprob > threshold`` of the core, so the
  assign step needs only ``ends`` and that mask), and the block's
  :func:`endpoint_histogram` (distinct end points and their counts, usually far
  fewer than ``n``: trajectories converge).

A trajectory that reads outside the window is never silently wrong: the kernel
flags it, and :func:`follow_block` follows it again from its start in a window
grown by doubling the halo, until it stays inside (the whole image at worst).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import InputError
from .dynamics import Dynamics, fused_gridsample2d

__all__ = [
    "FollowedBlock",
    "endpoint_histogram",
    "follow_block",
    "follow_points",
    "step_field",
]

Box = tuple[tuple[int, ...], tuple[int, ...]]  # (lo, hi), global, hi exclusive
WindowReader = Callable[[tuple[int, ...], tuple[int, ...]], tuple[np.ndarray, np.ndarray]]


def step_field(dP: np.ndarray, foreground: np.ndarray, dynamics: Dynamics,
               global_shape: Sequence[int], origin: Sequence[int]) -> np.ndarray:
    """The window's per-step displacement field, in the units the kernel follows.

    ``dP`` (ndim, *window) float32: the network's flows; ``foreground``
    (*window) bool: ``cellprob > threshold``.  Cellpose steps by
    ``dP * foreground / 5`` (float32); the grid_sample kernels also need it in
    normalised units of the whole image, channels in (x, y[, z]) order.
    ``origin`` is unused here (the field is the window's); it is accepted so
    that callers pass the same arguments to every function of this module.
    """
    ndim = len(global_shape)
    _check_window(dP, foreground, ndim)
    flow = dP * foreground / 5.0  # the same expression, and so the same float32 rounding, as cellpose
    if ndim == 2 and dynamics.interp2d == "bilinear":
        return np.ascontiguousarray(flow, dtype=np.float32)
    im = np.empty_like(flow)
    sizes = [int(s) for s in global_shape][::-1]  # x, y[, z]
    for k in range(ndim):
        # torch multiplies a float32 tensor by a Python float as float32(2 / (L - 1))
        im[k] = flow[ndim - k - 1] * np.float32(2.0 / (sizes[k] - 1))
    return im


def follow_points(steps: np.ndarray, origin: Sequence[int], global_shape: Sequence[int],
                  starts: np.ndarray, niter: int, dynamics: Dynamics,
                  threads: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """End points of ``starts`` (ndim, n) int64 global voxel coordinates.

    ``steps`` is :func:`step_field` of the window at global ``origin``.
    Returns ``ends`` (ndim, n) int64 global coordinates, ``escaped`` (n,) bool
    (the trajectory needed flows outside the window: its end is undefined) and
    ``reach`` (ndim, n) int32, the largest distance per axis between the start
    voxel and a flow voxel the trajectory read (the halo it needed).
    ``threads`` > 1 follows parts of the points in threads (the kernels
    release the GIL); the result does not depend on it.
    """
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    if threads > 1 and starts.ndim == 2 and starts.shape[1] >= 2 * threads:
        from concurrent.futures import ThreadPoolExecutor

        parts = np.array_split(np.arange(starts.shape[1]), threads)
        with ThreadPoolExecutor(threads) as pool:
            done = list(pool.map(lambda idx: follow_points(steps, origin, global_shape,
                                                           starts[:, idx], niter, dynamics), parts))
        return (np.concatenate([d[0] for d in done], axis=1), np.concatenate([d[1] for d in done]),
                np.concatenate([d[2] for d in done], axis=1))
    from .._core import _flows

    ndim = len(global_shape)
    shape = tuple(int(s) for s in global_shape)
    if any(s < 2 for s in shape):
        raise InputError(f"Expected every axis of the image to have at least 2 voxels. Got shape {shape} instead.")
    if starts.ndim != 2 or starts.shape[0] != ndim:
        raise InputError(f"Expected starts of shape ({ndim}, n). Got {starts.shape} instead.")
    n = starts.shape[1]
    origin = tuple(int(o) for o in origin)
    escaped = np.zeros(n, np.uint8)
    reach = np.zeros((ndim, n), np.int32)
    niter = int(niter)
    if ndim == 2 and dynamics.interp2d == "bilinear":
        pos = starts.astype(np.float32)
        _flows.follow_bilinear2d(steps, pos, origin[0], origin[1], shape[0], shape[1], niter, escaped, reach)
        ends = pos.astype(np.int64)  # truncation, as torch's .int(); positions are >= 0
        return ends, escaped.view(bool), reach
    # grid_sample: positions normalised by the whole image, in (x, y[, z]) order, as cellpose builds them
    sizes = shape[::-1]
    g = np.empty((ndim, n), np.float32)
    for k in range(ndim):
        g[k] = starts[ndim - k - 1].astype(np.float32) / np.float32(sizes[k] - 1)
    g *= np.float32(2)
    g -= np.float32(1)
    if ndim == 2:
        _flows.follow_gridsample2d(steps, g, origin[0], origin[1], shape[0], shape[1], niter,
                                   fused_gridsample2d(), escaped, starts, reach)
    elif ndim == 3:
        _flows.follow_gridsample3d(steps, g, origin[0], origin[1], origin[2], shape[0], shape[1], shape[2],
                                   niter, escaped, starts, reach)
    else:
        raise InputError(f"Expected a 2-D or 3-D image. Got {ndim} dimensions instead.")
    g += np.float32(1)
    g *= np.float32(0.5)
    ends = np.empty((ndim, n), np.int64)
    for k in range(ndim):
        ends[ndim - k - 1] = (g[k] * np.float32(sizes[k] - 1)).astype(np.int32)
    return ends, escaped.view(bool), reach


@dataclasses.dataclass(frozen=True)
class FollowedBlock:
    """What one follow task hands on.

    ``ends``: (n,) int64 global flat (C-order) index of the end point of each
    foreground voxel of the core, in the C order of those voxels.  ``n_escaped``:
    trajectories that left the first window and were followed again in a
    larger one.  ``reach``: per axis, the largest distance between a start
    voxel and a flow voxel read (the halo this block needed).  ``halo``: the
    halo of the last window used.
    """

    lo: tuple[int, ...]
    hi: tuple[int, ...]
    ends: np.ndarray
    n_escaped: int
    reach: tuple[int, ...]
    halo: tuple[int, ...]


def follow_block(read: WindowReader, lo: Sequence[int], hi: Sequence[int], global_shape: Sequence[int],
                 niter: int, cellprob_threshold: float, dynamics: Dynamics,
                 halo: Sequence[int], threads: int = 1) -> FollowedBlock:
    """Follow every foreground voxel of the core ``[lo, hi)``.

    ``read(wlo, whi)`` returns ``(dP, cellprob)`` of the box ``[wlo, whi)``
    (dP float32, shape (ndim, *box)).  The window is the core grown by ``halo``
    per axis and clipped to the image; trajectories that leave it are followed
    again, from their start, with the halo doubled, until none leaves.
    """
    shape = tuple(int(s) for s in global_shape)
    ndim = len(shape)
    lo = tuple(int(v) for v in lo)
    hi = tuple(int(v) for v in hi)
    halo = tuple(int(h) for h in halo)
    if len(lo) != ndim or len(hi) != ndim or len(halo) != ndim:
        raise InputError(f"Expected lo, hi and halo with {ndim} entries. Got {lo}, {hi}, {halo} instead.")
    if any(h < 1 for h in halo):
        raise InputError(f"Expected a halo of at least 1 voxel per axis. Got {halo} instead.")

    wlo, whi = _grow(lo, hi, halo, shape)
    dP, cellprob = _read(read, wlo, whi, ndim)
    foreground = cellprob > cellprob_threshold
    core = tuple(slice(a - w, b - w) for a, b, w in zip(lo, hi, wlo))
    starts = np.stack(np.nonzero(foreground[core])).astype(np.int64).reshape(ndim, -1)
    starts += np.asarray(lo, np.int64)[:, None]
    steps = step_field(dP, foreground, dynamics, shape, wlo)
    ends, escaped, reach = follow_points(steps, wlo, shape, starts, niter, dynamics, threads)
    n_escaped = int(escaped.sum())
    while escaped.any():
        if wlo == (0,) * ndim and whi == shape:
            raise AssertionError("a trajectory left a window that holds the whole image")
        halo = tuple(2 * h for h in halo)
        wlo, whi = _grow(lo, hi, halo, shape)
        dP, cellprob = _read(read, wlo, whi, ndim)
        steps = step_field(dP, cellprob > cellprob_threshold, dynamics, shape, wlo)
        again = np.nonzero(escaped)[0]
        ends_again, escaped_again, reach_again = follow_points(steps, wlo, shape, starts[:, again], niter,
                                                               dynamics, threads)
        ends[:, again] = ends_again
        reach[:, again] = reach_again
        escaped[again] = escaped_again
    flat = np.ravel_multi_index(tuple(ends), shape).astype(np.int64) if ends.shape[1] else np.zeros(0, np.int64)
    most = tuple(int(r) for r in reach.max(axis=1)) if reach.shape[1] else (0,) * ndim
    return FollowedBlock(lo, hi, flat, n_escaped, most, halo)


def endpoint_histogram(ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct end points (sorted global flat indices, int64) and their counts (int64)."""
    positions, counts = np.unique(np.asarray(ends, np.int64), return_counts=True)
    return positions, counts.astype(np.int64)


# ---------------------------------------------------------------- helpers


def _grow(lo: tuple[int, ...], hi: tuple[int, ...], halo: tuple[int, ...],
          shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    wlo = tuple(max(0, a - h) for a, h in zip(lo, halo))
    whi = tuple(min(s, b + h) for b, h, s in zip(hi, halo, shape))
    return wlo, whi


def _read(read: WindowReader, wlo: tuple[int, ...], whi: tuple[int, ...], ndim: int) -> tuple[np.ndarray, np.ndarray]:
    dP, cellprob = read(wlo, whi)
    box = tuple(b - a for a, b in zip(wlo, whi))
    dP = np.asarray(dP)
    cellprob = np.asarray(cellprob)
    if dP.shape != (ndim, *box) or cellprob.shape != box:
        raise InputError(
            f"Expected flows of shape {(ndim, *box)} and cell probability of shape {box} for the window "
            f"{wlo}..{whi}. Got {dP.shape} and {cellprob.shape} instead."
        )
    if dP.dtype != np.float32:
        dP = dP.astype(np.float32)  # stored as float16: follow what cellpose would follow on the upcast values
    return dP, cellprob


def _check_window(dP: np.ndarray, foreground: np.ndarray, ndim: int) -> None:
    if dP.ndim != ndim + 1 or dP.shape[0] != ndim or dP.shape[1:] != foreground.shape:
        raise InputError(
            f"Expected flows of shape ({ndim}, *window) matching the foreground {foreground.shape}. "
            f"Got {dP.shape} instead."
        )
    if dP.dtype != np.float32:
        raise InputError(f"Expected float32 flows (as the network returns them). Got {dP.dtype} instead.")
