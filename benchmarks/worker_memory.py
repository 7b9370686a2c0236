"""Peak memory of one local-runner worker per block size, without Cellpose:
the numbers behind ``--workers auto`` for the threshold and callable
backends (``Backend.task_memory`` in pystitch/backends/base.py).

    python benchmarks/worker_memory.py

Each case runs in a fresh process what a worker of ``pystitch run`` runs for a
plan (segment a batch of blocks with the threshold backend, smoothing on,
then face-pairs and apply-lut of those blocks) with the chunk cache off
(``PYSTITCH_READ_CACHE_MB=0``: the runner adds the cache's size on top), and
reports the peak RSS of that process (VmHWM) before and after the work.  Results go
to benchmarks/results/worker-memory-<date>.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD = r"""
import json, sys
import numpy as np

def hwm():  # peak RSS of this process (VmHWM: unlike ru_maxrss, not inherited across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

import pystitch
from pystitch.runner import _segment_task, _pairs_task, _apply_task
plan = pystitch.Plan.load({plan!r})
ids = plan.work_blocks()
base = hwm()
_segment_task((str(plan.plan_path), ids, {{}}))
_pairs_task((str(plan.plan_path), ids))
pystitch.resolve(plan)
_apply_task((str(plan.plan_path), ids))
peak = hwm()
ext = max(int(np.prod([s.stop - s.start for s in plan.grid.extended(b)])) for b in ids)
print(json.dumps(dict(block=list(plan.block_shape), halo=list(plan.halo), ext_voxels=ext, base_bytes=base,
                      peak_bytes=peak)))
"""

CASES = [(32, 2), (64, 4), (96, 4), (128, 8), (160, 8)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.parse_args()
    from pystitch.example import blobs
    from pystitch.steps.plan_blocks import plan_blocks
    import zarr

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for side, halo in CASES:
            shape = (2 * side,) * 3
            img = Path(tmp) / f"img{side}.zarr"
            data = blobs(shape, seed=1, sigma=3.0)
            zarr.create_array(str(img), shape=shape, chunks=(side,) * 3, dtype=data.dtype)[:] = data
            plan = plan_blocks(str(img), str(Path(tmp) / f"out{side}.zarr"), block_shape=side, halo=halo,
                               backend="threshold", backend_options={"threshold": 500, "sigma": 1.0},
                               skip_empty=False)
            env = dict(os.environ, PYSTITCH_READ_CACHE_MB="0")
            res = subprocess.run([sys.executable, "-c", CHILD.format(plan=str(plan.plan_path))], env=env,
                                 capture_output=True, text=True, check=True)
            row = json.loads(res.stdout.strip().splitlines()[-1])
            print(row, flush=True)
            rows.append(row)
    lines = [f"# Worker memory per block (threshold backend, sigma 1) — {dt.date.today()}", "",
             "Peak RSS of one process segmenting, pairing and relabelling the 8 blocks of a 2x2x2 grid, "
             "chunk cache off.", "",
             "| block | halo | block + halo voxels | base RSS MiB | peak RSS MiB | (peak - base) bytes/voxel |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        grow = (r["peak_bytes"] - r["base_bytes"]) / r["ext_voxels"]
        lines.append(f"| {r['block']} | {r['halo']} | {r['ext_voxels']} | {r['base_bytes'] / 2**20:.0f} | "
                     f"{r['peak_bytes'] / 2**20:.0f} | {grow:.1f} |")
    out = HERE / "results" / f"worker-memory-{dt.date.today()}.md"
    out.write_text("\n".join(lines) + "\n")
    print(out)


if __name__ == "__main__":
    main()
