# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Cellpose's flow dynamics, one trajectory at a time, in a window of the image.

Each kernel follows points through the flow field of a *window* (a box of the
whole image, at a global offset) and reproduces, operation by operation and in
the same floating-point types, what the installed Cellpose computes for the
same points on the *whole* image:

* ``follow_bilinear2d``: cellpose 3 in 2-D on the CPU (its numba
  ``map_coordinates``: the weights of three corners in float64, the fourth in
  float32, the sum in float64, the step stored in float32; positions in pixels,
  clamped to ``[0, L - 1]`` every step).
* ``follow_gridsample2d``: cellpose 4 in 2-D (``torch.nn.functional.grid_sample``,
  ``align_corners=False``, zero padding; positions normalised to ``[-1, 1]``
  by the *whole image's* size).  torch's vectorised 2-D CPU kernel is compiled
  with floating-point contraction, so ``fused`` selects fused multiply-adds in
  the un-normalisation and in the sum of the four corners; the caller checks
  which variant the installed torch computes (see ``pystitch.flows.dynamics``).
* ``follow_gridsample3d``: both versions in 3-D (torch's scalar 3-D kernel,
  eight corners summed in float32 in a fixed order).

Coordinates that the whole-image computation would clamp or zero-pad at the
image border are clamped or zero-padded here by the *global* shape, so a point
followed in any window that holds every flow value its trajectory reads ends
at exactly the same place.  ``reach[axis, j]`` is widened to the largest
distance, per axis, between point ``j``'s start voxel (``start``, global
array-order coordinates) and a voxel it read: the halo that point needed.
A trajectory that needs a value outside the window
(but inside the image) stops and is flagged ``escaped``; its state is then
meaningless and the caller follows it again from its start in a larger window.

A trajectory whose state repeats exactly (a fixed point, or a 2-cycle that
alternates between two states) is finished without running the remaining
steps: the state is a deterministic function of the previous one, so the end
point is the same.

Compiled with ``-ffp-contract=off``: the compiler must not fuse what the
reference does not.
"""

from libc.math cimport floorf, fmaf
from libc.stdint cimport int32_t, int64_t, uint8_t

# float32 constants: a bare literal would make Cython compute in double
cdef float ONE = 1.0, TWO = 2.0, HALF = 0.5, MINUS_ONE = -1.0, MINUS_HALF = -0.5


cdef inline void _reach(int32_t[:, ::1] reach, Py_ssize_t axis, Py_ssize_t j,
                        int64_t lo, int64_t hi, int64_t start) noexcept nogil:
    """Widen ``reach[axis, j]`` to cover voxels ``lo..hi`` read from ``start``."""
    cdef int64_t d = max(start - lo, hi - start)
    if d > reach[axis, j]:
        reach[axis, j] = <int32_t>d


def follow_bilinear2d(const float[:, :, ::1] flow, float[:, ::1] pos,
                      int64_t oy, int64_t ox, int64_t Ly, int64_t Lx,
                      Py_ssize_t niter, uint8_t[::1] escaped, int32_t[:, ::1] reach):
    """Cellpose 3 (CPU, 2-D).  ``flow`` (2, wy, wx): the window's steps (dP masked
    by the foreground, / 5), float32.  ``pos`` (2, n): global (y, x) start
    positions in pixels, float32, updated in place.  ``(oy, ox)``: the window's
    global origin; ``(Ly, Lx)``: the whole image's shape."""
    cdef Py_ssize_t n = pos.shape[1], j
    with nogil:
        for j in range(n):
            escaped[j] = _bilinear2d_one(flow, pos, j, oy, ox, Ly, Lx, niter, reach)


cdef uint8_t _bilinear2d_one(const float[:, :, ::1] flow, float[:, ::1] pos, Py_ssize_t j,
                             int64_t oy, int64_t ox, int64_t Ly, int64_t Lx,
                             Py_ssize_t niter, int32_t[:, ::1] reach) noexcept nogil:
    cdef Py_ssize_t wy = flow.shape[1], wx = flow.shape[2], t, c
    cdef float y = pos[0, j], x = pos[1, j], fy, fx, ny, nx, y1 = 0, x1 = 0
    cdef float step[2]
    cdef int64_t yf, xf, yf1, xf1, y_start = <int64_t>y, x_start = <int64_t>x
    cdef double dfy, dfx, t1, t2, t3, t4
    for t in range(niter):
        yf = <int64_t>(<int>y)  # numba: astype(int32), truncation (positions are >= 0)
        xf = <int64_t>(<int>x)
        fy = y - <float>yf
        fx = x - <float>xf
        yf = min(Ly - 1, max(<int64_t>0, yf))
        xf = min(Lx - 1, max(<int64_t>0, xf))
        yf1 = min(Ly - 1, yf + 1)
        xf1 = min(Lx - 1, xf + 1)
        _reach(reach, 0, j, yf, yf1, y_start)
        _reach(reach, 1, j, xf, xf1, x_start)
        yf = yf - oy
        xf = xf - ox
        yf1 = yf1 - oy
        xf1 = xf1 - ox
        if yf < 0 or xf < 0 or yf1 >= wy or xf1 >= wx:
            return 1
        dfy = <double>fy
        dfx = <double>fx
        for c in range(2):
            t1 = (<double>flow[c, yf, xf] * (1.0 - dfy)) * (1.0 - dfx)
            t2 = (<double>flow[c, yf, xf1] * (1.0 - dfy)) * dfx
            t3 = <double>(flow[c, yf1, xf] * fy) * (1.0 - dfx)
            t4 = <double>((flow[c, yf1, xf1] * fy) * fx)
            step[c] = <float>(((t1 + t2) + t3) + t4)
        ny = min(<float>(Ly - 1), max(<float>0, y + step[0]))
        nx = min(<float>(Lx - 1), max(<float>0, x + step[1]))
        if ny == y and nx == x:
            break  # a fixed point: every later step is the same
        if t > 0 and ny == y1 and nx == x1:
            if (niter - t - 1) % 2:  # a 2-cycle: the state alternates to the end
                ny, nx = y, x
            y, x = ny, nx
            break
        y1, x1 = y, x
        y, x = ny, nx
    pos[0, j] = y
    pos[1, j] = x
    return 0


def follow_gridsample2d(const float[:, :, ::1] im, float[:, ::1] g,
                        int64_t oy, int64_t ox, int64_t Ly, int64_t Lx,
                        Py_ssize_t niter, bint fused, uint8_t[::1] escaped,
                        const int64_t[:, ::1] start, int32_t[:, ::1] reach):
    """grid_sample dynamics in 2-D.  ``im`` (2, wy, wx): the window's steps in
    normalised units, channels in torch order (x, y).  ``g`` (2, n): normalised
    (x, y) positions, float32, updated in place."""
    cdef Py_ssize_t n = g.shape[1], j
    with nogil:
        for j in range(n):
            escaped[j] = _gridsample2d_one(im, g, j, oy, ox, Ly, Lx, niter, fused, start, reach)


cdef uint8_t _gridsample2d_one(const float[:, :, ::1] im, float[:, ::1] g, Py_ssize_t j,
                               int64_t oy, int64_t ox, int64_t Ly, int64_t Lx,
                               Py_ssize_t niter, bint fused,
                               const int64_t[:, ::1] start, int32_t[:, ::1] reach) noexcept nogil:
    cdef Py_ssize_t wy = im.shape[1], wx = im.shape[2], t, c
    cdef float gx = g[0, j], gy = g[1, j]
    cdef float half_w = (<float>Lx) / TWO, half_h = (<float>Ly) / TWO
    cdef float x, y, x_w, y_n, w, e, n, s, nw, ne, sw, se, out, nx, ny, x1 = 0, y1 = 0
    cdef float step[2]
    cdef float v_nw, v_ne, v_sw, v_se
    cdef int64_t ix, iy
    cdef bint in_w, in_e, in_n, in_s
    for t in range(niter):
        if fused:
            x = fmaf(gx + ONE, half_w, MINUS_HALF)
            y = fmaf(gy + ONE, half_h, MINUS_HALF)
        else:
            x = (gx + ONE) * half_w - HALF
            y = (gy + ONE) * half_h - HALF
        x_w = floorf(x)
        y_n = floorf(y)
        w = x - x_w
        e = ONE - w
        n = y - y_n
        s = ONE - n
        nw = s * e
        ne = s * w
        sw = n * e
        se = n * w
        ix = <int64_t>x_w
        iy = <int64_t>y_n
        in_w = 0 <= ix < Lx
        in_e = 0 <= ix + 1 < Lx
        in_n = 0 <= iy < Ly
        in_s = 0 <= iy + 1 < Ly
        _reach(reach, 0, j, max(iy, <int64_t>0), min(iy + 1, Ly - 1), start[0, j])
        _reach(reach, 1, j, max(ix, <int64_t>0), min(ix + 1, Lx - 1), start[1, j])
        # every corner inside the image must be inside the window
        if (in_w and not (0 <= ix - ox < wx)) or (in_e and not (0 <= ix + 1 - ox < wx)) \
                or (in_n and not (0 <= iy - oy < wy)) or (in_s and not (0 <= iy + 1 - oy < wy)):
            return 1
        ix = ix - ox
        iy = iy - oy
        for c in range(2):
            v_nw = im[c, iy, ix] if (in_n and in_w) else 0
            v_ne = im[c, iy, ix + 1] if (in_n and in_e) else 0
            v_sw = im[c, iy + 1, ix] if (in_s and in_w) else 0
            v_se = im[c, iy + 1, ix + 1] if (in_s and in_e) else 0
            if fused:
                out = v_nw * nw
                out = fmaf(v_ne, ne, out)
                out = fmaf(v_sw, sw, out)
                out = fmaf(v_se, se, out)
            else:
                out = ((v_nw * nw + v_ne * ne) + v_sw * sw) + v_se * se
            step[c] = out
        nx = min(ONE, max(MINUS_ONE, gx + step[0]))
        ny = min(ONE, max(MINUS_ONE, gy + step[1]))
        if nx == gx and ny == gy:
            break  # a fixed point: every later step is the same
        if t > 0 and nx == x1 and ny == y1:
            if (niter - t - 1) % 2:  # a 2-cycle: the state alternates to the end
                nx, ny = gx, gy
            gx, gy = nx, ny
            break
        x1, y1 = gx, gy
        gx, gy = nx, ny
    g[0, j] = gx
    g[1, j] = gy
    return 0


def follow_gridsample3d(const float[:, :, :, ::1] im, float[:, ::1] g,
                        int64_t oz, int64_t oy, int64_t ox,
                        int64_t Lz, int64_t Ly, int64_t Lx,
                        Py_ssize_t niter, uint8_t[::1] escaped,
                        const int64_t[:, ::1] start, int32_t[:, ::1] reach):
    """grid_sample dynamics in 3-D.  ``im`` (3, wz, wy, wx): the window's steps
    in normalised units, channels in torch order (x, y, z).  ``g`` (3, n):
    normalised (x, y, z) positions, float32, updated in place."""
    cdef Py_ssize_t n = g.shape[1], j
    with nogil:
        for j in range(n):
            escaped[j] = _gridsample3d_one(im, g, j, oz, oy, ox, Lz, Ly, Lx, niter, start, reach)


cdef uint8_t _gridsample3d_one(const float[:, :, :, ::1] im, float[:, ::1] g, Py_ssize_t j,
                               int64_t oz, int64_t oy, int64_t ox,
                               int64_t Lz, int64_t Ly, int64_t Lx,
                               Py_ssize_t niter,
                               const int64_t[:, ::1] start, int32_t[:, ::1] reach) noexcept nogil:
    cdef Py_ssize_t wz = im.shape[1], wy = im.shape[2], wx = im.shape[3], t, c, k
    cdef float gx = g[0, j], gy = g[1, j], gz = g[2, j]
    cdef float fW = <float>Lx, fH = <float>Ly, fD = <float>Lz
    cdef float x, y, z, x0, y0, z0, dx0, dx1, dy0, dy1, dz0, dz1, out, nx, ny, nz, x1 = 0, y1 = 0, z1 = 0
    cdef float step[3]
    cdef float wts[8]
    cdef int64_t ix, iy, iz, cz, cy, cx
    cdef int64_t offz[8]
    cdef int64_t offy[8]
    cdef int64_t offx[8]
    cdef bint inside[8]
    # torch's corner order: tnw, tne, tsw, tse, bnw, bne, bsw, bse (z, then y, then x)
    for k in range(8):
        offz[k] = k >> 2
        offy[k] = (k >> 1) & 1
        offx[k] = k & 1
    for t in range(niter):
        x = ((gx + ONE) * fW - ONE) / TWO
        y = ((gy + ONE) * fH - ONE) / TWO
        z = ((gz + ONE) * fD - ONE) / TWO
        x0 = floorf(x)
        y0 = floorf(y)
        z0 = floorf(z)
        dx1 = (x0 + ONE) - x
        dx0 = x - x0
        dy1 = (y0 + ONE) - y
        dy0 = y - y0
        dz1 = (z0 + ONE) - z
        dz0 = z - z0
        wts[0] = dx1 * dy1 * dz1
        wts[1] = dx0 * dy1 * dz1
        wts[2] = dx1 * dy0 * dz1
        wts[3] = dx0 * dy0 * dz1
        wts[4] = dx1 * dy1 * dz0
        wts[5] = dx0 * dy1 * dz0
        wts[6] = dx1 * dy0 * dz0
        wts[7] = dx0 * dy0 * dz0
        ix = <int64_t>x0
        iy = <int64_t>y0
        iz = <int64_t>z0
        _reach(reach, 0, j, max(iz, <int64_t>0), min(iz + 1, Lz - 1), start[0, j])
        _reach(reach, 1, j, max(iy, <int64_t>0), min(iy + 1, Ly - 1), start[1, j])
        _reach(reach, 2, j, max(ix, <int64_t>0), min(ix + 1, Lx - 1), start[2, j])
        for k in range(8):
            cz = iz + offz[k]
            cy = iy + offy[k]
            cx = ix + offx[k]
            inside[k] = 0 <= cz < Lz and 0 <= cy < Ly and 0 <= cx < Lx
            if inside[k] and not (0 <= cz - oz < wz and 0 <= cy - oy < wy and 0 <= cx - ox < wx):
                return 1
        for c in range(3):
            out = 0
            for k in range(8):
                if inside[k]:
                    out = out + im[c, iz + offz[k] - oz, iy + offy[k] - oy, ix + offx[k] - ox] * wts[k]
            step[c] = out
        nx = min(ONE, max(MINUS_ONE, gx + step[0]))
        ny = min(ONE, max(MINUS_ONE, gy + step[1]))
        nz = min(ONE, max(MINUS_ONE, gz + step[2]))
        if nx == gx and ny == gy and nz == gz:
            break  # a fixed point: every later step is the same
        if t > 0 and nx == x1 and ny == y1 and nz == z1:
            if (niter - t - 1) % 2:  # a 2-cycle: the state alternates to the end
                nx, ny, nz = gx, gy, gz
            gx, gy, gz = nx, ny, nz
            break
        x1, y1, z1 = gx, gy, gz
        gx, gy, gz = nx, ny, nz
    g[0, j] = gx
    g[1, j] = gy
    g[2, j] = gz
    return 0
