"""Peak memory of one pipeline task as a function of the block size.

Runs the step CLIs (segment-block, face-pairs, apply-lut) the way the Nextflow
tasks run them, on batches of interior blocks (all their neighbours present)
of a synthetic image, at two block sizes, and reports each step's peak RSS
(``/usr/bin/time -f %M``), the fitted model ``base + bytes_per_voxel x
voxels`` (voxels of one block with its halo) and the measured throughput.
These numbers are behind ``pystitch/resources.py``.

    python benchmarks/task_memory.py [--out benchmarks/results/task_memory.json]

About 4 minutes and 3 GB of disk on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pystitch.example import blobs  # noqa: E402

BIN = Path(sys.executable).parent
HALO = (4, 16, 16)
SIZES = [(32, 128, 128), (64, 256, 256)]
BATCH = 4  # blocks per task: memory must not grow with it


def write_image(path: Path, block: tuple[int, ...]) -> None:
    """An image of 3 x 3 x 3 blocks made of tiles of the example's blobs."""
    shape = tuple(3 * b for b in block)
    tile = blobs(tuple(min(s, t) for s, t in zip(shape, (48, 192, 192))), seed=3)
    reps = [math.ceil(s / t) for s, t in zip(shape, tile.shape)]
    data = np.tile(tile, reps)[tuple(slice(0, s) for s in shape)]
    root = zarr.open_group(store=str(path), mode="w", zarr_format=2)
    arr = root.create_array(name="0", shape=shape, chunks=block, dtype=data.dtype)
    arr[:] = data
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a, "type": "space"} for a in "zyx"],
                                  "datasets": [{"path": "0", "coordinateTransformations": [
                                      {"type": "scale", "scale": [1.0, 1.0, 1.0]}]}]}]


def measured(cmd: list[str], cwd: Path) -> tuple[int, float]:
    """(peak RSS in bytes, seconds) of one command."""
    t0 = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], cwd=cwd, capture_output=True, text=True,
                         env=dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}"))
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{res.stdout}\n{res.stderr}")
    return int(res.stderr.strip().splitlines()[-1]) * 1024, seconds


def grid_id(block: tuple[int, int, int]) -> int:
    z, y, x = block
    return (z * 3 + y) * 3 + x


def measure(block: tuple[int, ...], root: Path) -> dict:
    root.mkdir(parents=True)
    image, work = root / "image.zarr", root / "work"
    write_image(image, block)
    subprocess.run([str(BIN / "plan-blocks"), str(image), str(root / "labels.zarr"), "--block-shape",
                    ",".join(map(str, block)), "--halo", ",".join(map(str, HALO)), "--threshold", "500",
                    "--work-dir", str(work), "--quiet"], check=True, capture_output=True)
    plan = str(work / "plan.json")
    everything = ",".join(str(i) for i in range(27))
    subprocess.run([str(BIN / "segment-block"), plan, "--blocks", everything, "--quiet"], check=True)
    # the batch measured: the centre block and its neighbours of larger id (all interior or on a face)
    batch = [grid_id((1, 1, 1)), grid_id((1, 1, 2)), grid_id((1, 2, 1)), grid_id((2, 1, 1))][:BATCH]
    blocks = ",".join(map(str, batch))
    voxels = math.prod(b + 2 * h for b, h in zip(block, HALO))
    out: dict = {"block": list(block), "halo": list(HALO), "voxels_with_halo": voxels, "batch": batch}
    shutil.rmtree(work / "manifests", ignore_errors=True)
    rss, sec = measured([str(BIN / "segment-block"), plan, "--blocks", blocks, "--skip-existing", "false",
                         "--quiet"], root)
    out["segment-block"] = {"peak_rss": rss, "seconds": sec}
    subprocess.run([str(BIN / "segment-block"), plan, "--blocks", everything, "--skip-existing", "true", "--quiet"],
                   check=True)
    rss1, _ = measured([str(BIN / "segment-block"), plan, "--blocks", str(batch[0]), "--skip-existing", "false",
                        "--quiet"], root)
    out["segment-block"]["peak_rss_one_block"] = rss1
    rss, sec = measured([str(BIN / "face-pairs"), plan, "--blocks", blocks, "--out", str(root / "measured"),
                         "--quiet"], root)
    out["face-pairs"] = {"peak_rss": rss, "seconds": sec}
    subprocess.run([str(BIN / "face-pairs"), plan, "--blocks", everything, "--quiet"], check=True)
    subprocess.run([str(BIN / "resolve"), plan, "--quiet"], check=True)
    rss, sec = measured([str(BIN / "apply-lut"), plan, "--blocks", blocks, "--out", str(root / "measured"),
                         "--quiet"], root)
    out["apply-lut"] = {"peak_rss": rss, "seconds": sec}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "task_memory.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="task-memory-"))
    try:
        runs = [measure(size, tmp / "x".join(map(str, size))) for size in SIZES]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fit = {}
    small, large = runs
    for step in ("segment-block", "face-pairs", "apply-lut"):
        dv = large["voxels_with_halo"] - small["voxels_with_halo"]
        per_voxel = (large[step]["peak_rss"] - small[step]["peak_rss"]) / dv
        base = small[step]["peak_rss"] - per_voxel * small["voxels_with_halo"]
        seconds = large[step]["seconds"] / (len(large["batch"]) * large["voxels_with_halo"])
        fit[step] = {"base_mb": round(base / 2**20, 1), "bytes_per_voxel": round(per_voxel, 2),
                     "seconds_per_megavoxel": round(seconds * 1e6, 3)}
    result = {"backend": "threshold", "dtype": "uint16", "runs": runs, "fit": fit,
              "machine": {"cpus": os.cpu_count()}, "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for step, f in fit.items():
        print(f"{step:14s} base {f['base_mb']:7.1f} MB + {f['bytes_per_voxel']:6.2f} B/voxel, "
              f"{f['seconds_per_megavoxel']:.3f} s/Mvoxel")
    for r in runs:
        print(r["block"], {s: round(r[s]["peak_rss"] / 2**20) for s in ("segment-block", "face-pairs", "apply-lut")},
              "one block:", round(r["segment-block"]["peak_rss_one_block"] / 2**20))


if __name__ == "__main__":
    main()
