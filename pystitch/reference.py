"""Pure numpy/scipy reference implementations of the compiled kernels.

Slow but obviously right; the tests check the Cython kernels against them and
the benchmarks measure the kernels against them.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def lut_apply(labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``lut[labels]`` by numpy fancy indexing."""
    return lut[labels]


def union_find_roots(left: np.ndarray, right: np.ndarray, n: int) -> np.ndarray:
    """Smallest element of each element's connected component (scipy csgraph)."""
    if n == 0:
        return np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(left)), (np.asarray(left), np.asarray(right))), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    smallest = np.full(comp.max() + 1, n, dtype=np.int64)
    np.minimum.at(smallest, comp, np.arange(n))
    return smallest[comp]


def contingency(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label_a, label_b, count) of non-zero pairs, sorted, by np.unique."""
    a = np.asarray(a, np.uint64).ravel()
    b = np.asarray(b, np.uint64).ravel()
    keep = (a > 0) & (b > 0)
    keys, counts = np.unique((a[keep] << np.uint64(32)) | b[keep], return_counts=True)
    return ((keys >> np.uint64(32)).astype(np.uint32), (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32),
            counts.astype(np.uint64))


def region_stats(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(counts, lo, hi, coordinate sums) for labels 1..n with scipy.ndimage."""
    index = np.arange(1, n + 1)
    counts = ndimage.sum_labels(np.ones(labels.shape), labels, index).astype(np.int64)
    lo = np.zeros((n, labels.ndim), np.int64)
    hi = np.zeros((n, labels.ndim), np.int64)
    for i, sl in enumerate(ndimage.find_objects(labels.astype(np.int64), max_label=n)):
        if sl is not None:
            lo[i] = [s.start for s in sl]
            hi[i] = [s.stop for s in sl]
    grids = np.indices(labels.shape)
    sums = np.stack([ndimage.sum_labels(g, labels, index) for g in grids], axis=1).round().astype(np.int64)
    return counts, lo, hi, sums
