"""Quality checks that need no ground truth: seam statistics and pictures.

Seam QC.  Where the foreground continues across a plane, a correctly
stitched object continues with the same id.  For every sampled face between
two blocks, count the objects on each side whose id does not continue on the
other side although their foreground does ("breaks"), and compare with the
same rate on control planes inside blocks, where pystitch never cuts.
Touching objects that end exactly at a plane break equally often at seams and
at control planes; a bad stitch breaks almost every object crossing a seam.
A seam rate clearly above the control rate is flagged.

Pictures.  Maximum-intensity projections of the image with the outlines of
the labels seen at the brightest voxel (one per axis in 3-D), and zoomed
crops across a few seams at full resolution, as PNG.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..plan import Plan
from ..storage.labels import level_shape

log = logging.getLogger(__name__)

#: seam rate above max(FLAG_RATIO * control rate, control rate + FLAG_MARGIN) is flagged
FLAG_RATIO = 2.0
FLAG_MARGIN = 0.02
#: picture projections are computed on the first pyramid level whose largest side is at most this
PICTURE_MAX_SIDE = 1024
#: the image is read for pictures only up to this many voxels (else outlines are drawn on the labels)
PICTURE_IMAGE_VOXELS = 2 ** 31


# --------------------------------------------------------------------------- seam QC


def plane_breaks(p: np.ndarray, q: np.ndarray) -> tuple[int, int]:
    """(breaks, objects) across two adjacent planes of labels, both directions."""
    both = (p > 0) & (q > 0)
    breaks = objects = 0
    for x in (p, q):
        present = np.unique(x[both])
        continuing = np.unique(x[both & (p == q)])
        breaks += len(present) - len(continuing)
        objects += len(present)
    return breaks, objects


def seam_faces(plan: Plan, counts: np.ndarray) -> list[tuple[int, int, int]]:
    """Faces (block, neighbour, axis) between two non-empty blocks."""
    faces = []
    for a in range(plan.n_blocks):
        if counts[a] == 0:
            continue
        idx = plan.grid.index(a)
        for axis in plan.grid.split_axes():
            if idx[axis] + 1 < plan.grid.counts[axis]:
                nidx = list(idx)
                nidx[axis] += 1
                b = plan.grid.id(nidx)
                if counts[b] > 0:
                    faces.append((a, b, axis))
    return faces


def seam_qc(plan: Plan, labels: Any, counts: np.ndarray, max_faces: int | None = 256) -> dict:
    """Break rates at seams and at control planes inside blocks.

    ``labels`` is the level-0 output array; ``counts`` the objects per block
    (empty blocks are skipped); at most ``max_faces`` faces, evenly sampled
    (None: all).
    """
    faces = seam_faces(plan, counts)
    if max_faces is not None and len(faces) > max_faces:
        faces = [faces[i] for i in np.unique(np.linspace(0, len(faces) - 1, max_faces).round().astype(int))]
    cache: dict[int, tuple[tuple[int, ...], dict]] = {}

    def planes(block: int) -> tuple[tuple[int, ...], dict]:
        """A block's shape and the planes QC compares (first, last and the two
        middle ones on every split axis): its core is decoded once, only the
        planes are kept."""
        if block not in cache:
            if len(cache) >= 64:
                cache.pop(next(iter(cache)))
            core = labels[plan.grid.core(block)]
            kept = {}
            for axis in plan.grid.split_axes():
                n = core.shape[axis]
                for pos in {0, n - 1, n // 2 - 1, n // 2} - {-1}:
                    kept[axis, pos] = np.take(core, pos, axis=axis)
            cache[block] = (core.shape, kept)
        return cache[block]

    seam = np.zeros(2, np.int64)
    control = np.zeros(2, np.int64)
    per_face = []
    for a, b, axis in faces:
        shape, pa = planes(a)
        s = plane_breaks(pa[axis, shape[axis] - 1], planes(b)[1][axis, 0])
        seam += s
        per_face.append({"block": a, "neighbour": b, "axis": plan.axes[axis], "breaks": s[0], "objects": s[1]})
        mid = shape[axis] // 2
        if mid >= 1:
            control += plane_breaks(pa[axis, mid - 1], pa[axis, mid])
    seam_rate = float(seam[0] / seam[1]) if seam[1] else 0.0
    control_rate = float(control[0] / control[1]) if control[1] else 0.0
    flagged = bool(seam[1] >= 5 and seam_rate > max(FLAG_RATIO * control_rate, control_rate + FLAG_MARGIN))
    return {
        "faces_checked": len(faces),
        "seam_objects": int(seam[1]), "seam_breaks": int(seam[0]), "seam_break_rate": round(seam_rate, 6),
        "control_objects": int(control[1]), "control_breaks": int(control[0]),
        "control_break_rate": round(control_rate, 6),
        "flagged": flagged,
        "rule": f"flagged when the seam break rate exceeds max({FLAG_RATIO} x control, control + {FLAG_MARGIN})",
        "worst_faces": sorted(per_face, key=lambda f: (-f["breaks"], -f["objects"]))[:5],
        "busiest_faces": _busiest_per_axis(per_face, 4),
    }


def _busiest_per_axis(faces: list[dict], n: int) -> list[dict]:
    """The faces with most objects, taking each axis in turn (crops across every direction)."""
    by_axis: dict[str, list[dict]] = {}
    for f in sorted(faces, key=lambda f: -f["objects"]):
        by_axis.setdefault(f["axis"], []).append(f)
    out: list[dict] = []
    while len(out) < n and any(by_axis.values()):
        for axis in sorted(by_axis, reverse=True):
            if by_axis[axis] and len(out) < n:
                out.append(by_axis[axis].pop(0))
    return out


# --------------------------------------------------------------------------- pictures


def _colors(ids: np.ndarray) -> np.ndarray:
    """A bright, stable colour per id (hash of the id)."""
    h = (ids.astype(np.uint64) * np.uint64(2654435761)) & np.uint64(0xFFFFFF)
    rgb = np.stack([(h >> np.uint64(s)) & np.uint64(0xFF) for s in (16, 8, 0)], axis=-1).astype(np.float32)
    return (96 + rgb * (159 / 255)).astype(np.uint8)


def _gray(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    finite = np.isfinite(image)
    if image.size == 0 or not finite.any():  # nothing to show: black
        return np.zeros(image.shape, np.uint8)
    lo, hi = np.percentile(image[finite], [1, 99.8])
    if hi <= lo:
        hi = lo + 1
    scaled = np.clip((np.where(finite, image, lo) - lo) / (hi - lo), 0, 1)
    return (scaled * 255).astype(np.uint8)


def outlines(labels2d: np.ndarray) -> np.ndarray:
    """Voxels of an object next to a different label (4-neighbourhood)."""
    edge = np.zeros(labels2d.shape, bool)
    for axis in range(2):
        d = np.diff(labels2d, axis=axis) != 0
        lo = [slice(None)] * 2
        hi = [slice(None)] * 2
        lo[axis] = slice(0, -1)
        hi[axis] = slice(1, None)
        edge[tuple(lo)] |= d
        edge[tuple(hi)] |= d
    return edge & (labels2d > 0)


def render(image2d: np.ndarray | None, labels2d: np.ndarray, lines: Sequence[tuple[int, int]] = (),
           scale: Sequence[int] = (1, 1)) -> np.ndarray:
    """RGB picture: dimmed gray image (or a label mask), objects tinted and
    outlined in their colour, and lines ``(axis, position)`` (seams, block
    grid) in red.  ``scale`` repeats pixels per axis (anisotropy, small crops)."""
    base = _gray(image2d) if image2d is not None else ((labels2d > 0) * 90).astype(np.uint8)
    rgb = np.repeat((base.astype(np.float32) * 0.6)[..., None], 3, axis=-1)
    fg = labels2d > 0
    rgb[fg] = rgb[fg] * 0.6 + _colors(labels2d[fg]).astype(np.float32) * 0.4
    edge = outlines(labels2d)
    rgb[edge] = _colors(labels2d[edge])
    rgb = rgb.astype(np.uint8)
    for axis, pos in lines:
        if 0 <= pos < rgb.shape[axis]:
            idx = [slice(None), slice(None)]
            idx[axis] = pos
            rgb[tuple(idx)] = np.array([255, 40, 40], np.uint8)
    return rgb.repeat(int(scale[0]), axis=0).repeat(int(scale[1]), axis=1)


def _display_scale(plan: Plan, axes: Sequence[int], shape: Sequence[int], target: int) -> tuple[int, int]:
    """Pixel repeats so that voxels look square (anisotropy) and the picture
    is about ``target`` pixels on its longer side."""
    voxel = plan.voxel_size or (1.0,) * plan.ndim
    ratio = [max(1, round(voxel[a] / min(voxel[b] for b in axes))) for a in axes]
    size = max(n * r for n, r in zip(shape, ratio))
    k = max(1, min(8, target // max(size, 1)))
    return ratio[0] * k, ratio[1] * k


def write_png(path: Path, rgb: np.ndarray) -> Path:
    import imagecodecs

    path.write_bytes(imagecodecs.png_encode(np.ascontiguousarray(rgb)))
    return path


def _picture_level(plan: Plan) -> int:
    for k, factor in enumerate(plan.pyramid):
        if max(level_shape(plan.shape, factor)) <= PICTURE_MAX_SIDE:
            return k
    return len(plan.pyramid) - 1


def _image_at(plan: Plan, source: Any, factor: Sequence[int]) -> np.ndarray | None:
    """The image subsampled like a pyramid level, read block by block."""
    if source is None or math.prod(plan.shape) > PICTURE_IMAGE_VOXELS:
        return None
    out = np.zeros(level_shape(plan.shape, factor), np.float32)
    for b in range(plan.n_blocks):
        core = plan.grid.core(b)
        data = source.read(core)
        if data.ndim > plan.ndim:  # several channels: show the first
            data = data[0]
        region = tuple(slice(s.start // f, -(-s.stop // f)) for s, f in zip(core, factor))
        out[region] = data[tuple(slice(None, None, f) for f in factor)]
    return out


def pictures(plan: Plan, source: Any, labels_levels: Sequence[Any], out_dir: Path, seams: Sequence[dict],
             grid: bool = False, n_crops: int = 4, crop_half: int = 64) -> list[dict]:
    """Write the QC pictures into ``out_dir``; returns ``[{file, caption}]``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made: list[dict] = []
    k = _picture_level(plan)
    factor = plan.pyramid[k]
    labels = labels_levels[k][:]
    image = _image_at(plan, source, factor)
    what = "maximum-intensity projection" if image is not None else "label mask projection"
    view_axes = list(range(plan.ndim)) if plan.ndim == 3 else [None]
    for axis in view_axes:
        if axis is None:
            lab2, img2, shown = labels, image, [0, 1]
        else:
            if image is not None:
                pos = np.argmax(image, axis=axis)
                img2 = np.max(image, axis=axis)
            else:
                pos = np.argmax(labels > 0, axis=axis)
                img2 = None
            lab2 = np.take_along_axis(labels, np.expand_dims(pos, axis), axis=axis).squeeze(axis)
            shown = [a for a in range(plan.ndim) if a != axis]
        lines = []
        if grid:
            for i, a in enumerate(shown):
                step = plan.block_shape[a] // factor[a]
                lines += [(i, p) for p in range(step, lab2.shape[i], step)]
        scale = _display_scale(plan, shown, lab2.shape, 512)
        name = "projection.png" if axis is None else f"projection-{plan.axes[axis]}.png"
        write_png(out_dir / name, render(img2, lab2, lines, scale))
        caption = (f"{what} along {plan.axes[axis]}" if axis is not None else "image") + \
            f" with label outlines (level {k}, stride {list(factor)})" + (", block grid in red" if grid else "")
        made.append({"file": name, "caption": caption})
    made += seam_crops(plan, source, labels_levels[0], out_dir, seams[:n_crops], crop_half)
    return made


def seam_crops(plan: Plan, source: Any, labels: Any, out_dir: Path, faces: Sequence[dict], half: int) -> list[dict]:
    """Full-resolution crops centred on seams (seam in red)."""
    made = []
    for i, face in enumerate(faces):
        a, axis = face["block"], plan.axes.index(face["axis"])
        core = plan.grid.core(a)
        seam = core[axis].stop
        other = max((ax for ax in range(plan.ndim) if ax != axis), key=lambda ax: plan.shape[ax])
        region = []
        for ax in range(plan.ndim):
            if ax == axis:
                region.append(slice(max(seam - half, 0), min(seam + half, plan.shape[ax])))
            elif ax == other:
                mid = (core[ax].start + core[ax].stop) // 2
                region.append(slice(max(mid - half, 0), min(mid + half, plan.shape[ax])))
            else:
                mid = (core[ax].start + core[ax].stop) // 2
                region.append(slice(mid, mid + 1))
        region_t = tuple(region)
        lab = np.squeeze(labels[region_t])
        img = None
        if source is not None:
            img = source.read(region_t)
            img = np.squeeze(img[0] if img.ndim > plan.ndim else img).astype(np.float32)
        if lab.ndim != 2:
            continue
        seam_axis_2d = 0 if axis < other else 1
        lines = [(seam_axis_2d, seam - region_t[axis].start)]
        name = f"seam-{i + 1}.png"
        write_png(out_dir / name, render(img, lab, lines, _display_scale(plan, sorted((axis, other)), lab.shape, 384)))
        made.append({"file": name, "caption": f"seam between blocks {a} and {face['neighbour']} across "
                                               f"{face['axis']} at {seam} ({face['objects']} objects, "
                                               f"{face['breaks']} breaks)"})
    return made
