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
from numcodecs import Blosc

from ..errors import StagingError
from ..plan import Plan
from ..storage.labels import level_shape

log = logging.getLogger(__name__)

#: block faces the seam QC samples unless told otherwise (``--qc-faces``);
#: apply-lut keeps the planes of these
QC_FACES = 256
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
    """Faces (block, neighbour, axis) between two non-empty blocks, by block
    id, then by axis (computed over whole arrays of block ids: a grid of 10⁵
    blocks takes milliseconds)."""
    grid = plan.grid
    counts = np.asarray(counts)
    found = []
    for rank, axis in enumerate(grid.split_axes()):
        index = np.indices(grid.counts).reshape(len(grid.counts), -1)
        a = np.arange(grid.n_blocks)[index[axis] + 1 < grid.counts[axis]]
        b = a + int(np.prod(grid.counts[axis + 1:]))   # the next block along ``axis`` (C order)
        keep = (counts[a] > 0) & (counts[b] > 0)
        found.append((a[keep], b[keep], np.full(int(keep.sum()), axis), np.full(int(keep.sum()), rank)))
    if not found:
        return []
    a, b, axis, rank = (np.concatenate(parts) for parts in zip(*found))
    order = np.lexsort((rank, a))
    return [(int(x), int(y), int(z)) for x, y, z in zip(a[order], b[order], axis[order])]


def sampled_faces(plan: Plan, counts: np.ndarray, max_faces: int | None = None) -> list[tuple[int, int, int]]:
    """The faces the seam QC compares: at most ``max_faces`` of
    :func:`seam_faces`, evenly sampled (None: all)."""
    faces = seam_faces(plan, counts)
    if max_faces is not None and len(faces) > max_faces:
        faces = [faces[i] for i in np.unique(np.linspace(0, len(faces) - 1, max_faces).round().astype(int))]
    return faces


def face_planes(plan: Plan, faces: Sequence[tuple[int, int, int]]) -> dict[int, set[tuple[int, int]]]:
    """The planes ``(axis, position in the block's core)`` of every block that
    the seam QC compares for ``faces``: the last plane of the block before the
    seam and its two middle planes (the control), the first plane of the
    block after it."""
    needed: dict[int, set[tuple[int, int]]] = {}
    for a, b, axis in faces:
        n = plan.grid.core(a)[axis]
        n = n.stop - n.start
        mine = needed.setdefault(a, set())
        mine.add((axis, n - 1))
        if n // 2 >= 1:
            mine |= {(axis, n // 2 - 1), (axis, n // 2)}
        needed.setdefault(b, set()).add((axis, 0))
    return needed


def plane_key(block: int, axis: int, pos: int) -> str:
    """The name of a kept plane in a statistics file."""
    return f"qc-{block}-{axis}-{pos}"


def parse_plane_key(key: str) -> tuple[int, int, int] | None:
    """(block, axis, position) of a :func:`plane_key`; None for other names."""
    parts = key.split("-")
    if len(parts) != 4 or parts[0] != "qc" or not all(p.isdigit() for p in parts[1:]):
        return None
    return int(parts[1]), int(parts[2]), int(parts[3])


#: how kept planes are compressed: labels, long runs of few values
PLANE_CODEC = Blosc(cname="lz4", clevel=5, shuffle=Blosc.BITSHUFFLE)


def encode_plane(plane: np.ndarray) -> np.ndarray:
    """A plane of labels as compressed bytes (uint8), for a statistics file."""
    return np.frombuffer(PLANE_CODEC.encode(np.ascontiguousarray(plane)), np.uint8)


def decode_plane(data: np.ndarray, shape: Sequence[int], dtype: Any) -> np.ndarray:
    """The plane :func:`encode_plane` compressed; its shape and dtype must be
    ``shape`` and ``dtype`` (a damaged plane is an error, never other labels)."""
    dtype = np.dtype(dtype)
    raw = PLANE_CODEC.decode(np.ascontiguousarray(data, np.uint8).tobytes())
    if len(raw) != int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(f"expected {int(np.prod(shape)) * dtype.itemsize} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype).reshape(tuple(shape))


def seam_qc(plan: Plan, labels: Any, counts: np.ndarray, max_faces: int | None = QC_FACES,
            kept: dict[tuple[int, int, int], np.ndarray] | None = None) -> dict:
    """Break rates at seams and at control planes inside blocks.

    ``labels`` is the level-0 output array; ``counts`` the objects per block
    (empty blocks are skipped); at most ``max_faces`` faces, evenly sampled
    (None: all).  ``kept``: planes apply-lut kept, ``{(block, axis,
    position): encoded}`` (:func:`encode_plane`); a block whose planes were
    not all kept is read from ``labels``.
    """
    faces = sampled_faces(plan, counts, max_faces)
    kept = kept or {}
    needed = face_planes(plan, faces)
    cache: dict[int, dict] = {}

    def planes(block: int) -> dict:
        """The planes of a block QC compares: kept by apply-lut, or cut from
        its core (decoded once, only the planes are kept)."""
        if block not in cache:
            if len(cache) >= 64:
                cache.pop(next(iter(cache)))
            core = plan.grid.core(block)
            shape = tuple(s.stop - s.start for s in core)
            wanted = needed[block]
            if all((block, axis, pos) in kept for axis, pos in wanted):
                found = {}
                for axis, pos in wanted:
                    try:
                        found[axis, pos] = decode_plane(kept[block, axis, pos], shape[:axis] + shape[axis + 1:],
                                                        labels.dtype)
                    except Exception as exc:  # codec errors come in many types
                        raise StagingError(f"The seam QC plane {plane_key(block, axis, pos)} kept by apply-lut "
                                           f"is damaged ({exc}): run apply-lut again for block {block}.") from exc
            else:
                data = labels[core]
                found = {(axis, pos): np.take(data, pos, axis=axis) for axis, pos in wanted}
            cache[block] = found
        return cache[block]

    seam = np.zeros(2, np.int64)
    control = np.zeros(2, np.int64)
    per_face = []
    for a, b, axis in faces:
        core = plan.grid.core(a)[axis]
        n = core.stop - core.start
        pa = planes(a)
        s = plane_breaks(pa[axis, n - 1], planes(b)[axis, 0])
        seam += s
        per_face.append({"block": a, "neighbour": b, "axis": plan.axes[axis], "breaks": s[0], "objects": s[1]})
        mid = n // 2
        if mid >= 1:
            control += plane_breaks(pa[axis, mid - 1], pa[axis, mid])
    seam_rate = float(seam[0] / seam[1]) if seam[1] else 0.0
    control_rate = float(control[0] / control[1]) if control[1] else 0.0
    flagged = bool(seam[1] >= 5 and seam_rate > max(FLAG_RATIO * control_rate, control_rate + FLAG_MARGIN))
    why = f"flagged when the seam break rate exceeds max({FLAG_RATIO} x control, control + {FLAG_MARGIN})"
    if plan.rule == "flows":  # the labels do not depend on the block grid: a break at a seam is objects touching
        flagged, why = False, "never flagged with the flows rule: its labels do not depend on the block grid"
    return {
        "faces_checked": len(faces),
        "seam_objects": int(seam[1]), "seam_breaks": int(seam[0]), "seam_break_rate": round(seam_rate, 6),
        "control_objects": int(control[1]), "control_breaks": int(control[0]),
        "control_break_rate": round(control_rate, 6),
        "flagged": flagged,
        "rule": why,
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
    grid: the boundary before voxel ``position``) in red.  ``scale`` repeats
    pixels per axis (anisotropy, small crops)."""
    base = _gray(image2d) if image2d is not None else ((labels2d > 0) * 90).astype(np.uint8)
    rgb = np.repeat((base.astype(np.float32) * 0.6)[..., None], 3, axis=-1)
    fg = labels2d > 0
    rgb[fg] = rgb[fg] * 0.6 + _colors(labels2d[fg]).astype(np.float32) * 0.4
    edge = outlines(labels2d)
    rgb[edge] = _colors(labels2d[edge])
    rgb = rgb.astype(np.uint8).repeat(int(scale[0]), axis=0).repeat(int(scale[1]), axis=1)
    for axis, pos in lines:
        if 0 < pos < labels2d.shape[axis]:
            # on the boundary before voxel ``pos``: one or two pixels, no voxel hidden behind it
            at = pos * int(scale[axis])
            idx = [slice(None), slice(None)]
            idx[axis] = slice(max(at - 1, 0), at + 1) if scale[axis] > 2 else slice(at, at + 1)
            rgb[tuple(idx)] = np.array([255, 40, 40], np.uint8)
    return rgb


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
    """Write the QC pictures into ``out_dir``; returns ``[{file, caption, ...}]``.

    Every picture has a scale bar (physical units when the voxel size is
    known, else voxels) and names its axes; ``seams`` are the faces to crop."""
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
        rgb, bar = annotate(render(img2, lab2, lines, scale), plan, shown, [factor[a] / s for a, s in
                                                                             zip(shown, scale)])
        write_png(out_dir / name, rgb)
        caption = (f"{what} along {plan.axes[axis]}" if axis is not None else "image") + \
            f" with label outlines (level {k}, stride {list(factor)})" + (", block grid in red" if grid else "") + \
            f"; {plan.axes[shown[0]]} down, {plan.axes[shown[1]]} across; scale bar {bar['label']}"
        made.append({"file": name, "caption": caption, "axes": [plan.axes[a] for a in shown], "scale_bar": bar})
    made += seam_crops(plan, source, labels_levels[0], out_dir, seams[:n_crops], crop_half)
    return made


# --------------------------------------------------------------------------- scale bars and axis names

_UNIT_SHORT = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "centimeter": "cm", "meter": "m",
               "um": "µm", "micron": "µm"}
#: height of the strip under a picture that holds the scale bar
STRIP = 22
BAR_COLOR = (255, 255, 255)


def nice_length(limit: float) -> float:
    """The largest 1, 2 or 5 x 10^k not above ``limit`` (a scale bar's length).

    >>> nice_length(37.0), nice_length(0.8), nice_length(5.0)
    (20.0, 0.5, 5.0)
    """
    if not limit > 0:
        return 0.0
    exp = math.floor(math.log10(limit))
    for m in (5, 2, 1):
        value = m * 10.0 ** exp
        if value <= limit * (1 + 1e-9):
            return float(f"{value:.12g}")
    return float(f"{10.0 ** exp:.12g}")


def annotate(rgb: np.ndarray, plan: Plan, shown: Sequence[int], voxels_per_pixel: Sequence[float]
             ) -> tuple[np.ndarray, dict]:
    """Add a strip with a scale bar under ``rgb`` and the names of its axes
    (arrows in the top-left corner: ``shown[1]`` across, ``shown[0]`` down).

    ``voxels_per_pixel``: level-0 voxels per picture pixel, per shown axis.
    Returns the picture and ``{length, unit, pixels, label}`` of the bar."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=12)
    across = shown[1]
    if plan.voxel_size:
        size = plan.voxel_size[across] * voxels_per_pixel[1]
        unit = _UNIT_SHORT.get(plan.unit or "", plan.unit or "units")
    else:
        size, unit = voxels_per_pixel[1], "px"
    h, w = rgb.shape[:2]
    length = nice_length(w / 4 * size)
    pixels = max(1, int(round(length / size))) if size > 0 else 1
    label = f"{length:g} {unit}"
    width = max(w, pixels + 24 + int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(label, font=font)))
    canvas = Image.new("RGB", (width, h + STRIP), (0, 0, 0))
    canvas.paste(Image.fromarray(np.ascontiguousarray(rgb)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = h + STRIP // 2 - 2
    draw.rectangle([6, y, 6 + pixels - 1, y + 3], fill=BAR_COLOR)
    _text(draw, (12 + pixels, h + 4), label, font, BAR_COLOR)
    # axis names: an arrow across and one down from the top-left corner, drawn over a dark shadow
    names = (plan.axes[shown[1]], plan.axes[shown[0]])
    arm = max(12, min(28, min(w, h) // 5))
    x0 = y0 = 5
    for color, off in (((0, 0, 0), 1), ((255, 255, 0), 0)):
        draw.line([(x0 + off, y0 + off), (x0 + arm + off, y0 + off)], fill=color, width=2)
        draw.line([(x0 + arm - 4 + off, y0 - 3 + off), (x0 + arm + off, y0 + off), (x0 + arm - 4 + off, y0 + 3 + off)],
                  fill=color, width=2)
        draw.line([(x0 + off, y0 + off), (x0 + off, y0 + arm + off)], fill=color, width=2)
        draw.line([(x0 - 3 + off, y0 + arm - 4 + off), (x0 + off, y0 + arm + off), (x0 + 3 + off, y0 + arm - 4 + off)],
                  fill=color, width=2)
        draw.text((x0 + arm + 4 + off, y0 - 7 + off), names[0], font=font, fill=color)
        draw.text((x0 - 3 + off, y0 + arm + 2 + off), names[1], font=font, fill=color)
    return np.asarray(canvas), {"length": length, "unit": unit, "pixels": pixels, "label": label}


def _text(draw: Any, xy: tuple[int, int], text: str, font: Any, fill: tuple[int, int, int]) -> None:
    """Text, with µ drawn as a u with a descender (the default font has no µ)."""
    x, y = xy
    for i, part in enumerate(text.split("µ")):
        if i:
            draw.text((x, y), "u", font=font, fill=fill)
            left, top, right, bottom = draw.textbbox((x, y), "u", font=font)
            draw.line([(left, top), (left, bottom + 3)], fill=fill, width=1)
            x = right
        draw.text((x, y), part, font=font, fill=fill)
        x += int(draw.textlength(part, font=font))


# --------------------------------------------------------------------------- seam crops


def _crossing_object(p: np.ndarray, q: np.ndarray) -> tuple[int, int, np.ndarray] | None:
    """An object that crosses between two adjacent planes ``p`` and ``q``:
    one that breaks there (different ids on the two sides) if any, else the
    one that continues over the largest area.  ``(id before, id after,
    centre in plane coordinates)``, or None when nothing crosses."""
    both = (p > 0) & (q > 0)
    if not both.any():
        return None
    for mask in (both & (p != q), both & (p == q)):
        if mask.any():
            ids, counts = np.unique(p[mask], return_counts=True)
            pick = int(ids[np.argmax(counts)])
            where = mask & (p == pick)
            pairs, n = np.unique(q[where], return_counts=True)
            after = int(pairs[np.argmax(n)])
            centre = np.round(np.mean(np.nonzero(where & (q == after)), axis=1)).astype(int)
            return pick, after, centre
    return None


def seam_crops(plan: Plan, source: Any, labels: Any, out_dir: Path, faces: Sequence[dict], half: int) -> list[dict]:
    """Full-resolution crops across seams (seam in red), each centred on an
    object that crosses the seam — one that breaks there if any — in the
    plane through that object's centre; the caption names the plane."""
    made = []
    for face in faces:
        a, b, axis = face["block"], face["neighbour"], plan.axes.index(face["axis"])
        core = plan.grid.core(a)
        seam = core[axis].stop
        planes = []
        for pos in (seam - 1, seam):
            region = list(core)
            region[axis] = slice(pos, pos + 1)
            planes.append(np.take(np.asarray(labels[tuple(region)]), 0, axis=axis))
        found = _crossing_object(*planes)
        if found is None:
            continue
        before, after, centre_face = found
        rest = [ax for ax in range(plan.ndim) if ax != axis]
        centre = {ax: core[ax].start + int(c) for ax, c in zip(rest, centre_face)}
        other = max(rest, key=lambda ax: plan.shape[ax])
        region = []
        for ax in range(plan.ndim):
            if ax == axis:
                region.append(slice(max(seam - half, 0), min(seam + half, plan.shape[ax])))
            elif ax == other:
                lo = min(max(centre[ax] - half, 0), max(plan.shape[ax] - 2 * half, 0))
                region.append(slice(lo, min(lo + 2 * half, plan.shape[ax])))
            else:
                region.append(slice(centre[ax], centre[ax] + 1))
        region_t = tuple(region)
        lab = np.squeeze(labels[region_t])
        img = None
        if source is not None:
            img = source.read(region_t)
            img = np.squeeze(img[0] if img.ndim > plan.ndim else img).astype(np.float32)
        if lab.ndim != 2:
            continue
        shown = sorted((axis, other))
        seam_axis_2d = shown.index(axis)
        lines = [(seam_axis_2d, seam - region_t[axis].start)]
        scale = _display_scale(plan, shown, lab.shape, 384)
        rgb, bar = annotate(render(img, lab, lines, scale), plan, shown, [1 / s for s in scale])
        name = f"seam-{len(made) + 1}.png"
        write_png(out_dir / name, rgb)
        names = plan.axes
        plane = [f"{names[ax]} = {centre[ax]}" for ax in range(plan.ndim) if ax not in shown]
        view = " x ".join(f"{names[ax]} {region_t[ax].start}-{region_t[ax].stop - 1}" for ax in shown)
        crossing = (f"object {before} continues across it" if before == after else
                    f"object {before} breaks there (id {after} on the other side)")
        caption = (f"seam between blocks {a} and {b} at {names[axis]} = {seam} (red line)"
                   + (f", plane {plane[0]}" if plane else "") + f", showing {view}; {crossing}; "
                   f"this face: {face['objects']} objects, {face['breaks']} breaks; scale bar {bar['label']}")
        made.append({"file": name, "caption": caption, "axes": [names[ax] for ax in shown], "scale_bar": bar,
                     "region": [[s.start, s.stop] for s in region_t], "seam": {"axis": names[axis], "at": seam},
                     "object": before, "object_after": after})
    return made


# --------------------------------------------------------------------------- the remedy of a flagged seam QC


def seam_remedy(plan: Plan, qc: dict, extents: np.ndarray) -> str | None:
    """What to change when the seam QC is flagged, with numbers.

    ``extents``: ``(objects, ndim)`` extents of the objects' bounding boxes
    (the regions table), from which one object diameter per axis is taken
    (the median)."""
    if not qc.get("flagged"):
        return None
    if plan.rule == "none":
        return ("--rule none does not join objects across blocks: use --rule match (instance segmenters) or "
                "--rule exact (threshold-like segmenters)")
    split = plan.grid.split_axes()
    if len(extents):
        diameter = [int(math.ceil(float(np.median(extents[:, a])))) for a in range(plan.ndim)]
        short = [a for a in split if plan.halo[a] < diameter[a]]
        if short:
            wanted = [max(h, d) if a in split else h for a, (h, d) in enumerate(zip(plan.halo, diameter))]
            return (f"halo {_fmt(plan.halo)} is below one object diameter (~{_fmt(diameter)} px along "
                    f"{plan.axes}, the median extent of the {len(extents)} objects in the regions table): "
                    f"try --halo {_fmt(wanted, ',')}")
    if plan.rule == "exact":
        return ("the exact rule joins objects only where they share voxels in the overlap, which a segmenter "
                "whose objects change with the block's context does not guarantee: try --rule match")
    doubled = [2 * h for h in plan.halo]
    return (f"objects overlap too little across the seams to be matched at --min-iou {plan.min_iou:g}: try "
            f"--min-iou {plan.min_iou / 2:g} or a larger halo (--halo {_fmt(doubled, ',')})")


def _fmt(values: Sequence[int], sep: str = ", ") -> str:
    values = [int(v) for v in values]
    if len(set(values)) == 1:
        return str(values[0])
    return sep.join(map(str, values)) if sep == "," else "(" + sep.join(map(str, values)) + ")"
