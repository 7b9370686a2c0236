# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Per-label statistics of one block of labels in a single pass.

For labels ``1..n``: voxel count, bounding box (inclusive low, exclusive
high) and the sum of voxel coordinates (for centroids).  Runs along the last
axis are handled at once (count, box and coordinate sum of a run are closed
forms), so cost follows the number of runs more than the number of voxels.
"""

import numpy as np
cimport numpy as cnp
from libc.stdint cimport uint32_t, int64_t

cnp.import_array()


def region_stats_3d(const uint32_t[:, :, ::1] labels, Py_ssize_t n):
    """Return ``(counts, lo, hi, sums)`` for labels ``0..n`` (row 0 unused).

    ``counts`` int64 (n+1,), ``lo``/``hi`` int64 (n+1, 3), ``sums`` int64
    (n+1, 3).  Raises ValueError naming the first label greater than ``n``.
    """
    cdef Py_ssize_t Z = labels.shape[0], Y = labels.shape[1], X = labels.shape[2]
    counts_arr = np.zeros(n + 1, dtype=np.int64)
    lo_arr = np.full((n + 1, 3), np.iinfo(np.int64).max, dtype=np.int64)
    hi_arr = np.full((n + 1, 3), -1, dtype=np.int64)
    sums_arr = np.zeros((n + 1, 3), dtype=np.int64)
    cdef int64_t[::1] counts = counts_arr
    cdef int64_t[:, ::1] lo = lo_arr
    cdef int64_t[:, ::1] hi = hi_arr
    cdef int64_t[:, ::1] sums = sums_arr
    cdef Py_ssize_t z, y, x, x0
    cdef uint32_t lab
    cdef int64_t run
    cdef int64_t bad = -1
    with nogil:
        for z in range(Z):
            for y in range(Y):
                x = 0
                while x < X:
                    lab = labels[z, y, x]
                    x0 = x
                    x += 1
                    while x < X and labels[z, y, x] == lab:
                        x += 1
                    if lab == 0:
                        continue
                    if lab > n:
                        bad = lab
                        break
                    run = x - x0
                    counts[lab] += run
                    sums[lab, 0] += z * run
                    sums[lab, 1] += y * run
                    sums[lab, 2] += (x0 + x - 1) * run // 2
                    if z < lo[lab, 0]: lo[lab, 0] = z
                    if y < lo[lab, 1]: lo[lab, 1] = y
                    if x0 < lo[lab, 2]: lo[lab, 2] = x0
                    if z + 1 > hi[lab, 0]: hi[lab, 0] = z + 1
                    if y + 1 > hi[lab, 1]: hi[lab, 1] = y + 1
                    if x > hi[lab, 2]: hi[lab, 2] = x
                if bad >= 0:
                    break
            if bad >= 0:
                break
    if bad >= 0:
        raise ValueError(f"label {bad} is greater than the number of labels ({n})")
    return counts_arr, lo_arr, hi_arr, sums_arr
