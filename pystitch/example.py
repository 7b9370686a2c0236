"""A small synthetic image to try pystitch on (no download needed).

Bright blobs of varied size and shape on a noisy background: smoothed random
noise, thresholded into objects, including objects that touch and objects
longer than a typical block.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import zarr
from scipy import ndimage


def blobs(shape: Sequence[int] = (48, 160, 160), *, seed: int = 0, sigma: float = 4.0,
          fraction: float = 0.25, dtype: str = "uint16") -> np.ndarray:
    """Intensity image: background ~100, objects ~1000 (+ noise).

    ``fraction`` is roughly the share of voxels inside objects; ``sigma``
    sets their size (voxels).
    """
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(tuple(shape)), sigma)
    cut = np.quantile(field, 1.0 - fraction)
    objects = field > cut
    image = 100.0 + 900.0 * objects + rng.normal(0.0, 30.0, size=tuple(shape))
    return np.clip(image, 0, np.iinfo(dtype).max if np.dtype(dtype).kind == "u" else None).astype(dtype)


def write_example(path: str | os.PathLike, shape: Sequence[int] = (48, 160, 160), seed: int = 0,
                  chunks: Sequence[int] | None = None, overwrite: bool = False) -> Path:
    """Write :func:`blobs` as an OME-Zarr image (NGFF 0.4, one level) at ``path``."""
    path = Path(path)
    if path.exists() and not overwrite:
        return path
    data = blobs(shape, seed=seed)
    axes = "zyx"[-len(shape):]
    root = zarr.open_group(store=str(path), mode="w", zarr_format=2)
    arr = root.create_array(name="0", shape=data.shape, chunks=tuple(chunks or [min(64, s) for s in data.shape]),
                            dtype=data.dtype, overwrite=True)
    arr[:] = data
    voxel = [2.0, 0.5, 0.5][-len(shape):]
    root.attrs["multiscales"] = [{
        "version": "0.4",
        "name": "pystitch example",
        "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in axes],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": voxel}]}],
    }]
    return path
