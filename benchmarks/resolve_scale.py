"""Resolve at scale: time and peak memory of resolve's core (pairs -> lut) on
synthetic pairs, for the object counts of terabyte images.

    python benchmarks/resolve_scale.py [--objects 1e8] [--crossing 0.1] [--seed 0]

``--objects`` provisional ids (objects counted once per block that holds a
piece of them); ``--crossing``: the share of them that cross a seam, each
paired with one id of a neighbouring block (random partners: no locality,
the union-find's worst case).  Resolve's core is :func:`final_lut` (the
compiled union-find and the lut, in chunks as they are written); reading
the pairs files and writing the lut store add I/O on top.  The peak
resident memory of this process is what the resolve task needs.  Results
go to benchmarks/results/resolve-scale-<date>.md (appended).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import resource
import time
from pathlib import Path

import numpy as np

from pystitch.steps.resolve import final_lut

HERE = Path(__file__).resolve().parent


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # kB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=float, default=1e8)
    ap.add_argument("--crossing", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    n = int(args.objects)
    m = int(n * args.crossing)
    rng = np.random.default_rng(args.seed)
    t = time.perf_counter()
    pairs = np.empty((m, 2), dtype=np.uint64)
    pairs[:, 0] = rng.integers(1, n + 1, size=m, dtype=np.uint64)
    pairs[:, 1] = rng.integers(1, n + 1, size=m, dtype=np.uint64)
    made = time.perf_counter() - t
    base = peak_rss_gib()
    t = time.perf_counter()
    pieces, n_final, merges = final_lut(n, pairs)
    total = 0
    for piece in pieces:  # what write_lut consumes, chunk by chunk
        total += len(piece)
    seconds = time.perf_counter() - t
    line = (f"| {n:.0e} | {m:.0e} | {n_final} | {merges} | {seconds:.1f} | {peak_rss_gib():.2f} | {base:.2f} | "
            f"{made:.1f} |")
    print("| objects | pairs | final ids | merges | resolve core (s) | peak RSS (GiB) | RSS with pairs only "
          "(GiB) | making pairs (s) |")
    print(line)
    assert total == n + 1
    if not args.no_save:
        out = HERE / "results" / f"resolve-scale-{dt.date.today().isoformat()}.md"
        if not out.exists():
            out.write_text(f"# Resolve at scale ({platform.machine()}, {platform.python_version()})\n\n"
                           "benchmarks/resolve_scale.py: random pairs between provisional ids, the union-find's "
                           "worst case.\n\n| objects | pairs | final ids | merges | resolve core (s) | peak RSS "
                           "(GiB) | RSS with pairs only (GiB) | making pairs (s) |\n|---|---|---|---|---|---|---|---|\n")
        with out.open("a") as fh:
            fh.write(line + "\n")


if __name__ == "__main__":
    main()
