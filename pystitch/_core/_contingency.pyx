# distutils: language = c++
# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Contingency table of two label arrays over the same voxels.

Counts, for every pair of non-zero labels ``(a, b)``, the voxels where the
first array says ``a`` and the second says ``b``.  Runs of equal pairs are
counted with one comparison per voxel and one table update per run.
"""

import numpy as np
cimport numpy as cnp
from libc.stdint cimport uint32_t, uint64_t
from libcpp.unordered_map cimport unordered_map
from cython.operator cimport dereference as deref, preincrement as inc

cnp.import_array()


def contingency_flat(const uint32_t[::1] a, const uint32_t[::1] b):
    """Return ``(label_a, label_b, count)`` sorted by ``(label_a, label_b)``.

    ``a`` and ``b`` are 1-D and of equal length (checked by the caller);
    voxels where either label is 0 (background) are not counted.
    """
    cdef unordered_map[uint64_t, uint64_t] table
    cdef Py_ssize_t i, n = a.shape[0]
    cdef uint64_t key, prev = 0, run = 0
    with nogil:
        for i in range(n):
            if a[i] == 0 or b[i] == 0:
                continue
            key = (<uint64_t>a[i] << 32) | <uint64_t>b[i]
            if key == prev:
                run += 1
            else:
                if run:
                    table[prev] += run
                prev = key
                run = 1
        if run:
            table[prev] += run

    cdef Py_ssize_t size = table.size(), k = 0
    keys_arr = np.empty(size, dtype=np.uint64)
    counts_arr = np.empty(size, dtype=np.uint64)
    cdef uint64_t[::1] keys = keys_arr
    cdef uint64_t[::1] counts = counts_arr
    cdef unordered_map[uint64_t, uint64_t].iterator it = table.begin()
    while it != table.end():
        keys[k] = deref(it).first
        counts[k] = deref(it).second
        k += 1
        inc(it)
    order = np.argsort(keys_arr, kind="stable")
    keys_arr = keys_arr[order]
    return ((keys_arr >> np.uint64(32)).astype(np.uint32),
            (keys_arr & np.uint64(0xFFFFFFFF)).astype(np.uint32),
            counts_arr[order])
