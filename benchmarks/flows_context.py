"""How much context the Cellpose network needs: the predict halo of the flows rule.

Three measurements, with the installed cellpose and the small test model
(``tests/support/tiny_cellpose.py``; no download):

1. ``influence``: the network on one tile (cellpose 3: 224 px, cellpose 4: 256
   px) of a synthetic image; one pixel at the centre is raised by 1
   (normalised intensity) and the largest change of the outputs is reported
   per Chebyshev distance from it.  With the style vector of CPnet (a global
   average) held fixed, the change is exactly 0 beyond the convolutions'
   receptive field; with it free, every pixel of the tile changes a little.
2. ``context``: the tile's pixels farther than ``r`` from the centre are set to
   0 (what a block edge does: cellpose pads with zeros) and the largest change
   of the outputs in the central 16 x 16 pixels is reported per ``r`` (for
   CPnet also with the style vector held fixed).
3. ``blocks``: cellpose's own tiled inference (``CellposeModel.eval``,
   tiles with 10% overlap, blended with a taper) on a block core grown by a
   halo ``h``, against the same on the whole image; the largest and the 99th
   percentile change of the flows and cell probability over the core, per
   ``h``; and the noise floor of the tiling itself: the whole image against
   the whole image cropped by 8, 40 and 100 px (other tile layouts).

Flows are reported in the network's units (dP; 5 = one pixel per step).

Usage::

    python benchmarks/flows_context.py [--out results.json] [--size 512]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tiny():
    spec = importlib.util.spec_from_file_location("tiny_cellpose", REPO / "tests" / "support" / "tiny_cellpose.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["tiny_cellpose"] = module
    spec.loader.exec_module(module)
    return module


def _model(tiny):
    from cellpose import models

    path = tiny.tiny_model_path()
    with tiny.model_loading_context():
        if tiny.cellpose_major() >= 4:
            return models.CellposeModel(gpu=False, pretrained_model=str(path), use_bfloat16=False)
        return models.CellposeModel(gpu=False, pretrained_model=str(path))


def _normalise(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return ((image - lo) / (hi - lo)).astype(np.float32)


def _tile_input(model, tile: np.ndarray) -> np.ndarray:
    """(1, nchan, L, L): the image in channel 0, zeros elsewhere (grayscale)."""
    nchan = model.net.nchan if hasattr(model.net, "nchan") else 3
    x = np.zeros((1, nchan, *tile.shape), np.float32)
    x[0, 0] = tile
    return x


def _forward(model, x: np.ndarray, style=None) -> np.ndarray:
    import torch
    from cellpose import core

    hook = None
    if style is not None and hasattr(model.net, "make_style"):
        hook = model.net.make_style.register_forward_hook(lambda mod, inp, out: torch.from_numpy(style))
    try:
        y, st = core._forward(model.net, x)
    finally:
        if hook is not None:
            hook.remove()
    return y, st


def _rings(delta: np.ndarray, centre: tuple[int, int], max_d: int) -> list[float]:
    yy, xx = np.indices(delta.shape[-2:])
    d = np.maximum(np.abs(yy - centre[0]), np.abs(xx - centre[1]))
    out = []
    for r in range(max_d + 1):
        ring = d == r
        out.append(float(np.abs(delta[..., ring]).max()) if ring.any() else 0.0)
    return out


def influence(model, image: np.ndarray, bsize: int) -> dict:
    c = bsize // 2
    tile = image[:bsize, :bsize].copy()
    x = _tile_input(model, tile)
    base, style = _forward(model, x)
    bumped = x.copy()
    bumped[0, 0, c, c] += 1.0
    free, _ = _forward(model, bumped)
    fixed, _ = _forward(model, bumped, style=style) if hasattr(model.net, "make_style") else (free, None)
    delta_free = (free - base)[0]
    delta_fixed = (fixed - base)[0]
    result = {"tile": bsize, "centre": c}
    for name, delta in (("style_free", delta_free), ("style_fixed", delta_fixed)):
        rings_flow = _rings(delta[-3:-1], (c, c), c - 1)  # outputs end with dy, dx, cellprob
        rings_prob = _rings(delta[-1:], (c, c), c - 1)
        nonzero = [d for d, v in enumerate(rings_flow) if v > 0]
        result[name] = {
            "max_flow_change_by_distance": rings_flow,
            "max_cellprob_change_by_distance": rings_prob,
            "farthest_nonzero_flow_change": max(nonzero) if nonzero else None,
            "farthest_flow_change_above_1e-3": max([d for d, v in enumerate(rings_flow) if v > 1e-3], default=None),
            "farthest_flow_change_above_1e-2": max([d for d, v in enumerate(rings_flow) if v > 1e-2], default=None),
        }
    return result


def context(model, image: np.ndarray, bsize: int, radii: list[int]) -> dict:
    c = bsize // 2
    tile = image[:bsize, :bsize].copy()
    x = _tile_input(model, tile)
    base, style = _forward(model, x)
    yy, xx = np.indices(tile.shape)
    d = np.maximum(np.abs(yy - c), np.abs(xx - c))
    core = (slice(None), slice(c - 8, c + 8), slice(c - 8, c + 8))
    rows = []
    for r in radii:
        cut = x.copy()
        cut[0, :, d > r] = 0.0
        out, _ = _forward(model, cut)
        delta = (out - base)[0][core]
        row = {"r": r, "max_flow_change": float(np.abs(delta[-3:-1]).max()),
               "max_cellprob_change": float(np.abs(delta[-1]).max())}
        if hasattr(model.net, "make_style"):  # CPnet: the same with the tile's style held fixed
            fixed, _ = _forward(model, cut, style=style)
            delta = (fixed - base)[0][core]
            row["style_fixed_max_flow_change"] = float(np.abs(delta[-3:-1]).max())
            row["style_fixed_max_cellprob_change"] = float(np.abs(delta[-1]).max())
        rows.append(row)
    return {"tile": bsize, "core": 16, "rows": rows}


def _eval(model, image: np.ndarray, lohi: tuple[float, float], diameter: float):
    kwargs = dict(diameter=diameter, normalize={"normalize": True, "lowhigh": [list(lohi)], "norm3D": False,
                                               "invert": False, "percentile": None},
                  compute_masks=False)
    if model.net.__class__.__name__ == "CPnet":  # grayscale as (image, zeros), one (low, high) per channel
        kwargs["channels"] = [0, 0]
        kwargs["normalize"]["lowhigh"] = [list(lohi), [0.0, 1.0]]
    # a copy: cellpose 4.2 normalises a float32 input in place
    _, flows, _ = model.eval(image.copy(), **kwargs)[:3]
    return np.concatenate([flows[1], flows[2][None]], axis=0)


def blocks(model, image: np.ndarray, core: int, halos: list[int], diameter: float) -> dict:
    lohi = (float(np.percentile(image, 1)), float(np.percentile(image, 99)))
    whole = _eval(model, image, lohi, diameter)
    L = image.shape[0]
    c0 = (L - core) // 2 + 5  # off-centre: the core is not aligned with the whole image's tiles
    box = (slice(c0, c0 + core), slice(c0, c0 + core))
    rows = []
    for h in halos:
        lo, hi = max(0, c0 - h), min(L, c0 + core + h)
        out = _eval(model, image[lo:hi, lo:hi], lohi, diameter)
        got = out[:, c0 - lo:c0 - lo + core, c0 - lo:c0 - lo + core]
        ref = whole[(slice(None),) + box]
        delta = np.abs(got - ref)
        rows.append({"halo": h, "max_flow_change": float(delta[:-1].max()),
                     "p99_flow_change": float(np.percentile(delta[:-1], 99)),
                     "max_cellprob_change": float(delta[-1].max()),
                     "p99_cellprob_change": float(np.percentile(delta[-1], 99))})
    floor = []
    for shift in (8, 40, 100):
        shifted = _eval(model, image[shift:, shift:], lohi, diameter)
        got = shifted[:, c0 - shift:c0 - shift + core, c0 - shift:c0 - shift + core]
        delta = np.abs(got - whole[(slice(None),) + box])
        floor.append({"shift": shift, "max_flow_change": float(delta[:-1].max()),
                      "p99_flow_change": float(np.percentile(delta[:-1], 99)),
                      "max_cellprob_change": float(delta[-1].max()),
                      "p99_cellprob_change": float(np.percentile(delta[-1], 99))})
    return {"image": int(L), "core": core, "rows": rows, "tiling_noise_floor": floor}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    tiny = _tiny()
    major = tiny.cellpose_major()
    model = _model(tiny)
    diameter = tiny.TrainingParams().diameter
    image, _ = tiny.synthetic_blobs((args.size, args.size), seed=5)
    lo, hi = np.percentile(image, 1), np.percentile(image, 99)
    bsize = 256 if major >= 4 else 224
    start = time.perf_counter()
    result = {
        "cellpose_major": major,
        "torch": torch.__version__,
        "diameter": diameter,
        "influence": influence(model, _normalise(image, lo, hi), bsize),
        "context": context(model, _normalise(image, lo, hi), bsize, [4, 8, 12, 16, 24, 32, 48, 64, 96]),
        "blocks": blocks(model, image, 96, [0, 8, 16, 24, 32, 48, 64, 96, 128], diameter),
    }
    result["seconds"] = round(time.perf_counter() - start, 1)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
