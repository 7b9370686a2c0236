# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Look-up-table application: ``out[i] = lut[labels[i]]``.

Label images are runs of equal values, so the kernel reuses the previous
result while the input does not change.  The image is walked in short
stretches: a stretch that only continues the current run is filled without
reading the table; any other stretch is bounds-checked once and looked up
without branches.  Both tests vectorize.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

ctypedef fused label_t:
    uint8_t
    uint16_t
    uint32_t
    uint64_t

ctypedef fused value_t:
    uint8_t
    uint16_t
    uint32_t
    uint64_t


def apply_lut_flat(const label_t[::1] labels, const value_t[::1] lut, value_t[::1] out):
    """Write ``lut[labels]`` into ``out`` (1-D, same length).

    Returns -1 on success, otherwise the index of the first label that is
    outside the table; ``out`` is then only partly written.  Validation of
    shapes and dtypes is the caller's job (see ``pystitch._core.apply_lut_array``).
    """
    cdef Py_ssize_t n = labels.shape[0]
    cdef uint64_t size = <uint64_t>lut.shape[0]
    cdef Py_ssize_t bad = -1
    with nogil:
        bad = _apply(labels, lut, out, n, size)
    return bad


cdef enum:
    STRIDE = 32  # voxels handled at once; the tests over a stretch vectorize


cdef Py_ssize_t _apply(const label_t[::1] labels, const value_t[::1] lut, value_t[::1] out,
                       Py_ssize_t n, uint64_t size) noexcept nogil:
    cdef const label_t* src = &labels[0]
    cdef const value_t* table = &lut[0]
    cdef value_t* dst = &out[0]
    cdef Py_ssize_t i, j, stop
    cdef label_t prev, top
    cdef value_t val
    cdef int same
    if n == 0:
        return -1
    prev = src[0]
    if <uint64_t>prev >= size:
        return 0
    val = table[prev]
    i = 0
    while i < n:
        stop = i + STRIDE if i + STRIDE <= n else n
        same = 1
        top = 0
        for j in range(i, stop):
            same &= src[j] == prev
            top = src[j] if src[j] > top else top
        if same:
            # the whole stretch continues the current run: no table access
            for j in range(i, stop):
                dst[j] = val
        else:
            if <uint64_t>top >= size:
                for j in range(i, stop):
                    if <uint64_t>src[j] >= size:
                        return j
            for j in range(i, stop):
                dst[j] = table[src[j]]
            prev = src[stop - 1]
            val = table[prev]
        i = stop
    return -1
