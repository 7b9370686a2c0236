"""What one face-pairs task pays to read the manifests of a large image.

A workflow gathers every block's manifest into one JSON Lines file
(GATHER_MANIFESTS), and each face-pairs task of a batch reads it.  This
measures, each in a fresh process, the time and peak memory (max RSS) of
reading all manifests against reading only those of one batch and its
forward neighbours (``read_manifests(blocks=...)``, what face-pairs does),
for a manifests file of N blocks: real manifest lines of a segmented image,
renumbered into a plan of N blocks.

    python benchmarks/manifests_read.py --blocks 100000 [--batch 64] [--repeat 3]

Writes ``benchmarks/results/manifests-read-<date>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from pystitch.manifests import read_manifests
from pystitch.plan import Plan
plan = Plan.load(sys.argv[1])
imported = time.perf_counter()
if sys.argv[3] == "all":
    blocks = None
else:
    batch = range(int(sys.argv[3]))
    blocks = set(batch) | {nb for a in batch for nb, _ in plan.grid.neighbours(a, forward_only=True)}
found = read_manifests(plan, sys.argv[2], blocks=blocks)
print(json.dumps({"seconds": time.perf_counter() - imported, "manifests": len(found),
                  "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def child(plan: Path, jsonl: Path, which: str) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, str(plan), str(jsonl), which],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=100_000, help="blocks of the plan (about)")
    ap.add_argument("--batch", type=int, default=64, help="blocks of one face-pairs task")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import numpy as np
    import zarr

    import pystitch
    from pystitch.example import blobs
    from pystitch.manifests import read_manifests

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        image = tmp / "img.zarr"
        data = blobs((16, 64, 64), seed=1)
        zarr.create_array(store=str(image), shape=data.shape, dtype=data.dtype, chunks=(8, 16, 16))[...] = data
        small = pystitch.plan_blocks(str(image), tmp / "small.zarr", block_shape=(8, 16, 16), halo=1,
                                     work_dir=tmp / "small_work", backend_options={"threshold": 500})
        pystitch.segment_blocks(small, "all")
        docs = [d for _, d in sorted(read_manifests(small).items())]
        # the same settings on a grid of about N blocks (the manifests only need its hash and block range)
        side = round(args.blocks ** (1 / 3))
        big = dataclasses.replace(small, shape=(side * 8, side * 16, side * 16), empty_blocks=(),
                                  work_dir=str(tmp / "big_work"))
        plan_path = big.save(tmp / "plan.json")
        jsonl = tmp / "manifests.jsonl"
        with open(jsonl, "w") as fh:
            for b in range(big.n_blocks):
                doc = dict(docs[b % len(docs)], block=b, plan_hash=big.hash)
                fh.write(json.dumps(doc, sort_keys=True) + "\n")
        rows = {}
        for which in ("all", str(args.batch)):
            runs = [child(plan_path, jsonl, which) for _ in range(args.repeat)]
            rows[which] = {"seconds": statistics.median(r["seconds"] for r in runs),
                           "max_rss_mib": statistics.median(r["max_rss_mib"] for r in runs),
                           "manifests": runs[0]["manifests"]}
        size_mib = jsonl.stat().st_size / 2**20
        n_blocks = big.n_blocks

    today = dt.date.today().isoformat()
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "python": platform.python_version(), "pystitch": pystitch.__version__, "numpy": np.__version__}
    result = {"date": today, "machine": machine, "blocks": n_blocks, "batch": args.batch,
              "manifests_file_mib": round(size_mib, 1), "repeat": args.repeat, "rows": rows}
    out = HERE / "results" / f"manifests-read-{today}"
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Reading the manifests of {n_blocks} blocks in one face-pairs task — {today}", "",
             f"Machine: {json.dumps(machine)}", "",
             f"One JSON Lines file of {n_blocks} manifests ({size_mib:.1f} MiB, lines of a real segmented "
             f"image renumbered); each read in a fresh process, median of {args.repeat}; time after imports, "
             "peak memory of the whole process.", "",
             "| read | manifests kept | seconds | max RSS MiB |", "|---|---|---|---|"]
    for which, row in rows.items():
        what = "every block's (before)" if which == "all" else f"a batch of {which} blocks and their neighbours"
        lines.append(f"| {what} | {row['manifests']} | {row['seconds']:.2f} | {row['max_rss_mib']:.0f} |")
    a, b = rows["all"], rows[str(args.batch)]
    lines += ["", f"Ratio: {a['seconds'] / b['seconds']:.1f}x the time, "
                  f"{a['max_rss_mib'] / b['max_rss_mib']:.1f}x the memory."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
