# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""OpenCV's linear resize along one axis, for any part of an image.

``cv2.resize(..., INTER_LINEAR)`` of float32 data is separable: a horizontal
pass, then a vertical one, each computing an output sample from two input
samples with weights that depend only on the output index and the *whole*
image's sizes.  Given those weights (computed by the caller for the whole
image), these kernels compute any range of output samples along one axis
from the input samples it reads, with the same float32 operations as the
installed OpenCV, so that a block of the resized image equals the same block
of the resized whole image bit for bit.  Two arithmetic forms occur (which one
OpenCV uses depends on its code path; the caller calibrates against cv2):

* ``lerp_axis``: ``fmaf(w1, s1 - s0, s0)`` (one rounding for the multiply-add);
* ``muladd_axis``: ``s0 * w0 + s1 * w1``, each product rounded to float32.

Arrays are ``(outer, n, inner)``: the resized axis in the middle.  Compiled
with ``-ffp-contract=off``: the compiler must not fuse what OpenCV does not.
"""

from libc.math cimport fmaf
from libc.stdint cimport int64_t


def lerp_axis(const float[:, :, ::1] src, const int64_t[::1] i0, const int64_t[::1] i1,
              const float[::1] w1, float[:, :, ::1] out):
    """``out[o, d, k] = fmaf(w1[d], src[o, i1[d], k] - src[o, i0[d], k], src[o, i0[d], k])``."""
    cdef Py_ssize_t no = out.shape[0], nd = out.shape[1], nk = out.shape[2], o, d, k
    cdef int64_t a, b
    cdef float w, s0, s1
    with nogil:
        for o in range(no):
            for d in range(nd):
                a = i0[d]
                b = i1[d]
                w = w1[d]
                for k in range(nk):
                    s0 = src[o, a, k]
                    s1 = src[o, b, k]
                    out[o, d, k] = fmaf(w, s1 - s0, s0)


def muladd_axis(const float[:, :, ::1] src, const int64_t[::1] i0, const int64_t[::1] i1,
                const float[::1] w0, const float[::1] w1, float[:, :, ::1] out):
    """``out[o, d, k] = src[o, i0[d], k] * w0[d] + src[o, i1[d], k] * w1[d]`` in float32."""
    cdef Py_ssize_t no = out.shape[0], nd = out.shape[1], nk = out.shape[2], o, d, k
    cdef int64_t a, b
    cdef float u, v, p, q
    with nogil:
        for o in range(no):
            for d in range(nd):
                a = i0[d]
                b = i1[d]
                u = w0[d]
                v = w1[d]
                for k in range(nk):
                    p = src[o, a, k] * u
                    q = src[o, b, k] * v
                    out[o, d, k] = p + q
