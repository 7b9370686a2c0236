"""End to end, side by side: pystitch (this tree and, optionally, a baseline
tree) against patchworks and scipy on the whole image, plus the I/O floor,
on threshold + connected components (full connectivity), halo 8, 2 workers,
a zstd-compressed zarr input.  Runs are interleaved and repeated; the table
shows medians.  Per-step times come from each pystitch run's summary.

    python benchmarks/perf.py --sizes 256,512 --repeat 3 [--baseline /path/to/other/checkout]
        [--variant "label:VAR=value"] [--name perf-<date>-what]

``--variant`` adds a run of this tree with environment variables set
(e.g. ``"cache 256:PYSTITCH_READ_CACHE_MB=256"``; several separated by spaces).  Writes
``benchmarks/results/perf-<date>.md`` and ``.json`` (``--name``: another stem).  Each pystitch
output is compared byte for byte (labels and regions.csv) with the first
pystitch run; every tool's labels are compared as a partition with scipy's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zarr
from scipy import ndimage

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
THR = 500


class TreePSS:
    """Peak summed PSS of a process and its descendants, polled every
    ``interval`` seconds from ``/proc/<pid>/smaps_rollup`` (a fast read: a
    short transient peak of one worker is less likely to fall between two
    polls than with psutil's full memory info, which takes tens of ms)."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(pid), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    @staticmethod
    def _pss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith(b"Pss:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _poll(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
            except psutil.Error:
                procs = []
            total = sum(self._pss(p.pid) for p in procs)
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreePSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_child(code: str, pythonpath: str, extra_env: dict | None = None) -> tuple[float, float, str]:
    env = dict(os.environ, PYTHONPATH=pythonpath, OMP_NUM_THREADS="1", **(extra_env or {}))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # modules load from bytecode, as an installed package's do
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            text=True)
    with TreePSS(proc.pid) as mem:
        out, err = proc.communicate(timeout=1800)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(err[-2000:])
    return wall, mem.peak / 2 ** 20, out


def volume(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 3.0)
    objects = field > np.quantile(field[::4, ::4] if field.ndim == 2 else field[::4, ::4, ::4], 0.8)
    image = 100 + 900 * objects.astype(np.uint16) + rng.integers(0, 60, size=shape, dtype=np.uint16)
    return image.astype(np.uint16)


def write_input(path: Path, image: np.ndarray, chunks: tuple[int, ...]) -> str:
    from zarr.codecs import ZstdCodec

    arr = zarr.create_array(store=str(path), shape=image.shape, chunks=chunks, dtype=image.dtype, overwrite=True,
                            compressors=[ZstdCodec(level=3)])
    arr[:] = image
    return str(path)


PYSTITCH = """
import json, pystitch
s = pystitch.run({src!r}, {out!r} + '/labels.zarr', block_shape={block}, halo=8, threshold={thr}, workers=2,
                 connectivity={conn}, progress=False, pictures=False, output_format='zarr',
                 report_dir={out!r} + '/report')
print(json.dumps(s.get('timings_seconds', {{}})))
"""

PEERS = {
    "patchworks": """
import numpy as np, dask.array as da, zarr
from scipy import ndimage
from patchworks import tile_process
st = ndimage.generate_binary_structure({ndim}, {ndim})
def seg(tile):
    return ndimage.label(tile > {thr}, structure=st)[0].astype(np.uint32)
img = da.from_zarr(zarr.open_array({src!r}, mode='r'))
tile_process(img, seg, tile_shape=({block},) * img.ndim, overlap=8, channel=None, max_workers=2, progress=False,
             write_to={out!r} + '/labels.zarr', pyramid_levels=1, stitch='touch', sequential_labels=True)
""",
    "scipy whole image": """
import numpy as np, zarr
from scipy import ndimage
img = zarr.open_array({src!r}, mode='r')[:]
lab = ndimage.label(img > {thr}, structure=ndimage.generate_binary_structure(img.ndim, img.ndim))[0]
zarr.save_array({out!r} + '/labels.zarr', lab.astype(np.uint32))
""",
    "I/O floor": """
import numpy as np, zarr
src = zarr.open_array({src!r}, mode='r')
out = zarr.create_array(store={out!r} + '/labels.zarr', shape=src.shape, chunks=src.chunks, dtype=np.uint32)
import itertools
for idx in itertools.product(*[range(0, n, c) for n, c in zip(src.shape, src.chunks)]):
    sl = tuple(slice(i, i + c) for i, c in zip(idx, src.chunks))
    out[sl] = (src[sl] > {thr}).astype(np.uint32)
""",
}


def read_labels(out: Path) -> np.ndarray:
    node = zarr.open(str(out / "labels.zarr"), mode="r")
    while isinstance(node, zarr.Group):
        names = sorted(k for k, _ in node.members())
        node = node["labels"] if "labels" in names else node[names[0]]
    return node[:]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    fg = a > 0
    if not np.array_equal(fg, b > 0):
        return False
    pairs = np.unique(np.stack([a[fg].astype(np.uint64), b[fg].astype(np.uint64)]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256,512", help="3-D sides; a value like 4096x4096 is a 2-D image")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline", help="another pystitch checkout to run side by side (its kernels built)")
    ap.add_argument("--peers", default="patchworks,scipy whole image,I/O floor")
    ap.add_argument("--variant", action="append", default=[],
                    help='"label:VAR=value [VAR2=value2 ...]": also run this tree with these in its environment')
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--name", help="file name stem of the results (default perf-<date>)")
    args = ap.parse_args()
    args.load_at_start = os.getloadavg()
    trees: dict[str, tuple[str, dict]] = {"pystitch": (str(ROOT), {})}
    for variant in args.variant:
        label, _, assignments = variant.partition(":")
        env = dict(a.partition("=")[::2] for a in assignments.split())
        trees[f"pystitch ({label})"] = (str(ROOT), env)
    if args.baseline:
        trees["pystitch (baseline)"] = (str(Path(args.baseline).resolve()), {})
    peers = [p for p in args.peers.split(",") if p]
    for tree in {path for path, _ in trees.values()}:
        # an installed pystitch (a wheel, the images) has its bytecode compiled at install time;
        # a checkout run with PYTHONDONTWRITEBYTECODE would compile every module in every process
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(tree) / "pystitch")], check=True)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="pystitch-perf-"))
    try:
        for size in args.sizes.split(","):
            shape = tuple(int(v) for v in size.split("x")) if "x" in size else (int(size),) * 3
            block = 128 if len(shape) == 3 else 512
            image = volume(shape, seed=4)
            src = write_input(tmp / "input.zarr", image, (block,) * len(shape))
            ref = ndimage.label(image > THR, structure=ndimage.generate_binary_structure(len(shape), len(shape)))[0]
            del image
            first_bytes = None
            results: dict[str, list] = {}
            for rep in range(args.repeat):
                for tool in list(trees) + peers:
                    out = tmp / "out"
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir()
                    if tool in trees:
                        code = PYSTITCH.format(src=src, out=str(out), block=block, thr=THR, conn=len(shape))
                        wall, pss, stdout = run_child(code, *trees[tool])
                        timings = json.loads(stdout.strip().splitlines()[-1])
                        labels = read_labels(out)
                        csv = (out / "report" / "regions.csv").read_bytes()
                        if first_bytes is None:
                            first_bytes = (labels, csv)
                        identical = bool(np.array_equal(labels, first_bytes[0]) and labels.dtype == first_bytes[0].dtype
                                         and csv == first_bytes[1])
                    else:
                        code = PEERS[tool].format(src=src, out=str(out), block=block, thr=THR, ndim=len(shape))
                        wall, pss, _ = run_child(code, "")
                        timings, identical = {}, None
                        labels = read_labels(out)
                    exact = None if tool == "I/O floor" else bool(same_partition(labels, ref))
                    results.setdefault(tool, []).append({"wall_s": wall, "peak_pss_mib": pss, "timings": timings,
                                                         "same_partition_as_scipy": exact,
                                                         "byte_identical_to_first_pystitch": identical})
                    print(f"{size} {tool} rep {rep}: {wall:.2f} s, {pss:.0f} MiB PSS, exact={exact} "
                          f"identical={identical} {timings}", flush=True)
            floor = statistics.median(r["wall_s"] for r in results["I/O floor"]) if "I/O floor" in results else None
            for tool, runs in results.items():
                med = statistics.median(r["wall_s"] for r in runs)
                steps = {}
                for r in runs:
                    for k, v in r["timings"].items():
                        steps.setdefault(k, []).append(v)
                rows.append({"size": size, "tool": tool, "median_wall_s": med, "runs_s": [r["wall_s"] for r in runs],
                             "median_peak_pss_mib": statistics.median(r["peak_pss_mib"] for r in runs),
                             "over_io_floor": med / floor if floor else None,
                             "steps_median_s": {k: statistics.median(v) for k, v in steps.items()},
                             "exact": all(r["same_partition_as_scipy"] for r in runs)
                             if runs[0]["same_partition_as_scipy"] is not None else None,
                             "byte_identical": all(r["byte_identical_to_first_pystitch"] for r in runs)
                             if runs[0]["byte_identical_to_first_pystitch"] is not None else None})
            write(rows, Path(args.out), args)  # after every size: an interrupted run keeps what it measured
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write(rows: list[dict], out: Path, args) -> None:
    import psutil

    out.mkdir(parents=True, exist_ok=True)
    stem = out / (args.name or f"perf-{dt.date.today().isoformat()}")
    info = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
            "load_average": os.getloadavg(), "load_average_at_start": args.load_at_start,
            "python": platform.python_version(), "variants": args.variant, "baseline": args.baseline,
            "memory_gib": round(psutil.virtual_memory().total / 2 ** 30, 1), "repeat": args.repeat}
    stem.with_suffix(".json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    lines = [f"# End to end, side by side — {info['date']}", "",
             f"{info['cpus']} CPUs (shared; load average {args.load_at_start[0]:.1f} at the start, "
             f"{info['load_average'][0]:.1f} at the end), "
             f"medians of {args.repeat} interleaved runs. Threshold + connected components, full connectivity, "
             "blocks 128^3 (512^2 in 2-D), halo 8, 2 workers, zstd zarr input, zarr output. "
             "Peak PSS summed over the process tree (polled every 0.02 s). "
             "Every tool's modules load from compiled bytecode, as an installed package's do.", "",
             "| image | tool | median s | runs s | x I/O floor | peak PSS MiB | same partition as scipy | "
             "byte-identical output |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['tool']} | {r['median_wall_s']:.2f} | "
                     f"{', '.join(f'{v:.2f}' for v in r['runs_s'])} | "
                     f"{r['over_io_floor']:.2f} | {r['median_peak_pss_mib']:.0f} | {r['exact']} | "
                     f"{r['byte_identical']} |")
    lines += ["", "Per-step medians of the pystitch runs (the runner's `timings_seconds`; the rest of the wall time "
              "is interpreter start-up, planning and finalize):", "",
              "| image | tree | " + " | ".join(["segment", "face_pairs", "resolve", "apply_lut"]) + " |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        if r["steps_median_s"]:
            s = r["steps_median_s"]
            lines.append(f"| {r['size']} | {r['tool']} | " + " | ".join(
                f"{s.get(k, 0):.2f}" for k in ["segment", "face_pairs", "resolve", "apply_lut"]) + " |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(stem.with_suffix(".md"))


if __name__ == "__main__":
    main()
