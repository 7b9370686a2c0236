"""Peak memory of the flows rule's dynamics (follow-flows): held in memory vs waiting in files.

``follow-flows`` runs :func:`pystitch.flows.blockwise.masks_blockwise` over
the flow store.  Between its steps it keeps the end point of every foreground
voxel (8 bytes each) and the image's int64 seed labels (8 bytes per voxel).
This script measures, side by side in one run, the two ways to keep them:

* ``memory``: numpy arrays in the process (``masks_blockwise``'s default);
* ``files``: what follow-flows does, the seed labels in a memory-mapped
  ``.npy`` and each block's end points in ``ends-<block>.npy``
  (``staged=``, ``ends=``);
* ``follow-task`` then ``after-tasks``: what the pipeline runs, the
  trajectories of every block as a ``follow-flows --blocks`` task
  (:func:`pystitch.flows.blockwise.follow_blocks`; one block's window at a
  time), then follow-flows taking their end points (seeds, filters, labels).

The flows are synthetic (no network): touching balls, every voxel's flow a
unit vector towards its ball's centre (x5), cell probability +3 inside and -3
outside, written as float32 zarr arrays chunked like the blocks, as the flow
store is.  Each variant runs in a fresh process that samples its
``/proc/self/status`` every 10 ms: peak ``RssAnon`` (the process's own
memory, what no kernel can drop) and peak ``VmRSS`` (also the file pages it
has mapped, which the kernel writes out and drops under pressure).  Both
variants must give the same labels (a hash of the sink's output).

    python benchmarks/flows_follow_memory.py [--shape 128,256,256] [--block 64] [--radius 8] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

CHILD = r"""
import hashlib, json, os, tempfile, threading, time
import numpy as np, zarr
from pystitch.flows.blockwise import EndPointFiles, block_grid, follow_blocks, masks_blockwise
from pystitch.flows.dynamics import installed_dynamics

peaks = {{"RssAnon": 0, "VmRSS": 0}}
stop = threading.Event()
def sample():
    while not stop.is_set():
        with open("/proc/self/status") as fh:
            for line in fh:
                key = line.split(":")[0]
                if key in peaks:
                    peaks[key] = max(peaks[key], int(line.split()[1]) * 1024)
        time.sleep(0.01)

store = zarr.open_group({store!r}, mode="r")
dP, cellprob = store["dP"], store["cellprob"]
shape, block, variant = tuple(cellprob.shape), {block!r}, {variant!r}
digest = hashlib.sha256()
def sink(lo, hi, labels):
    digest.update(np.asarray(lo, np.int64).tobytes() + np.ascontiguousarray(labels, np.uint32).tobytes())
extra = {{}}
scratch = tempfile.mkdtemp(dir={scratch!r})
if variant in ("files", "after-tasks"):
    extra = dict(staged=np.lib.format.open_memmap(os.path.join(scratch, "seedlabels.npy"), mode="w+",
                                                  dtype=np.int64, shape=shape),
                 ends=scratch if variant == "files" else EndPointFiles({ends!r}, "bench"))
thread = threading.Thread(target=sample, daemon=True)
thread.start()
t = time.perf_counter()
if variant == "follow-task":
    done = follow_blocks(dP, cellprob, range(len(block_grid(shape, block))), block_grid(shape, block),
                         EndPointFiles({ends!r}, "bench"), installed_dynamics(), halo=(16,) * len(shape))
    objects, foreground, sha = None, done["foreground"], None
else:
    _, report, _ = masks_blockwise(dP, cellprob, block, installed_dynamics(), halo=(16,) * len(shape), sink=sink,
                                   do_3D=len(shape) == 3, **extra)
    objects, foreground, sha = int(report.n_objects), int(report.n_foreground), digest.hexdigest()
seconds = time.perf_counter() - t
stop.set(); thread.join()
print(json.dumps(dict(variant=variant, seconds=round(seconds, 2), peak_rss_anon=peaks["RssAnon"],
                      peak_vm_rss=peaks["VmRSS"], objects=objects, foreground=foreground, labels_sha256=sha)))
"""


def synthetic_flows(shape: tuple[int, ...], radius: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Touching balls: flows towards each ball's centre, cell probability +-3."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    n = max(1, int(np.prod(shape) / (4.2 * radius ** 3) * 0.5))
    centres = np.zeros(shape, bool)
    centres[tuple(rng.integers(0, shape, size=(n, len(shape))).T)] = True
    dist, idx = ndimage.distance_transform_edt(~centres, return_indices=True)
    inside = dist < radius
    dP = np.empty((len(shape), *shape), np.float32)
    grid = np.indices(shape, sparse=True)
    for a in range(len(shape)):
        dP[a] = 5 * (idx[a] - grid[a]) / np.maximum(dist, 1)
    dP *= inside
    cellprob = np.where(inside, 3.0, -3.0).astype(np.float32)
    return dP, cellprob


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="128,256,256")
    ap.add_argument("--block", default="64")
    ap.add_argument("--radius", type=float, default=8.0)
    ap.add_argument("--out", default=str(HERE / "results" / f"flows-follow-memory-{dt.date.today()}.json"))
    a = ap.parse_args()
    import zarr

    shape = tuple(int(s) for s in a.shape.split(","))
    block = tuple(int(s) for s in a.block.split(","))
    block = block * len(shape) if len(block) == 1 else block
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dP, cellprob = synthetic_flows(shape, a.radius)
        group = zarr.open_group(f"{tmp}/flows.zarr", mode="w")
        group.create_array("dP", data=dP, chunks=(len(shape), *block))
        group.create_array("cellprob", data=cellprob, chunks=block)
        del dP, cellprob
        Path(f"{tmp}/ends").mkdir()
        for variant in ("memory", "files", "follow-task", "after-tasks"):
            code = CHILD.format(store=f"{tmp}/flows.zarr", block=block, variant=variant, scratch=tmp,
                                ends=f"{tmp}/ends")
            out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]))
    if len({r["labels_sha256"] for r in rows if r["labels_sha256"]}) != 1:
        raise SystemExit("the variants gave different labels")
    result = {"date": str(dt.date.today()), "machine": f"{platform.processor() or platform.machine()}, "
              f"{len(__import__('os').sched_getaffinity(0))} cores", "shape": list(shape), "block": list(block),
              "radius": a.radius, "rows": rows}
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
