"""Flows and cell probabilities from fixed arrays, and the oracle: the installed
Cellpose's own mask computation on the whole arrays (shared by the tests of
the flows rule's core and of its steps)."""

from __future__ import annotations

import fastremap
import numpy as np
import torch
from cellpose import dynamics as cpdyn
from scipy import ndimage

from pystitch.flows.dynamics import installed_dynamics

CPU = torch.device("cpu")


def masks_to_flows(labels: np.ndarray) -> np.ndarray:
    """Cellpose's own flows of a label image (unit vectors), float32."""
    labels, _ = fastremap.renumber(labels.astype(np.int32))
    if hasattr(cpdyn, "masks_to_flows"):  # cellpose 3
        mu = cpdyn.masks_to_flows(labels, device=CPU)
    elif labels.ndim == 2:
        mu = cpdyn.masks_to_flows_gpu(labels, device=CPU)[0]
    else:
        mu = cpdyn.masks_to_flows_gpu_3d(labels, device=CPU)
        mu = mu[0] if isinstance(mu, tuple) else mu
    return np.asarray(mu, np.float32)


def synthetic(shape, n, radius, seed, noise=0.5, holes=True, scrambled=True):
    """Touching blobs; flows = 5 x cellpose's flows + noise; some objects with a
    low-probability core (holes) or random flows (the flow check drops them)."""
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    labels = np.zeros(shape, np.int32)
    points = rng.integers(0, shape, size=(n, ndim))
    labels[tuple(points.T)] = np.arange(1, n + 1)
    dist, idx = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    owner = labels[tuple(idx)]
    radii = rng.uniform(0.6, 1.3, n + 1) * radius
    labels = owner * (dist < radii[owner])
    labels, _ = fastremap.renumber(labels.astype(np.int32))
    n = int(labels.max())
    dP = (5 * masks_to_flows(labels) + rng.normal(scale=noise, size=(ndim, *shape))).astype(np.float32)
    cellprob = ((labels > 0) * 6.0 - 3.0 + rng.normal(scale=1.0, size=shape)).astype(np.float32)
    cellprob = ndimage.gaussian_filter(cellprob, 0.7).astype(np.float32)
    if holes and n:
        for k in rng.choice(np.arange(1, n + 1), size=max(1, n // 6), replace=False):
            centre = np.argwhere(labels == k).mean(0).round().astype(int)
            cellprob[tuple(slice(max(0, c - 1), c + 2) for c in centre)] = -3
    if scrambled and n:
        for k in rng.choice(np.arange(1, n + 1), size=max(1, n // 8), replace=False):
            inside = labels == k
            dP[:, inside] = rng.normal(scale=3, size=(ndim, int(inside.sum()))).astype(np.float32)
    return dP, cellprob


def cellpose_masks(dP, cellprob, **kw):
    """The oracle: the installed cellpose on the whole arrays."""
    extra = {"interp": True} if installed_dynamics().major == 3 else {}
    return cpdyn.resize_and_compute_masks(dP, cellprob, device=CPU, resize=None, **kw, **extra)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    a = a.ravel().astype(np.int64)
    b = b.ravel().astype(np.int64)
    if np.any((a == 0) != (b == 0)):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
