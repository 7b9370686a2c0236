"""Threshold + connected components: the exact, local reference segmenter.

Optional Gaussian smoothing, then ``value > threshold``, then connected
components with a chosen connectivity.  The threshold is a fixed number or
Otsu's threshold computed ONCE for the whole image at plan time, never per
block.  Smoothing reads ``context`` extra voxels beyond the halo so that the
smoothed values of the block are those of the whole image, which makes the
``exact`` stitch reproduce ``scipy.ndimage.label`` on the whole image.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._core import label_foreground
from ..errors import InputError
from .base import Backend, SegmentationContext, per_axis, register, reject_unknown

#: the smoothing is done in float32 (the whole-image reference must do the same)
SMOOTH_DTYPE = np.float32


def otsu_threshold(values: np.ndarray, bins: int = 1024) -> float:
    """Otsu's threshold of a sample of intensities (maximum between-class variance)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise InputError("Cannot compute an Otsu threshold: the image sample holds no finite values.")
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        return lo
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mean0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mean1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centers[int(np.argmax(between[:-1]))])


def above(data: np.ndarray, threshold: float) -> np.ndarray:
    """``data > threshold``, for integer data compared in its own type: an
    integer is above ``threshold`` exactly when it is above its floor, so no
    voxel is converted to float64 (numpy would convert the whole block, eight
    bytes a voxel, and round integers beyond 2**53).  Other data: numpy's
    comparison."""
    if data.dtype.kind not in "iu":
        return data > threshold
    info = np.iinfo(data.dtype)
    cut = math.floor(threshold)
    if cut < info.min:
        return np.ones(data.shape, dtype=bool)
    if cut >= info.max:
        return np.zeros(data.shape, dtype=bool)
    return data > data.dtype.type(cut)


@register
class ThresholdBackend(Backend):
    name = "threshold"
    default_rule = "exact"

    def __init__(self, threshold: float | str, sigma: tuple[float, ...] = (), connectivity: int = 1,
                 truncate: float = 4.0) -> None:
        self.threshold = threshold
        self.sigma = tuple(float(s) for s in sigma)
        self.connectivity = int(connectivity)
        self.truncate = float(truncate)

    @property
    def stats_needed(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"max", "sample"}) if self.threshold == "otsu" else frozenset({"max"})

    @classmethod
    def from_options(cls, ndim: int, **options: Any) -> "ThresholdBackend":
        reject_unknown(cls.name, options, {"threshold", "sigma", "connectivity", "truncate"})
        if "threshold" not in options or options["threshold"] is None:
            raise InputError("The threshold backend needs --threshold: a number, or 'otsu' for a global Otsu threshold.")
        thr = options["threshold"]
        if isinstance(thr, str) and thr.strip().lower() == "otsu":
            thr = "otsu"
        else:
            try:
                thr = float(thr)
            except (TypeError, ValueError):
                raise InputError(f"Expected --threshold to be a number or 'otsu'. Got {thr!r} instead.") from None
            if not np.isfinite(thr):
                raise InputError(f"Expected a finite --threshold. Got {thr!r} instead.")
        sigma = per_axis(options.get("sigma", 0.0), ndim, "sigma")
        if any(s < 0 or not np.isfinite(s) for s in sigma):
            raise InputError(f"Expected --sigma >= 0. Got {sigma} instead.")
        conn = options.get("connectivity", 1)
        if isinstance(conn, str) and conn.lower() == "full":
            conn = ndim
        try:
            conn = int(conn)
        except (TypeError, ValueError):
            raise InputError(f"Expected --connectivity between 1 and {ndim} or 'full'. Got {conn!r} instead.") from None
        if not 1 <= conn <= ndim:
            raise InputError(f"Expected --connectivity between 1 and {ndim} (or 'full'). Got {conn} instead.")
        truncate = float(options.get("truncate", 4.0))
        if truncate <= 0:
            raise InputError(f"Expected --truncate > 0. Got {truncate} instead.")
        return cls(thr, sigma if any(sigma) else (), conn, truncate)

    def params(self) -> dict:
        return {"threshold": self.threshold, "sigma": list(self.sigma), "connectivity": self.connectivity,
                "truncate": self.truncate}

    def context(self, ndim: int) -> tuple[int, ...]:
        if not self.sigma:
            return (0,) * ndim
        # scipy's Gaussian kernel radius, plus one voxel of margin
        return tuple(int(self.truncate * s + 0.5) + 1 if s > 0 else 0 for s in self.sigma)

    def finish_plan(self, sample: np.ndarray | None) -> tuple["ThresholdBackend", dict]:
        if self.threshold != "otsu":
            return self, {}
        if sample is None or sample.size == 0:
            raise InputError("An Otsu threshold needs an image sample, but the image is empty.")
        value = otsu_threshold(sample)
        done = ThresholdBackend(value, self.sigma, self.connectivity, self.truncate)
        return done, {"threshold": value, "threshold_method": "otsu", "threshold_sample_size": int(sample.size)}

    def empty_below(self) -> float | None:
        # smoothing never raises the maximum, so max <= threshold means no foreground
        return None if self.threshold == "otsu" else float(self.threshold)

    def _foreground(self, data: np.ndarray, crop: tuple[slice, ...], ctx: SegmentationContext) -> np.ndarray:
        if data.ndim != ctx.ndim:
            raise InputError(
                f"The threshold backend segments one channel. Got a block of shape {data.shape} for a "
                f"{ctx.ndim}-D image (block {ctx.block}); select one --channel."
            )
        if self.sigma:
            from scipy import ndimage  # here, not at import: only smoothing needs scipy

            data = ndimage.gaussian_filter(data.astype(SMOOTH_DTYPE, copy=False), self.sigma,
                                           truncate=self.truncate, mode="reflect")
        return above(data[crop], self.threshold)

    def segment(self, data: np.ndarray, crop: tuple[slice, ...], ctx: SegmentationContext) -> np.ndarray:
        from scipy import ndimage

        structure = ndimage.generate_binary_structure(ctx.ndim, self.connectivity)
        labels, _ = ndimage.label(self._foreground(data, crop, ctx), structure=structure)
        return labels

    def segment_local(self, data: np.ndarray, crop: tuple[slice, ...], core: tuple[slice, ...],
                      ctx: SegmentationContext) -> tuple[np.ndarray, int, int]:
        # connected components and the local numbering in one compiled pass: the
        # same labels as segment() renumbered (tests/test_kernels.py)
        labels, n, m, _ = label_foreground(self._foreground(data, crop, ctx), self.connectivity, core)
        return labels, n, m
