# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Union-find whose result does not depend on the order of the pairs.

Variant: *union by minimum index* with *path halving*.  A union always makes
the smaller of the two roots the root of the merged set, so the root of every
set is its smallest element whatever order the pairs arrive in; shuffled or
duplicated pairs give the identical result.
"""

import numpy as np
cimport numpy as cnp
from libc.stdint cimport int64_t, uint32_t, uint64_t

cnp.import_array()


ctypedef fused parent_t:
    int64_t
    uint32_t
    uint64_t


cdef inline parent_t _find(parent_t* parent, parent_t x) noexcept nogil:
    # path halving: every visited node skips to its grandparent
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


cdef inline bint _union(parent_t* parent, parent_t a, parent_t b) noexcept nogil:
    """Join the sets of a and b under the smaller root; true when they were apart."""
    a = _find(parent, a)
    b = _find(parent, b)
    if a == b:
        return False
    if a < b:
        parent[b] = a
    else:
        parent[a] = b
    return True


def union_find_min(const int64_t[::1] left, const int64_t[::1] right, Py_ssize_t n):
    """Join ``left[i]`` with ``right[i]`` for every i over the elements ``0..n-1``.

    Returns ``(roots, merges)``: ``roots[k]`` is the smallest element of k's
    set (int64, length n) and ``merges`` the number of unions that joined two
    different sets.  Indices must lie in ``[0, n)`` (checked by the caller).
    """
    cdef cnp.ndarray[int64_t, ndim=1] roots = np.arange(n, dtype=np.int64)
    cdef int64_t* parent = <int64_t*>cnp.PyArray_DATA(roots)
    cdef Py_ssize_t i, m = left.shape[0]
    cdef int64_t merges = 0
    with nogil:
        for i in range(m):
            merges += _union(parent, left[i], right[i])
        # parent[i] <= i always holds, so one ascending pass flattens every tree
        for i in range(n):
            parent[i] = parent[parent[i]]
    return roots, int(merges)


def union_find_dense(const uint64_t[::1] left, const uint64_t[::1] right, parent_t[::1] parent):
    """Union-find over ids ``0..len(parent)-1`` given as the ids themselves
    (no compression), then number the sets in place.

    ``parent`` must hold ``arange(len(parent))`` on entry; on return it holds
    the final id of every element: sets are numbered 1, 2, ... in the order of
    their smallest element, element 0 (background) keeps 0.  Returns
    ``(n_sets, merges)`` where ``n_sets`` excludes element 0.  Ids must be
    below ``len(parent)`` (checked by the caller).
    """
    cdef Py_ssize_t i, m = left.shape[0], n = parent.shape[0]
    cdef parent_t nxt = 0
    cdef parent_t* p = &parent[0]
    cdef int64_t merges = 0
    with nogil:
        for i in range(m):
            merges += _union(p, <parent_t>left[i], <parent_t>right[i])
        # ascending: a non-root's parent is smaller, so it already holds the
        # final id of their common set
        for i in range(1, n):
            if p[i] == <parent_t>i:
                nxt += 1
                p[i] = nxt
            else:
                p[i] = p[p[i]]
    return int(nxt), int(merges)
