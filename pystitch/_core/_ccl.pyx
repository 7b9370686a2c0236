# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Connected components of a foreground mask, numbered the way a block stores them.

Equal to ``scipy.ndimage.label(mask, generate_binary_structure(3, conn))``
followed by pystitch's local renumbering (objects present in the core first,
then objects seen only in the halo, each group in the order of scipy's
labels), in one pass over the voxels instead of four.

Method: runs.  Every row (fixed z, y) is cut into runs of foreground; a run
is joined to the overlapping runs of the earlier rows its connectivity
reaches ((z, y-1) and (z-1, y) always, (z-1, y+-1) from connectivity 2;
overlap extended by one voxel along x when the diagonal step is still within
the connectivity).  The union-find keeps the smallest run index as the root,
so the root of an object is its first run in raster order: ordering objects
by root orders them by their first voxel, which is scipy's order.
"""

import numpy as np
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t
from libc.stdlib cimport free, malloc, realloc

cnp.import_array()


cdef inline int64_t _find(int64_t* parent, int64_t x) noexcept nogil:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


cdef inline void _union(int64_t* parent, int64_t a, int64_t b) noexcept nogil:
    a = _find(parent, a)
    b = _find(parent, b)
    if a < b:
        parent[b] = a
    elif b < a:
        parent[a] = b


cdef struct Runs:
    int32_t* start
    int32_t* stop
    int64_t* parent
    int64_t n
    int64_t cap


cdef int _grow(Runs* r) noexcept nogil:
    cdef int64_t cap = r.cap * 2 if r.cap else 4096
    cdef void* a = realloc(r.start, cap * sizeof(int32_t))
    if a == NULL:
        return -1
    r.start = <int32_t*>a
    a = realloc(r.stop, cap * sizeof(int32_t))
    if a == NULL:
        return -1
    r.stop = <int32_t*>a
    a = realloc(r.parent, cap * sizeof(int64_t))
    if a == NULL:
        return -1
    r.parent = <int64_t*>a
    r.cap = cap
    return 0


cdef inline void _join_row(Runs* r, int64_t a0, int64_t a1, int64_t b0, int64_t b1, int ext) noexcept nogil:
    """Join the runs a0..a1 of one row with the overlapping runs b0..b1 of an
    earlier row (both sorted by x); ``ext`` widens the overlap by diagonal steps."""
    cdef int64_t i = a0, j = b0
    while i < a1 and j < b1:
        if r.stop[j] + ext <= r.start[i]:
            j += 1
        elif r.stop[i] + ext <= r.start[j]:
            i += 1
        else:
            _union(r.parent, i, j)
            # advance the run that ends first; the other may still overlap the next one
            if r.stop[i] < r.stop[j]:
                i += 1
            else:
                j += 1


def label_local(const uint8_t[:, :, ::1] mask, int conn, Py_ssize_t z0, Py_ssize_t z1, Py_ssize_t y0,
                Py_ssize_t y1, Py_ssize_t x0, Py_ssize_t x1, uint32_t[:, :, ::1] out):
    """Label ``mask`` (non-zero: foreground) into ``out`` (zeros, same shape).

    ``conn``: 1..3, as ``generate_binary_structure(3, conn)``; the core is
    ``[z0:z1, y0:y1, x0:x1]``.  Returns ``(n, m, core_voxels)``: objects in
    the core are ``1..n``, objects only outside it ``n+1..m``, and the number
    of foreground voxels of the core.  Beyond 2**32 - 1 objects ``out`` is
    left as it was (the caller raises).
    """
    cdef Py_ssize_t nz = mask.shape[0], ny = mask.shape[1], nx = mask.shape[2]
    cdef Py_ssize_t nrows = nz * ny
    cdef int64_t* row_first = <int64_t*>malloc((nrows + 1) * sizeof(int64_t))
    cdef Runs r
    r.start = NULL
    r.stop = NULL
    r.parent = NULL
    r.n = 0
    r.cap = 0
    cdef int ext_y = 1 if conn >= 2 else 0      # (0, -1, +-1) and (-1, 0, +-1)
    cdef int diag = 1 if conn >= 2 else 0       # rows (z-1, y+-1)
    cdef int ext_d = 1 if conn >= 3 else 0      # (-1, +-1, +-1)
    cdef Py_ssize_t z, y, x, row
    cdef const uint8_t* line
    cdef int64_t i, k, root, n_core = 0, n_all = 0, core_voxels = 0, lo, hi
    cdef int failed = 0
    cdef uint32_t* dst
    cdef int64_t* label = NULL
    if row_first == NULL:
        raise MemoryError()
    try:
        with nogil:
            # pass 1: runs of every row, joined with the earlier rows they touch
            for z in range(nz):
                for y in range(ny):
                    row = z * ny + y
                    row_first[row] = r.n
                    line = &mask[z, y, 0]
                    x = 0
                    while x < nx:
                        if line[x] == 0:
                            x += 1
                            continue
                        if r.n == r.cap and _grow(&r) != 0:
                            failed = 1
                            break
                        r.start[r.n] = <int32_t>x
                        while x < nx and line[x] != 0:
                            x += 1
                        r.stop[r.n] = <int32_t>x
                        r.parent[r.n] = r.n
                        r.n += 1
                    if failed:
                        break
                    if y > 0:
                        _join_row(&r, row_first[row], r.n, row_first[row - 1], row_first[row], ext_y)
                    if z > 0:
                        _join_row(&r, row_first[row], r.n, row_first[row - ny], row_first[row - ny + 1], ext_y)
                        if diag and y > 0:
                            _join_row(&r, row_first[row], r.n, row_first[row - ny - 1], row_first[row - ny], ext_d)
                        if diag and y + 1 < ny:
                            _join_row(&r, row_first[row], r.n, row_first[row - ny + 1], row_first[row - ny + 2],
                                      ext_d)
                if failed:
                    break
            row_first[nrows] = r.n
        if failed:
            raise MemoryError()
        label = <int64_t*>malloc((r.n + 1) * sizeof(int64_t))
        if label == NULL:
            raise MemoryError()
        with nogil:
            # pass 2: flatten; mark roots present in the core (label[root] = 1)
            for i in range(r.n):
                r.parent[i] = r.parent[r.parent[i]]  # parent[i] <= i: one ascending pass flattens
                label[i] = 0
            for z in range(z0, z1):
                for y in range(y0, y1):
                    row = z * ny + y
                    for i in range(row_first[row], row_first[row + 1]):
                        lo = r.start[i] if r.start[i] > x0 else x0
                        hi = r.stop[i] if r.stop[i] < x1 else x1
                        if hi > lo:
                            label[r.parent[i]] = 1
                            core_voxels += hi - lo
            # objects in root order: core ones 1..n, then the others
            for i in range(r.n):
                if r.parent[i] == i and label[i] == 1:
                    n_core += 1
            n_all = n_core
            k = 0
            for i in range(r.n):
                if r.parent[i] == i:
                    if label[i] == 1:
                        k += 1
                        label[i] = k
                    else:
                        n_all += 1
                        label[i] = n_all
            # pass 3: write every run with its object's number
            if n_all <= <int64_t>4294967295LL:
                for z in range(nz):
                    for y in range(ny):
                        row = z * ny + y
                        dst = &out[z, y, 0]
                        for i in range(row_first[row], row_first[row + 1]):
                            root = label[r.parent[i]]
                            for x in range(r.start[i], r.stop[i]):
                                dst[x] = <uint32_t>root
        return int(n_core), int(n_all), int(core_voxels)
    finally:
        free(row_first)
        free(r.start)
        free(r.stop)
        free(r.parent)
        free(label)
