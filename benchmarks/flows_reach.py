"""How far Cellpose's trajectories reach: the follow halo of the flows rule.

For every foreground voxel, the *reach* is the largest distance, per axis,
between its start voxel and a flow voxel its trajectory reads (the halo its
block needs so that it never leaves the window).  Measured on the flows of the
small test model (``tests/support/tiny_cellpose.py``, objects 14-22 px across)
on synthetic 2-D images and 3-D volumes, with the installed cellpose's
dynamics (``cellprob > 0``, the number of steps ``CellposeModel.eval`` uses
at the model's diameter).  Reported relative to the largest
object diameter of the image (the diameter of a disk/ball of the largest
true object's area/volume), as quantiles and as the fraction of foreground
voxels a halo of 0.25, 0.5, 0.75 and 1 diameter would have to follow again.

Usage::

    python benchmarks/flows_reach.py [--out results.json]
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


def _diameter(labels: np.ndarray) -> float:
    sizes = np.bincount(labels.ravel())[1:]
    biggest = float(sizes.max())
    if labels.ndim == 2:
        return 2 * np.sqrt(biggest / np.pi)
    return 2 * (3 * biggest / (4 * np.pi)) ** (1 / 3)


def measure(dP: np.ndarray, cellprob: np.ndarray, diameter: float, niter: int) -> dict:
    from pystitch.flows.dynamics import installed_dynamics
    from pystitch.flows.follow import follow_points, step_field

    dyn = installed_dynamics()
    shape = cellprob.shape
    foreground = cellprob > 0
    starts = np.stack(np.nonzero(foreground)).astype(np.int64)
    steps = step_field(dP, foreground, dyn, shape, (0,) * len(shape))
    _, _, reach = follow_points(steps, (0,) * len(shape), shape, starts, niter, dyn)
    cheb = reach.max(axis=0)
    return {
        "foreground_voxels": int(starts.shape[1]),
        "niter": int(niter),
        "largest_diameter_px": round(diameter, 2),
        "max_reach_px_per_axis": [int(r) for r in reach.max(axis=1)],
        "reach_over_diameter": {q: round(float(np.quantile(cheb, p)) / diameter, 3)
                                for q, p in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999), ("max", 1.0))},
        "fraction_beyond_halo": {f"{h}d": float((cheb > h * diameter).mean()) for h in (0.25, 0.5, 0.75, 1.0)},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch
    from cellpose import models

    torch.set_num_threads(args.threads)
    tiny = _tiny()
    major = tiny.cellpose_major()
    with tiny.model_loading_context():
        kwargs = {"use_bfloat16": False} if major >= 4 else {}
        model = models.CellposeModel(gpu=False, pretrained_model=str(tiny.tiny_model_path()), **kwargs)
    from pystitch.flows.dynamics import niter_for

    diameter = tiny.TrainingParams().diameter
    rescale = (float(model.net.diam_mean) if major < 4 else 30.0) / diameter
    niter = niter_for(major, rescale)  # what CellposeModel.eval uses at this diameter
    result = {"cellpose_major": major, "cases": []}
    start = time.perf_counter()
    for shape, seed in (((384, 384), 1), ((384, 384), 2), ((40, 128, 128), 3)):
        image, labels = tiny.synthetic_blobs(shape, seed=seed, fill=0.45, touching=0.6)
        extra = {"channels": [0, 0]} if major < 4 else {}
        if len(shape) == 3:
            extra.update(do_3D=True, z_axis=0)
        _, flows, _ = model.eval(image, diameter=diameter, compute_masks=False, **extra)[:3]
        case = measure(np.ascontiguousarray(flows[1], np.float32), np.asarray(flows[2], np.float32),
                       _diameter(labels), niter)
        case["shape"] = list(shape)
        result["cases"].append(case)
    result["seconds"] = round(time.perf_counter() - start, 1)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
