"""``--rule flows`` against ``--rule match``: object F1 against whole-image Cellpose.

For the installed cellpose (3.x or 4.x; run the script once with each
interpreter) and its small test model (``tests/support/tiny_cellpose.py``,
objects 14-22 px across, ``diameter=18`` as in the tests; nothing is trained
or downloaded: the model must be cached), on synthetic images of touching
cells made by the tests' generator (``tiny.synthetic_blobs``, ``fill=0.45,
touching=0.6``, x1000 as uint16, as ``tests/test_flows_run.py``), 2-D and 3-D,
a few seeds:

* the reference is the adapter's whole-image segmentation
  (``CellposeSegmenter`` on the whole array, network + dynamics) with the same
  model, diameter and the run's global normalisation (``lowhigh`` from the
  run's summary): the oracle of tests/test_flows_run.py and tests/test_cellpose.py;
* ``pystitch.run`` with ``--rule match`` (halo one diameter) and with
  ``--rule flows`` at blocks of k diameters per axis, cut to the image
  (2-D: k = 4, 6, 8 on 200 x 200; 3-D: k = 4, 5 on 32 x 96 x 96, so the
  seams are in y and x only: the 3-D network costs too much on a CPU for a
  volume with z seams at these block sizes);
* per run: object F1 at IoU 0.5 against the reference (one-to-one matches at
  IoU > 0.5 from a contingency table of label pairs), whether the labels are
  the same partition as the reference (same foreground, a one-to-one map of
  ids), whether they are equal including values, the number of objects and
  the wall time of the run;
* grid independence: for each rule, whether the labels of every pair of block
  shapes are the same partition.

Threads: torch and the run are held to one thread / one worker (the machine
is shared).

Usage::

    python benchmarks/flows_vs_match.py --out benchmarks/results/flows-vs-match-DATE-cpN.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import importlib.util
import itertools
import json
import logging
import os
import pathlib
import platform
import sys
import tempfile
import time
import warnings

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
DIAMETER = 18.0


def _tiny():
    spec = importlib.util.spec_from_file_location("tiny_cellpose", REPO / "tests" / "support" / "tiny_cellpose.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["tiny_cellpose"] = module
    spec.loader.exec_module(module)
    return module


def cached_model(tiny) -> pathlib.Path:
    """The tiny model's path, refusing to train it (this script must not)."""
    import dataclasses

    major = tiny.cellpose_major()
    params = tiny.TrainingParams().resolved(major)
    path = tiny.resolve_cache_dir(None) / f"tiny-cp{major}-{tiny.cache_key(dataclasses.replace(params), major)}.pth"
    if not path.exists():
        raise SystemExit(f"Expected the tiny cellpose {major} model cached at {path}. It is not: "
                         "train it with tests/support/tiny_cellpose.py first.")
    return path


def image(tiny, shape, seed) -> np.ndarray:
    return (tiny.synthetic_blobs(shape, seed=seed, fill=0.45, touching=0.6)[0] * 1000).astype(np.uint16)


# ---------------------------------------------------------------- comparison


def contingency(a: np.ndarray, b: np.ndarray):
    """Ids of a and b, and the overlap counts of every pair of label ids (background included)."""
    a_ids, a_inv = np.unique(a.ravel(), return_inverse=True)
    b_ids, b_inv = np.unique(b.ravel(), return_inverse=True)
    pair, counts = np.unique(a_inv.astype(np.int64) * len(b_ids) + b_inv, return_counts=True)
    ai, bi = np.divmod(pair, len(b_ids))
    return a_ids, b_ids, a_inv, b_inv, ai, bi, counts


def object_f1(reference: np.ndarray, result: np.ndarray, threshold: float = 0.5) -> dict:
    """One-to-one matches at IoU > threshold (unique for threshold >= 0.5)."""
    a_ids, b_ids, a_inv, b_inv, ai, bi, inter = contingency(reference, result)
    a_size = np.bincount(a_inv, minlength=len(a_ids))
    b_size = np.bincount(b_inv, minlength=len(b_ids))
    keep = (a_ids[ai] != 0) & (b_ids[bi] != 0)
    ai, bi, inter = ai[keep], bi[keep], inter[keep]
    iou = inter / (a_size[ai] + b_size[bi] - inter)
    n_ref, n_res = int(np.count_nonzero(a_ids)), int(np.count_nonzero(b_ids))
    # IoU > 0.5 pairs are one-to-one by construction: each object has at most one partner above 0.5
    tp = int(np.count_nonzero(iou > threshold))
    fp, fn = n_res - tp, n_ref - tp
    return {"f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0, "tp": tp, "fp": fp, "fn": fn}


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Same foreground and a one-to-one map between the ids (values may differ)."""
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    fg = a > 0
    pairs = np.unique(np.stack([a[fg].astype(np.int64), b[fg].astype(np.int64)]), axis=1)
    return pairs.shape[1] == len(np.unique(a[fg])) == len(np.unique(b[fg]))


# ---------------------------------------------------------------- runs


def run_case(tiny, model, img, name, blocks_d, work) -> dict:
    import pystitch
    import zarr
    from pystitch.backends.cellpose import CellposeSegmenter

    path = str(work / f"{name}.zarr")
    zarr.save_array(path, img, zarr_format=3)
    d = int(DIAMETER)
    results = {"image": name, "shape": list(img.shape), "ndim": img.ndim, "runs": []}
    labels = {}
    lowhigh = None
    for rule in ("match", "flows"):
        for k in blocks_d:
            block = tuple(min(k * d, s) for s in img.shape)
            kw = dict(backend="cellpose", pretrained_model=str(model), diameter=DIAMETER, rule=rule, progress=False,
                      pictures=False, device="cpu", workers=1, block_shape=block)
            if rule == "match":
                kw["halo"] = d   # one diameter per side
            out = work / f"{name}-{rule}-{k}.zarr"
            t0 = time.perf_counter()
            summary = pystitch.run(path, out, **kw)
            seconds = time.perf_counter() - t0
            node = zarr.open(store=str(out), mode="r")
            lab = (node if isinstance(node, zarr.Array) else node["0"])[:]
            labels[(rule, k)] = lab
            if lowhigh is None:
                lowhigh = summary["backend"]["lowhigh"]
            elif summary["backend"]["lowhigh"] != lowhigh:
                raise RuntimeError(f"Expected one normalisation for every run. Got {summary['backend']['lowhigh']} "
                                   f"and {lowhigh} instead.")
            results["runs"].append({"rule": rule, "block_diameters": k, "block_shape": list(block),
                                    "halo": summary.get("halo", kw.get("halo")), "objects": int(summary["objects"]),
                                    "seconds": round(seconds, 2)})
            print(f"  {name} {rule:5s} block {k}d {block}: {summary['objects']} objects, {seconds:.1f} s", flush=True)
    t0 = time.perf_counter()
    whole = CellposeSegmenter(pretrained_model=str(model), diameter=DIAMETER, do_3D=img.ndim == 3, lowhigh=lowhigh,
                              device="cpu")(img)
    results["whole_image"] = {"objects": int(len(np.unique(whole)) - 1), "seconds": round(time.perf_counter() - t0, 2),
                              "lowhigh": lowhigh}
    for r in results["runs"]:
        lab = labels[(r["rule"], r["block_diameters"])]
        r.update(object_f1(whole, lab))
        r["same_partition_as_whole"] = same_partition(whole, lab)
        r["equal_to_whole"] = bool(np.array_equal(whole, lab))
    results["grid_independent"] = {}
    for rule in ("match", "flows"):
        pairs = {f"{a}d-vs-{b}d": same_partition(labels[(rule, a)], labels[(rule, b)])
                 for a, b in itertools.combinations(blocks_d, 2)}
        results["grid_independent"][rule] = {"pairs": pairs, "all": all(pairs.values())}
    return results


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# --rule flows vs --rule match against whole-image Cellpose ({report['date']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch threads {report['settings']['torch_threads']}, "
             f"{m['platform']}; python {m['python']}; cellpose {report['versions']['cellpose']}, "
             f"torch {report['versions']['torch']}, numpy {report['versions']['numpy']}; "
             f"pystitch {report['versions']['pystitch']} (commit {report['versions']['commit']}).", "",
             f"Model: the tiny test model (`{report['settings']['model']}`), diameter {DIAMETER:g}; "
             "reference: the adapter's whole-image segmentation with the run's global normalisation. "
             "Images: `tiny.synthetic_blobs(shape, seed, fill=0.45, touching=0.6)` x1000 as uint16. "
             "Match: halo one diameter (18 px). Blocks: k diameters per axis, cut to the image. "
             "F1: object F1 at IoU 0.5; `partition`: same partition as the whole image; `equal`: values too.", "",
             "| image | shape | objects (whole) | blocks | match F1 | flows F1 | match partition | flows partition "
             "| flows equal | match s | flows s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for case in report["images"]:
        runs = {(r["rule"], r["block_diameters"]): r for r in case["runs"]}
        for k in sorted({r["block_diameters"] for r in case["runs"]}):
            mt, fl = runs[("match", k)], runs[("flows", k)]
            lines.append(f"| {case['image']} | {'x'.join(map(str, case['shape']))} | {case['whole_image']['objects']} "
                         f"| {k}d ({'x'.join(map(str, fl['block_shape']))}) | {mt['f1']:.3f} | {fl['f1']:.3f} "
                         f"| {'yes' if mt['same_partition_as_whole'] else 'no'} "
                         f"| {'yes' if fl['same_partition_as_whole'] else 'no'} "
                         f"| {'yes' if fl['equal_to_whole'] else 'no'} | {mt['seconds']:.1f} | {fl['seconds']:.1f} |")
    lines += ["", "Grid independence (labels of every pair of block shapes the same partition):", "",
              "| image | match | flows |", "|---|---|---|"]
    for case in report["images"]:
        g = case["grid_independent"]
        fmt = lambda r: ("yes" if g[r]["all"] else "no") + " (" + ", ".join(
            f"{p}: {'yes' if v else 'no'}" for p, v in g[r]["pairs"].items()) + ")"
        lines.append(f"| {case['image']} | {fmt('match')} | {fmt('flows')} |")
    lines += ["", f"Total time {report['total_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def _cpu() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, help="JSON file (a .md beside it)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--blocks", type=int, nargs="+", default=[4, 6, 8], help="2-D block sizes in diameters")
    parser.add_argument("--blocks3d", type=int, nargs="+", default=[4, 5],
                        help="3-D block sizes in diameters (the 3-D network costs ~10x per voxel on a CPU)")
    parser.add_argument("--shape2d", type=int, nargs=2, default=[200, 200])
    parser.add_argument("--shape3d", type=int, nargs=3, default=[32, 96, 96])
    parser.add_argument("--seeds2d", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--seeds3d", type=int, nargs="*", default=[4])
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    tiny = _tiny()
    model = cached_model(tiny)
    import cellpose
    import subprocess

    import pystitch

    cp_version = getattr(cellpose, "version", None) or importlib.metadata.version("cellpose")
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    cases = [((tuple(args.shape2d), s)) for s in args.seeds2d] + [((tuple(args.shape3d), s)) for s in args.seeds3d]
    t0 = time.perf_counter()
    images = []
    with tempfile.TemporaryDirectory(prefix="flows-vs-match-") as tmp, tiny.model_loading_context():
        for shape, seed in cases:
            name = f"{len(shape)}d-seed{seed}"
            work = pathlib.Path(tmp) / name
            work.mkdir()
            blocks = args.blocks if len(shape) == 2 else args.blocks3d
            images.append(run_case(tiny, model, image(tiny, shape, seed), name, blocks, work))
    report = {
        "benchmark": "flows_vs_match",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "versions": {"cellpose": cp_version, "torch": torch.__version__, "numpy": np.__version__,
                     "pystitch": getattr(pystitch, "__version__", "?"), "commit": commit},
        "settings": {"model": model.name, "diameter": DIAMETER, "torch_threads": args.threads, "workers": 1,
                     "device": "cpu", "block_diameters_2d": args.blocks,
                     "block_diameters_3d": args.blocks3d, "match_halo_px": int(DIAMETER),
                     "normalize": "global (the run's lowhigh)", "iou_threshold": 0.5,
                     "images": "tiny.synthetic_blobs(shape, seed=seed, fill=0.45, touching=0.6) * 1000 as uint16"},
        "images": images,
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
