"""What differs between the Cellpose versions in turning flows into masks.

The ``flows`` rule reproduces the installed Cellpose's own mask computation
(``cellpose.dynamics.resize_and_compute_masks``: follow the flows, seeds in
the histogram of end points, mask filters), block by block.  Where cellpose
3.1 and 4.x compute differently, :class:`Dynamics` names the difference, and
:func:`dynamics_for` builds it for a version string.  Nothing here imports
cellpose; torch is imported only to check that the compiled kernels compute
exactly what the installed torch computes (:func:`check_kernels`).

Differences (cellpose 3.1.1.3 against 4.2.1.1, both read from their sources):

=============================  ==================================  ==================================
step                           3.1                                 4.x
=============================  ==================================  ==================================
2-D dynamics on the CPU        numba bilinear interpolation in     ``torch.grid_sample`` on positions
                               pixels, clamped to the image        normalised by the image size
3-D dynamics                   ``grid_sample`` (both)              ``grid_sample``
flow check (2-D) flows         per object, ``2 (h + w + 4)``       all objects at once, ``2 * max
                               iterations, float64                 (h + w + 2)`` iterations over the
                                                                   whole image, float32 when the
                                                                   padded image has > 4e7 pixels
flow check mean                ``scipy.ndimage.mean`` per axis     ``numpy.mean`` of the summed error
after the flow check           gaps in the ids (no renumbering)    renumbered
small masks                    removed by *index* among the        removed by label value
                               present labels (with gaps, not the
                               labels that are small)
=============================  ==================================  ==================================

Shared by both: steps are ``dP * (cellprob > threshold) / 5``; end points are
truncated to integers; seeds are maxima of a 5-voxel max filter of the end
point histogram with more than 10 end points, ranked by ``torch.argsort`` of
their counts (ascending; not a stable sort), each grown 5 times by one voxel
(3^n neighbourhood) into histogram voxels with more than 2 end points, the
higher-ranked seed winning a voxel two seeds reach; masks larger than
``max_size_fraction`` of the image are dropped; holes are filled with
``fill_voids`` per object, in label order.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import numpy as np

from ..errors import InputError

__all__ = [
    "Dynamics",
    "KernelMismatchError",
    "check_kernels",
    "dynamics_for",
    "installed_dynamics",
    "niter_for",
]

#: cellpose 4 computes the flow check's diffusion in float32 above this many
#: pixels (of the image padded by one pixel on each side)
CP4_FLOAT32_PIXELS = 4e7


class KernelMismatchError(InputError, RuntimeError):
    """The compiled dynamics do not reproduce the installed torch/numba bit for bit."""


@dataclasses.dataclass(frozen=True)
class Dynamics:
    """How the installed Cellpose turns flows into masks (see the module table)."""

    version: str
    major: int
    #: "bilinear" (cellpose 3, CPU) or "gridsample" (cellpose 4)
    interp2d: Literal["bilinear", "gridsample"]
    #: flow-check diffusion: "per_object" (3) or "global_max" (4)
    flow_check_iterations: Literal["per_object", "global_max"]
    #: cellpose 3 leaves gaps after the flow check and removes small masks by index
    renumber_after_flow_check: bool
    small_masks_by_index: bool

    def __post_init__(self) -> None:
        if self.major not in (3, 4):
            raise InputError(f"Expected cellpose major version 3 or 4. Got {self.version!r} instead.")


def dynamics_for(version: str) -> Dynamics:
    """The :class:`Dynamics` of a cellpose version string ("3.1.1.3", "4.2.1.1")."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        raise InputError(f"Expected a cellpose version like 3.1.1 or 4.2.1. Got {version!r} instead.") from None
    if major == 3:
        return Dynamics(version, 3, "bilinear", "per_object", False, True)
    if major == 4:
        return Dynamics(version, 4, "gridsample", "global_max", True, False)
    raise InputError(f"Expected cellpose major version 3 or 4. Got {version!r} instead.")


def installed_dynamics() -> Dynamics:
    """The :class:`Dynamics` of the installed cellpose (read from its metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return dynamics_for(version("cellpose"))
    except PackageNotFoundError:
        raise InputError("Expected cellpose to be installed for the flows rule. Got no cellpose package.") from None


def niter_for(major: int, rescale: float = 1.0, resample: bool = True, niter: int | None = None) -> int:
    """The number of dynamics steps ``CellposeModel.eval`` uses.

    An explicit ``niter`` (> 0) wins; otherwise 200, scaled by the inverse of
    the rescale factor when ``resample`` (cellpose 3 takes ``1 / rescale * 200``
    and truncates it when stepping; cellpose 4 ``int(200 / rescale)``).
    """
    if niter is not None and niter > 0:
        return int(niter)
    if major == 3:
        return int(np.uint32(200 if not resample else (1 / rescale * 200)))
    scale = 1 if rescale is None or not resample else rescale
    return int(200 / scale)


# ---------------------------------------------------------------- kernel checks


@functools.lru_cache(maxsize=None)
def fused_gridsample2d() -> bool:
    """Whether torch's 2-D ``grid_sample`` on this CPU fuses multiply-adds.

    torch's vectorised 2-D kernel is compiled with floating-point contraction:
    in its AVX2/AVX512 builds the un-normalisation and the sum of the four
    corners are fused multiply-adds; its scalar build has none.  One step of
    both kernel variants is compared with ``grid_sample`` on a fixed random
    probe; the variant that matches bit for bit is used.  Raises
    :class:`KernelMismatchError` when neither does.
    """
    import torch

    from .._core import _flows

    rng = np.random.default_rng(20261)
    shape = (37, 53)
    im = rng.normal(scale=0.1, size=(2, *shape)).astype(np.float32)
    g = rng.uniform(-1, 1, size=(2, 4096)).astype(np.float32)
    ref = torch.nn.functional.grid_sample(
        torch.from_numpy(im)[None], torch.from_numpy(np.ascontiguousarray(g.T))[None, None],
        align_corners=False,
    )[0, :, 0].numpy()
    expected = np.clip(g + ref, -1, 1)
    for fused in (True, False):
        got = g.copy()
        escaped = np.zeros(g.shape[1], np.uint8)
        start = np.zeros((2, g.shape[1]), np.int64)
        reach = np.zeros((2, g.shape[1]), np.int32)
        _flows.follow_gridsample2d(im, got, 0, 0, shape[0], shape[1], 1, fused, escaped, start, reach)
        if np.array_equal(got, expected):
            return fused
    raise KernelMismatchError(
        f"Expected the 2-D flow kernel to reproduce torch {torch.__version__}'s grid_sample on this CPU "
        f"({torch.backends.cpu.get_cpu_capability()}) bit for bit. Got a difference with and without fused "
        "multiply-adds instead: exact flows stitching is not possible with this torch build."
    )


def check_kernels(dynamics: Dynamics) -> None:
    """Check the compiled dynamics against the installed implementation.

    Follows every pixel of a small random field for a few steps with both
    cellpose's own code (the installed version's ``steps_interp``) and the
    window kernels (in two windows that together cover the field) and
    requires identical positions.  Raises :class:`KernelMismatchError`.
    """
    from cellpose import dynamics as cpdyn
    import torch

    from .follow import follow_points, step_field

    rng = np.random.default_rng(7)
    for shape in ((29, 41), (9, 13, 17)):
        dP = rng.normal(scale=2.0, size=(len(shape), *shape)).astype(np.float32)
        fg = rng.random(shape) < 0.8
        inds = np.nonzero(fg)
        flow = dP * fg / 5.0
        ref = cpdyn.steps_interp(flow, inds, np.uint32(6), device=torch.device("cpu"))
        ref = ref.numpy() if hasattr(ref, "numpy") else np.asarray(ref)
        ref = ref.astype(np.int32)  # cellpose truncates with torch .int()
        starts = np.stack(inds).astype(np.int64)
        steps = step_field(dP, fg, dynamics, shape, (0,) * len(shape))
        ends, escaped, _ = follow_points(steps, (0,) * len(shape), shape, starts, 6, dynamics)
        if escaped.any() or not np.array_equal(ends, ref):
            bad = int((ends != ref).any(axis=0).sum())
            raise KernelMismatchError(
                f"Expected the compiled {len(shape)}-D dynamics to reproduce cellpose {dynamics.version} "
                f"(torch {torch.__version__}) exactly. Got {bad} of {ref.shape[1]} end points that differ instead."
            )
