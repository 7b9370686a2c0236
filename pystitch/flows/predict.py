"""Predict: Cellpose's network on the whole image's tile layout, block by block.

``CellposeModel.eval`` runs its network on tiles of the *whole* image: the
image is normalised, resized by the rescale factor (and in 3-D by the
anisotropy), padded, cut into overlapping tiles whose origins follow from the
padded size, sent through the network in batches, and the tile outputs are
blended with a taper mask and resized back.  CPnet's style vector averages
over a whole tile, so every pixel of a tile matters: a block with a halo
cannot reproduce whole-image flows (``benchmarks/flows_context.py``).  The
tiles themselves can: this module computes, for any part of the image, exactly
what ``eval`` computes there, from

* :class:`Geometry`: the whole image's network space, tile layout and forward
  batches (each batch is owned by the block holding its first tile's centre,
  so every batch is computed once, by one task, with the same inputs as in
  ``eval``);
* :func:`batch_input`: the network input of one batch, from the image region
  it needs (normalisation is per voxel; resizing uses the whole image's
  coefficients, :mod:`pystitch._core._resize`);
* :func:`blend`: the network output over a box of network space, from the
  tiles that cover it (cellpose's ``average_tiles`` in the same order and
  float types), the three orientations of 3-D summed in cellpose's order, and
  resized back to the image's grid.
* :func:`stream_blocks`: blocks in turn, each batch run when the first block
  that reads one of its tiles comes, each tile output dropped after its last
  reader (:func:`tile_schedule`): what one process holds is the tiles between
  the blocks done and those to come, not the whole image's.

What differs between cellpose 3.1 and 4.x is in :class:`ModelFacts` (tile
size, input channels, how the rescale factor follows from the diameter) and
in the padding rule (:func:`pad_yx`).  Nothing here imports cellpose except
:func:`taper_mask` and :func:`calibrate_resize` (cv2), which import it when
called.

Network input and output in numbers: a tile is ``bsize^2`` pixels (224 on
cellpose 3, 256 on cellpose 4's CPSAM); tiles overlap by 10 %; in 3-D every
voxel is in a tile of each of the three orientations.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from ..errors import InputError
from .dynamics import KernelMismatchError

__all__ = [
    "Batch",
    "Geometry",
    "ModelFacts",
    "Pass",
    "apply_passes",
    "batch_input",
    "blend",
    "calibrate_resize",
    "pad_yx",
    "passes_source_box",
    "prepare",
    "stream_blocks",
    "tile_schedule",
]

Box = tuple[tuple[int, ...], tuple[int, ...]]  # (lo, hi), hi exclusive

#: run_3D's orientations: the plane axis of each, the output channels its two
#: flow components add to (z, y, x = 0, 1, 2), cellpose's order of summation
ORIENTATIONS_3D = ((0, (1, 2)), (1, (0, 2)), (2, (0, 1)))


# ---------------------------------------------------------------- what the model decides


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What the loaded model and the installed cellpose decide about the tiling.

    ``major``: cellpose major version; ``bsize``: tile side; ``nchan``:
    channels of the network input; ``nout``: channels of its output (flows +
    cell probability); ``rescale``: the image is resized by this factor
    (cellpose 3: ``diam_mean / diameter``; 4: ``30 / diameter``);
    ``anisotropy``: Z step / XY step (3-D); ``batch_size``: tiles per forward
    pass; ``tile_overlap``: ``eval``'s default, 0.1.
    """

    major: int
    bsize: int
    nchan: int
    nout: int
    rescale: float
    anisotropy: float | None
    batch_size: int
    tile_overlap: float = 0.1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelFacts":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


def pad_yx(major: int, Ly: int, Lx: int, bsize: int, div: int = 16, extra: int = 1) -> tuple[int, int, int, int]:
    """``transforms.get_pad_yx`` as each version's ``run_net`` calls it
    (cellpose 4 pads a plane smaller than a tile up to the tile size)."""
    min_size = (bsize, bsize) if major >= 4 else None
    out = []
    for L, m in ((Ly, None if min_size is None else min_size[-2]), (Lx, None if min_size is None else min_size[-1])):
        if m is None or L >= m:
            pad = int(div * np.ceil(L / div) - L)
        else:
            pad = max(0, m - L - (extra * div))
        out += [extra * div // 2 + pad // 2, extra * div // 2 + pad - pad // 2]
    return tuple(out)  # type: ignore[return-value]


# ---------------------------------------------------------------- resizing (cv2 INTER_LINEAR)


@dataclasses.dataclass(frozen=True)
class Pass:
    """One axis of a ``cv2.resize``: ``src`` samples to ``dst`` along array
    axis ``axis``; ``role`` "h" (horizontal: cv2's first pass, along columns)
    or "v" (vertical, along rows); ``channels`` of the cv2 image (its code
    path depends on them)."""

    axis: int
    src: int
    dst: int
    role: str
    channels: int

    def weights(self, lo: int, hi: int, form: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Source indices (global) and float32 weights of outputs ``lo..hi``."""
        return axis_weights(self.src, self.dst, lo, hi, form, self.role)

    def source_range(self, lo: int, hi: int) -> tuple[int, int]:
        """The source samples outputs ``lo..hi`` read (any form reads the same two)."""
        if hi <= lo:
            return 0, 0
        i0, i1, _, _ = axis_weights(self.src, self.dst, lo, hi, "lerp", self.role)
        j0, j1, _, _ = axis_weights(self.src, self.dst, lo, hi, "muladd", self.role)
        return int(min(i0.min(), j0.min())), int(max(i1.max(), j1.max())) + 1


def axis_weights(src: int, dst: int, lo: int, hi: int, form: str, role: str
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's linear-interpolation table for outputs ``lo..hi`` of ``src -> dst``.

    ``form`` "lerp": the position in double precision, both ends clamped,
    ``w1 = (float) fx`` (OpenCV's vectorised path); "muladd": the position
    rounded to float first, ``w0 = 1 - w1`` in float32; its vertical pass does
    not clamp the weights at the ends, only the rows (OpenCV's generic path).
    """
    scale = src / dst
    d = np.arange(lo, hi, dtype=np.float64)
    if form == "lerp":
        fx = (d + 0.5) * scale - 0.5
        sx = np.floor(fx).astype(np.int64)
        fx = fx - sx
        low = sx < 0
        fx[low], sx[low] = 0.0, 0
        high = sx >= src - 1
        fx[high], sx[high] = 0.0, src - 1
        w1 = fx.astype(np.float32)
        w0 = np.float32(1) - w1
        return sx, np.minimum(sx + 1, src - 1), w0, w1
    if form != "muladd":
        raise InputError(f"Expected a resize form 'lerp' or 'muladd'. Got {form!r} instead.")
    fx = ((d + 0.5) * scale - 0.5).astype(np.float32)
    sx = np.floor(fx).astype(np.int64)
    fx = (fx - sx.astype(np.float32)).astype(np.float32)
    if role == "h":
        low = sx < 0
        fx[low], sx[low] = np.float32(0), 0
        high = sx >= src - 1
        fx[high], sx[high] = np.float32(0), src - 1
    w0 = np.float32(1) - fx
    return np.clip(sx, 0, src - 1), np.clip(sx + 1, 0, src - 1), w0, fx


def resize_axis(data: np.ndarray, axis: int, lo_src: int, p: Pass, lo: int, hi: int, form: str) -> np.ndarray:
    """Outputs ``lo..hi`` of pass ``p`` along ``axis`` of ``data`` (float32),
    whose samples along that axis start at global index ``lo_src``."""
    from .._core import _resize

    data = np.ascontiguousarray(data, np.float32)
    shape = data.shape
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    i0, i1, w0, w1 = p.weights(lo, hi, form)
    i0 = np.ascontiguousarray(i0 - lo_src)
    i1 = np.ascontiguousarray(i1 - lo_src)
    if hi > lo and (i0.min() < 0 or i1.max() >= shape[axis]):
        raise AssertionError("resize_axis: the data does not hold the samples the outputs read")
    out = np.empty(shape[:axis] + (hi - lo,) + shape[axis + 1:], np.float32)
    src3 = data.reshape(outer, shape[axis], inner)
    out3 = out.reshape(outer, hi - lo, inner)
    if form == "lerp":
        _resize.lerp_axis(src3, i0, i1, np.ascontiguousarray(w1), out3)
    else:
        _resize.muladd_axis(src3, i0, i1, np.ascontiguousarray(w0), np.ascontiguousarray(w1), out3)
    return out


def _reference_resize(img: np.ndarray, Ly: int, Lx: int, form: str) -> np.ndarray:
    """A whole-image resize with :func:`resize_axis` (columns, then rows)."""
    h = resize_axis(img, 1, 0, Pass(1, img.shape[1], Lx, "h", 0), 0, Lx, form)
    return resize_axis(h, 0, 0, Pass(0, img.shape[0], Ly, "v", 0), 0, Ly, form)


@functools.lru_cache(maxsize=None)
def calibrate_resize(channels: int) -> str:
    """Which arithmetic the installed cv2 uses to resize float32 images of
    ``channels`` channels: "lerp" or "muladd" (see :func:`axis_weights`).

    Resizes random probes up and down with both and with ``cv2.resize``;
    raises :class:`KernelMismatchError` when neither matches bit for bit.
    """
    import cv2

    rng = np.random.default_rng(303)
    probes = [((61, 77), (101, 128)), ((101, 128), (61, 77)), ((40, 90), (66, 90)), ((45, 33), (45, 20)),
              ((30, 41), (17, 70))]
    for form in ("lerp", "muladd"):
        ok = True
        for (H, W), (Ly, Lx) in probes:
            img = rng.normal(size=(H, W, channels)).astype(np.float32)
            ref = cv2.resize(img, (Lx, Ly), interpolation=cv2.INTER_LINEAR).reshape(Ly, Lx, channels)
            if not np.array_equal(_reference_resize(img, Ly, Lx, form), ref):
                ok = False
                break
        if ok:
            return form
    raise KernelMismatchError(
        f"Expected cv2 {cv2.__version__}'s linear resize of {channels}-channel float32 images to be reproduced "
        "bit for bit. Got a difference in both forms instead: exact flows with a rescale factor are not possible "
        "with this OpenCV build (use a diameter that makes the rescale factor 1)."
    )


@functools.lru_cache(maxsize=None)
def halving_is_linear(channels: int) -> bool:
    """Whether the installed cv2 halves both axes of a ``channels``-channel
    float32 image with its linear arithmetic (:func:`calibrate_resize`'s form).
    Some builds switch to their area-averaging code for exactly 2x down in
    both axes (cv2 5.0: 2 channels), which the passes here do not reproduce."""
    import cv2

    rng = np.random.default_rng(304)
    img = rng.normal(size=(36, 50, channels)).astype(np.float32)
    ref = cv2.resize(img, (25, 18), interpolation=cv2.INTER_LINEAR).reshape(18, 25, channels)
    return bool(np.array_equal(_reference_resize(img, 18, 25, calibrate_resize(channels)), ref))


def _check_halving(passes: Sequence[Pass]) -> None:
    for p, q in zip(passes, passes[1:]):
        if (p.role, q.role) == ("h", "v") and p.src == 2 * p.dst and q.src == 2 * q.dst \
                and not halving_is_linear(p.channels):
            import cv2

            raise KernelMismatchError(
                f"Expected a resize that cv2 {cv2.__version__} computes linearly. Got exactly 2x down on both axes "
                f"({q.src}x{p.src} -> {q.dst}x{p.dst}, {p.channels} channels), which it averages instead: exact "
                "flows are not possible for this image size and rescale factor (change the diameter slightly)."
            )


def apply_passes(data: np.ndarray, source_lo: Sequence[int], passes: Sequence[Pass], target: Box) -> np.ndarray:
    """``data`` (spatial box at ``source_lo``, channels last) through ``passes``,
    giving the box ``target`` of the last pass's space."""
    _check_halving(passes)
    boxes = passes_boxes(passes, target)
    out = np.asarray(data, np.float32)
    lo = list(source_lo)
    for k, p in enumerate(passes):
        need, after = boxes[k], boxes[k + 1]
        a, b = after[0][p.axis], after[1][p.axis]
        # crop to what this pass reads (the data may hold more)
        crop = tuple(slice(n - l, m - l) for n, m, l in zip(need[0], need[1], lo))
        out = out[crop]
        lo = list(need[0])
        out = resize_axis(out, p.axis, lo[p.axis], p, a, b, calibrate_resize(p.channels))
        lo[p.axis] = a
    final = boxes[-1]
    crop = tuple(slice(n - l, m - l) for n, m, l in zip(final[0], final[1], lo))
    return out[crop]


def passes_boxes(passes: Sequence[Pass], target: Box) -> list[Box]:
    """The box each pass's input must cover for ``target`` after the last pass
    (the first is in the source space, the last is ``target``)."""
    boxes = [(tuple(target[0]), tuple(target[1]))]
    for p in reversed(passes):
        lo, hi = list(boxes[0][0]), list(boxes[0][1])
        lo[p.axis], hi[p.axis] = p.source_range(lo[p.axis], hi[p.axis])
        boxes.insert(0, (tuple(lo), tuple(hi)))
    return boxes


def passes_source_box(passes: Sequence[Pass], target: Box) -> Box:
    """The source box ``target`` needs."""
    return passes_boxes(passes, target)[0]


# ---------------------------------------------------------------- the tile layout


@dataclasses.dataclass(frozen=True)
class Orientation:
    """One orientation of the network's planes (2-D: the image; 3-D: run_3D's three).

    ``axis``: the axis planes are taken along (None in 2-D); ``plane_axes``:
    the two axes of a plane (in the network space's axis order); ``L``: plane
    size; ``pad``: ``(u1, u2, v1, v2)``; ``starts``: tile origins (padded
    coordinates) along each plane axis; ``tile``: tile size.
    """

    index: int
    axis: int | None
    plane_axes: tuple[int, int]
    n_planes: int
    L: tuple[int, int]
    pad: tuple[int, int, int, int]
    starts: tuple[tuple[int, ...], tuple[int, ...]]
    tile: tuple[int, int]
    #: output channels of the two flow components (3-D) and of the cell probability
    flow_channels: tuple[int, int]

    @property
    def ntiles(self) -> int:
        return len(self.starts[0]) * len(self.starts[1])

    def tile_box(self, j: int, i: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """The tile ``(j, i)``'s extent in network coordinates of the plane (may reach into the padding)."""
        u0 = self.starts[0][j] - self.pad[0]
        v0 = self.starts[1][i] - self.pad[2]
        return (u0, u0 + self.tile[0]), (v0, v0 + self.tile[1])


@dataclasses.dataclass(frozen=True)
class Batch:
    """One forward pass of ``eval``: orientation, number, and its tiles ``(plane, j, i)`` in order."""

    orientation: int
    number: int
    members: tuple[tuple[int, int, int], ...]


class Geometry:
    """The whole image's network space, tile layout and forward batches.

    ``shape``: the image's spatial shape ((Y, X) or (Z, Y, X), 3-D meaning
    ``do_3D``).  Reproduces ``CellposeModel._run_net`` / ``core.run_net`` /
    ``core.run_3D`` without augmentation.
    """

    def __init__(self, shape: Sequence[int], facts: ModelFacts) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.facts = facts
        self.ndim = len(self.shape)
        if self.ndim not in (2, 3):
            raise InputError(f"Expected a 2-D or 3-D image. Got shape {self.shape} instead.")
        f = facts
        r = float(f.rescale)
        if self.ndim == 2:
            Ly, Lx = self.shape
            self.net_shape = (int(Ly * r), int(Lx * r)) if r != 1.0 else (Ly, Lx)
            cin, cout = f.nchan, f.nout
            self.input_passes = self._yx_passes(self.shape, self.net_shape, cin, 0)
            self.output_passes = self._yx_passes(self.net_shape, self.shape, cout, 0)
        else:
            Lz, Ly, Lx = self.shape
            a = 1.0 if f.anisotropy is None else float(f.anisotropy)
            if r != 1.0 or a != 1.0:
                self.net_shape = (int(Lz * a * r), int(Ly * r), int(Lx * r))
            else:
                self.net_shape = self.shape
            cin, cout = f.nchan, f.nout + 1  # run_3D sums to 3 flows + cell probability
            mid = (Lz, self.net_shape[1], self.net_shape[2])
            self.input_passes = (self._yx_passes(self.shape, mid, cin, 1)
                                 + self._z_passes(mid, self.net_shape, cin))
            mid = (self.net_shape[0], Ly, Lx)
            self.output_passes = (self._yx_passes(self.net_shape, mid, cout, 1)
                                  + self._z_passes(mid, self.shape, cout))
        self.orientations = self._orientations()

    # ---- resizing

    @staticmethod
    def _yx_passes(src: tuple[int, ...], dst: tuple[int, ...], channels: int, first: int) -> list[Pass]:
        """cv2 resize of the last two axes (columns, then rows); identity axes skipped."""
        out = []
        y, x = first, first + 1
        if src[x] != dst[x]:
            out.append(Pass(x, src[x], dst[x], "h", channels))
        if src[y] != dst[y]:
            out.append(Pass(y, src[y], dst[y], "v", channels))
        return out

    @staticmethod
    def _z_passes(src: tuple[int, ...], dst: tuple[int, ...], channels: int) -> list[Pass]:
        """cv2 resize of (Z, X) planes: Z is the vertical axis (X is unchanged)."""
        return [Pass(0, src[0], dst[0], "v", channels)] if src[0] != dst[0] else []

    # ---- tiles

    def _orientations(self) -> list[Orientation]:
        f = self.facts
        if self.ndim == 2:
            specs = [(None, (0, 1), (0, 1))]
        else:
            specs = [(axis, plane, chans) for axis, (plane, chans) in
                     zip((0, 1, 2), [((1, 2), (1, 2)), ((0, 2), (0, 2)), ((0, 1), (0, 1))])]
        out = []
        for k, (axis, plane, chans) in enumerate(specs):
            Lu, Lv = self.net_shape[plane[0]], self.net_shape[plane[1]]
            pad = pad_yx(f.major, Lu, Lv, f.bsize)
            Pu, Pv = Lu + pad[0] + pad[1], Lv + pad[2] + pad[3]
            starts, tile = [], []
            for P in (Pu, Pv):
                n = 1 if P <= f.bsize else int(np.ceil((1.0 + 2 * f.tile_overlap) * P / f.bsize))
                size = min(f.bsize, P)
                starts.append(tuple(int(s) for s in np.linspace(0, P - size, n).astype(int)))
                tile.append(size)
            n_planes = 1 if axis is None else self.net_shape[axis]
            out.append(Orientation(k, axis, plane, n_planes, (Lu, Lv), pad, (starts[0], starts[1]),
                                   (tile[0], tile[1]), chans))
        return out

    def batches(self, orientation: int) -> Iterator[Batch]:
        """``run_net``'s forward passes over the planes of an orientation."""
        o = self.orientations[orientation]
        ny, nx = len(o.starts[0]), len(o.starts[1])
        ntiles = ny * nx
        nimgs = max(1, self.facts.batch_size // ntiles)
        number = 0
        for k in range(int(np.ceil(o.n_planes / nimgs))):
            planes = range(k * nimgs, min(o.n_planes, (k + 1) * nimgs))
            members = [(q, j, i) for q in planes for j in range(ny) for i in range(nx)]
            for s in range(0, len(members), self.facts.batch_size):
                yield Batch(orientation, number, tuple(members[s:s + self.facts.batch_size]))
                number += 1

    def n_batches(self, orientation: int) -> int:
        o = self.orientations[orientation]
        ntiles = o.ntiles
        nimgs = max(1, self.facts.batch_size // ntiles)
        total = 0
        for k in range(int(np.ceil(o.n_planes / nimgs))):
            tiles = (min(o.n_planes, (k + 1) * nimgs) - k * nimgs) * ntiles
            total += int(np.ceil(tiles / self.facts.batch_size))
        return total

    def tile_pixels(self) -> int:
        """Pixels the network computes for the whole image (tiles x tile area, all orientations)."""
        return sum(o.n_planes * o.ntiles * o.tile[0] * o.tile[1] for o in self.orientations)

    def anchor(self, orientation: int, member: tuple[int, int, int]) -> tuple[int, ...]:
        """The image voxel (original grid) of a tile's centre: where its batch is owned."""
        o = self.orientations[orientation]
        q, j, i = member
        (u0, u1), (v0, v1) = o.tile_box(j, i)
        net = [0] * self.ndim
        if o.axis is not None:
            net[o.axis] = q
        net[o.plane_axes[0]] = min(max((u0 + u1) // 2, 0), o.L[0] - 1)
        net[o.plane_axes[1]] = min(max((v0 + v1) // 2, 0), o.L[1] - 1)
        return tuple(min(L - 1, int(math.floor(c * L / N))) for c, L, N in zip(net, self.shape, self.net_shape))

    def owned(self, lo: Sequence[int], hi: Sequence[int]) -> list[Batch]:
        """The batches whose first tile's centre (:meth:`anchor`) lies in the box ``lo..hi``
        of the image: a block's share of the network's work."""
        out = []
        for o in self.orientations:
            ny, nx = len(o.starts[0]), len(o.starts[1])
            ntiles = ny * nx
            nimgs = max(1, self.facts.batch_size // ntiles)
            if o.axis is None:
                planes = range(1)
            else:
                L, N = self.shape[o.axis], self.net_shape[o.axis]
                inside = [q for q in range(N) if lo[o.axis] <= min(L - 1, int(math.floor(q * L / N))) < hi[o.axis]]
                planes = range(inside[0], inside[-1] + 1) if inside else range(0)
            groups = sorted({q // nimgs for q in planes})
            number = 0  # batch numbers count from the orientation's start
            done_groups = 0
            for k in groups:
                number += sum(int(np.ceil((min(o.n_planes, (g + 1) * nimgs) - g * nimgs) * ntiles
                                          / self.facts.batch_size)) for g in range(done_groups, k))
                done_groups = k
                members = [(q, j, i) for q in range(k * nimgs, min(o.n_planes, (k + 1) * nimgs))
                           for j in range(ny) for i in range(nx)]
                for s in range(0, len(members), self.facts.batch_size):
                    batch = Batch(o.index, number, tuple(members[s:s + self.facts.batch_size]))
                    number += 1
                    a = self.anchor(o.index, batch.members[0])
                    if all(l <= c < h for c, l, h in zip(a, lo, hi)):
                        out.append(batch)
                done_groups = k + 1
        return out

    def owners(self, block_shape: Sequence[int], counts: Sequence[int]) -> dict[int, list[Batch]]:
        """Batches by the block (C-order id of a regular grid) that owns them."""
        out: dict[int, list[Batch]] = {}
        for o in self.orientations:
            for batch in self.batches(o.index):
                a = self.anchor(o.index, batch.members[0])
                idx = [min(c // b, n - 1) for c, b, n in zip(a, block_shape, counts)]
                block = int(np.ravel_multi_index(tuple(idx), tuple(counts)))
                out.setdefault(block, []).append(batch)
        return out

    def tiles_over(self, orientation: int, u: tuple[int, int], v: tuple[int, int]) -> list[tuple[int, int]]:
        """Tiles ``(j, i)`` of a plane that overlap ``u x v`` (network coordinates), in cellpose's order."""
        o = self.orientations[orientation]
        out = []
        for j in range(len(o.starts[0])):
            for i in range(len(o.starts[1])):
                (u0, u1), (v0, v1) = o.tile_box(j, i)
                if u0 < u[1] and u1 > u[0] and v0 < v[1] and v1 > v[0]:
                    out.append((j, i))
        return out

    def tiles_for(self, core: Box) -> list[tuple[int, int, int, int]]:
        """The tiles ``(orientation, plane, j, i)`` that :func:`blend` reads for ``core``, in its order."""
        net = self.net_box_for(core)
        out = []
        for o in self.orientations:
            planes = range(1) if o.axis is None else range(net[0][o.axis], net[1][o.axis])
            u = (net[0][o.plane_axes[0]], net[1][o.plane_axes[0]])
            v = (net[0][o.plane_axes[1]], net[1][o.plane_axes[1]])
            over = self.tiles_over(o.index, u, v)
            out += [(o.index, q, j, i) for q in planes for j, i in over]
        return out

    # ---- the regions each step needs

    def net_box_for(self, core: Box) -> Box:
        """The network-space box whose output, resized back, gives ``core``."""
        return passes_source_box(self.output_passes, core)

    def source_box_for(self, net: Box) -> Box:
        """The image box whose input, resized, gives the network input over ``net``."""
        return passes_source_box(self.input_passes, net)

    def batch_box(self, batch: Batch) -> Box:
        """Network-space box of a batch's tiles, clipped to the image (the padding is zeros)."""
        o = self.orientations[batch.orientation]
        lo = [None] * self.ndim
        hi = [None] * self.ndim
        for q, j, i in batch.members:
            (u0, u1), (v0, v1) = o.tile_box(j, i)
            box = {}
            if o.axis is not None:
                box[o.axis] = (q, q + 1)
            box[o.plane_axes[0]] = (max(u0, 0), min(u1, o.L[0]))
            box[o.plane_axes[1]] = (max(v0, 0), min(v1, o.L[1]))
            for a, (s, e) in box.items():
                lo[a] = s if lo[a] is None else min(lo[a], s)
                hi[a] = e if hi[a] is None else max(hi[a], e)
        return tuple(lo), tuple(hi)  # type: ignore[return-value]


# ---------------------------------------------------------------- network input


def prepare(block: np.ndarray, major: int, bounds: np.ndarray, invert: bool) -> np.ndarray:
    """What ``eval`` feeds the network, for any part of the image, before resizing.

    ``block``: channels last ``(..., c)`` as the adapter selected them;
    ``bounds``: ``(c, 2)`` absolute ``(low, high)`` per channel (global
    normalisation).  cellpose 3 appends a zero channel to a single one
    (``convert_image``); then ``normalize_img`` with ``lowhigh`` (per voxel,
    the same numpy operations) and ``invert``.
    """
    x = np.asarray(block).astype("float32")
    if major == 3 and x.shape[-1] == 1:
        x = np.concatenate((x, np.zeros(x.shape, "float32")), axis=-1)
    lowhigh = np.array(bounds)
    if lowhigh.shape != (x.shape[-1], 2):
        raise InputError(f"Expected normalisation bounds for {x.shape[-1]} channels. Got {lowhigh.shape} instead.")
    for c in range(x.shape[-1]):
        lower = lowhigh[c, 0]
        upper = lowhigh[c, 1]
        x[..., c] -= lower
        x[..., c] /= (upper - lower)
    if invert:
        for c in range(x.shape[-1]):
            x[..., c] = 1 - x[..., c]
    return x


def batch_input(geometry: Geometry, batch: Batch, read: Callable[[Box], np.ndarray]) -> np.ndarray:
    """The array ``run_net`` gives the network for ``batch``: ``(n, nchan, ly, lx)`` float32.

    ``read(box)``: the prepared image (:func:`prepare`) over an image box,
    channels last.
    """
    g = geometry
    o = g.orientations[batch.orientation]
    net = g.batch_box(batch)
    src = g.source_box_for(net)
    data = apply_passes(read(src), src[0], g.input_passes, net)
    nchan = data.shape[-1]
    out = np.zeros((len(batch.members), nchan, o.tile[0], o.tile[1]), "float32")
    for k, (q, j, i) in enumerate(batch.members):
        (u0, u1), (v0, v1) = o.tile_box(j, i)
        a0, a1 = max(u0, 0), min(u1, o.L[0])
        b0, b1 = max(v0, 0), min(v1, o.L[1])
        index: list = [slice(None)] * g.ndim
        if o.axis is not None:
            index[o.axis] = q - net[0][o.axis]
        index[o.plane_axes[0]] = slice(a0 - net[0][o.plane_axes[0]], a1 - net[0][o.plane_axes[0]])
        index[o.plane_axes[1]] = slice(b0 - net[0][o.plane_axes[1]], b1 - net[0][o.plane_axes[1]])
        plane = data[tuple(index)]  # (a, b, nchan)
        out[k, :, a0 - u0:a1 - u0, b0 - v0:b1 - v0] = np.moveaxis(plane, -1, 0)
    return out


# ---------------------------------------------------------------- blending


@functools.lru_cache(maxsize=8)
def taper_mask(ly: int, lx: int) -> np.ndarray:
    """cellpose's ``transforms._taper_mask`` (float64), read-only."""
    from cellpose import transforms

    mask = np.asarray(transforms._taper_mask(ly=ly, lx=lx))
    mask.setflags(write=False)
    return mask


TileReader = Callable[[int, int, int, int], np.ndarray]


def plane_output(geometry: Geometry, orientation: int, q: int, u: tuple[int, int], v: tuple[int, int],
                 tile: TileReader) -> np.ndarray:
    """``average_tiles`` of plane ``q`` over ``u x v`` (network coordinates): (nout, hu, hv) float32.

    ``tile(orientation, q, j, i)``: a tile's network output ``(nout, ly, lx)``.
    """
    o = geometry.orientations[orientation]
    nout = geometry.facts.nout
    yf = np.zeros((nout, u[1] - u[0], v[1] - v[0]), np.float32)
    navg = np.zeros((u[1] - u[0], v[1] - v[0]))
    mask = taper_mask(o.tile[0], o.tile[1])
    for j, i in geometry.tiles_over(orientation, u, v):
        (u0, u1), (v0, v1) = o.tile_box(j, i)
        a0, a1 = max(u0, u[0]), min(u1, u[1])
        b0, b1 = max(v0, v[0]), min(v1, v[1])
        y = tile(orientation, q, j, i)
        m = mask[a0 - u0:a1 - u0, b0 - v0:b1 - v0]
        yf[:, a0 - u[0]:a1 - u[0], b0 - v[0]:b1 - v[0]] += y[:, a0 - u0:a1 - u0, b0 - v0:b1 - v0] * m
        navg[a0 - u[0]:a1 - u[0], b0 - v[0]:b1 - v[0]] += m
    yf /= navg
    return yf


def blend(geometry: Geometry, core: Box, tile: TileReader) -> tuple[np.ndarray, np.ndarray]:
    """The flows ``dP`` (ndim, *core) and cell probability (*core) of ``eval`` over ``core``.

    Blends the tiles over the network-space box the core needs, sums the
    orientations (3-D) in ``run_3D``'s order, and resizes back.
    """
    g = geometry
    net = g.net_box_for(core)
    shape = tuple(b - a for a, b in zip(*net))
    if g.ndim == 2:
        yf = np.moveaxis(plane_output(g, 0, 0, (net[0][0], net[1][0]), (net[0][1], net[1][1]), tile), 0, -1)
    else:
        yf = np.zeros((*shape, g.facts.nout + 1), "float32")
        for o in g.orientations:
            a, (pu, pv) = o.axis, o.plane_axes
            part = np.empty((shape[a], shape[pu], shape[pv], g.facts.nout), np.float32)
            for k, q in enumerate(range(net[0][a], net[1][a])):
                part[k] = np.moveaxis(plane_output(g, o.index, q, (net[0][pu], net[1][pu]),
                                                   (net[0][pv], net[1][pv]), tile), 0, -1)
            # back to (z, y, x, c): the plane axis first in ``part``
            order = [0, 0, 0]
            order[a], order[pu], order[pv] = 0, 1, 2
            part = part.transpose(order + [3])
            yf[..., -1] += part[..., -1]
            for c in range(2):
                yf[..., o.flow_channels[c]] += part[..., c]
    out = apply_passes(yf, net[0], g.output_passes, core)
    if g.ndim == 2:
        return np.ascontiguousarray(np.moveaxis(out[..., -3:-1], -1, 0)), np.ascontiguousarray(out[..., -1])
    return np.ascontiguousarray(np.moveaxis(out[..., :-1], -1, 0)), np.ascontiguousarray(out[..., -1])


# ---------------------------------------------------------------- blocks in turn, tiles computed on demand


@dataclasses.dataclass
class StreamReport:
    """What :func:`stream_blocks` did: forward batches and tiles computed (each
    exactly once), and the most tile outputs held at any time (``tile_bytes``:
    the largest tile output's size)."""

    batches: int = 0
    tiles: int = 0
    peak_tiles: int = 0
    tile_bytes: int = 0
    #: blocks a rerun found written (set by the caller that skips them)
    resumed: int = 0

    @property
    def peak_bytes(self) -> int:
        return self.peak_tiles * self.tile_bytes


TileKey = tuple[int, int, int, int]  # (orientation, plane, j, i)


def tile_schedule(geometry: Geometry, cores: Sequence[Box]
                  ) -> Iterator[tuple[int, list[tuple[Batch, frozenset[TileKey]]], list[TileKey]]]:
    """For each core in turn ``(index, run, drop)``: the forward batches to run
    before it is blended (each with the tiles of it that some core reads: the
    ones to keep) and the tiles to drop after it (none of the cores to come
    reads them).  Every batch is run once; a kept tile is dropped exactly once.
    """
    needs = [geometry.tiles_for(core) for core in cores]
    refs: dict[TileKey, int] = {}
    for keys in needs:
        for key in keys:
            refs[key] = refs.get(key, 0) + 1
    batch_of: dict[TileKey, Batch] = {}
    for o in geometry.orientations:
        for batch in geometry.batches(o.index):
            for member in batch.members:
                if (o.index, *member) in refs:
                    batch_of[(o.index, *member)] = batch
    done: set[tuple[int, int]] = set()
    for index, keys in enumerate(needs):
        run = []
        for key in keys:
            batch = batch_of[key]
            if (batch.orientation, batch.number) not in done:
                done.add((batch.orientation, batch.number))
                run.append((batch, frozenset(k for k in ((batch.orientation, *m) for m in batch.members)
                                             if k in refs)))
        drop = []
        for key in keys:
            refs[key] -= 1
            if refs[key] == 0:
                drop.append(key)
        yield index, run, drop


def stream_blocks(geometry: Geometry, cores: Sequence[Box], forward: Callable[[Batch], np.ndarray],
                  report: StreamReport | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(index, dP, cellprob)`` of each core in turn, as :func:`blend` gives them.

    ``forward(batch)``: the network's output of a batch, ``(n, nout, ly, lx)``.
    A batch is computed when the first core that needs one of its tiles comes
    (whole, as ``eval`` runs it: the outputs do not depend on the order); a
    tile output is dropped when the last core that reads it is blended
    (:func:`tile_schedule`).  So every batch runs once and what is held is the
    tiles between the cores done and those to come: for cores in C order and
    planes many tiles wide, about a slab of the image one block plus one tile
    thick; up to every tile when a forward batch spans whole planes.
    """
    report = report if report is not None else StreamReport()
    tiles: dict[TileKey, np.ndarray] = {}
    for index, run, drop in tile_schedule(geometry, cores):
        for batch, keep in run:
            y = forward(batch)
            report.batches += 1
            report.tiles += len(batch.members)
            report.tile_bytes = max(report.tile_bytes, int(y[0].nbytes))
            for k, member in enumerate(batch.members):
                key = (batch.orientation, *member)
                if key in keep:
                    tiles[key] = np.array(y[k])  # not a view: the batch's array can go
            report.peak_tiles = max(report.peak_tiles, len(tiles))
        dP, cellprob = blend(geometry, cores[index], lambda o, q, j, i: tiles[(o, q, j, i)])
        for key in drop:
            del tiles[key]
        yield index, dP, cellprob
