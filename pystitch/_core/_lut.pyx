# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Look-up-table application: ``out[i] = lut[labels[i]]``.

Label images are runs of equal values, so the kernel reuses the previous
result while the input does not change (one comparison per voxel instead of
one random table access).
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
    shapes and dtypes is the caller's job (see ``pystitch.relabel``).
    """
    cdef Py_ssize_t n = labels.shape[0]
    cdef uint64_t size = <uint64_t>lut.shape[0]
    cdef Py_ssize_t bad = -1
    with nogil:
        bad = _apply(labels, lut, out, n, size)
    return bad


cdef Py_ssize_t _apply(const label_t[::1] labels, const value_t[::1] lut, value_t[::1] out,
                       Py_ssize_t n, uint64_t size) noexcept nogil:
    cdef Py_ssize_t i
    cdef label_t prev, cur
    cdef value_t val
    if n == 0:
        return -1
    prev = labels[0]
    if <uint64_t>prev >= size:
        return 0
    val = lut[prev]
    for i in range(n):
        cur = labels[i]
        if cur != prev:
            if <uint64_t>cur >= size:
                return i
            prev = cur
            val = lut[cur]
        out[i] = val
    return -1
