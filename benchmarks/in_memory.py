"""In-memory inputs of the Python API: what reading a numpy array costs.

    python benchmarks/in_memory.py [--side 256]

For a numpy volume (seeded blobs, uint16) and the threshold backend, three
runs of ``pystitch.run`` with the same settings: from a zarr copy on disk
(the path route, 2 workers), from the array with 1 worker (blocks read
directly from memory) and from the array with 2 workers (the array is first
copied block by block into ``<work dir>/input.zarr``, which the workers
read).  Reported: wall time of each run, the copy's time, and the
fingerprint's (SHA-256 of the bytes).  Results go to
benchmarks/results/in-memory-<date>.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=256)
    args = ap.parse_args()
    import zarr

    import pystitch
    from pystitch.example import blobs
    from pystitch.storage.memory import fingerprint

    logging.basicConfig(level=logging.WARNING)
    shape = (args.side // 2, args.side, args.side)
    image = blobs(shape, seed=1, sigma=3.0)
    kw = dict(block_shape=(64, 128, 128), halo=2, threshold=500, pictures=False, progress=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "img.zarr")
        zarr.create_array(path, shape=shape, chunks=(64, 128, 128), dtype=image.dtype)[:] = image
        t = time.perf_counter()
        fp = fingerprint(image)
        t_fp = time.perf_counter() - t
        for name, given, workers in (("path, 2 workers", path, 2), ("numpy, 1 worker", image, 1),
                                     ("numpy, 2 workers (copied)", image, 2)):
            t = time.perf_counter()
            s = pystitch.run(given, Path(tmp) / f"out{len(rows)}.zarr", workers=workers, **kw)
            total = time.perf_counter() - t
            rows.append((name, total, s["timings_seconds"].get("stage_input"), s["timings_seconds"]["segment"]))
            print(rows[-1], flush=True)
    nbytes = image.nbytes
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"# In-memory inputs — {dt.date.today()}", "",
             f"numpy {shape} {image.dtype} ({nbytes / 2 ** 20:.0f} MiB), blocks 64x128x128, halo 2, threshold "
             f"backend; {os.cpu_count()} CPUs, load average {load:.1f}. Fingerprint (SHA-256 of the bytes): {t_fp:.2f} s "
             f"({nbytes / t_fp / 1e9:.2f} GB/s), {fp[:24]}...", "",
             "| input | wall time s | copy to input.zarr s | segment s |", "|---|---|---|---|"]
    for name, total, stage, seg in rows:
        lines.append(f"| {name} | {total:.2f} | {'' if stage is None else f'{stage:.2f}'} | {seg:.2f} |")
    out = HERE / "results" / f"in-memory-{dt.date.today()}.md"
    out.write_text("\n".join(lines) + "\n")
    print(out)


if __name__ == "__main__":
    main()
