"""Cellpose on the GPU: the whole image in one ``model.eval`` against
``pystitch run`` blockwise on the same image, with how busy the GPU was.

    python benchmarks/gpu.py [--device auto|cuda|cpu] [--size 256] [--block-shape 128]
                             [--repeat 2] [--model auto|random|FILE] [--workers 1]
    make bench-gpu                      # the same, with the defaults

Nothing is downloaded.  The model (``--model``):

* ``random`` builds the installed cellpose's standard network with freshly
  initialised, seeded weights (cellpose 3: CPnet, the network of cyto3;
  cellpose 4: CPSAM with its full ViT-L encoder) and saves it to a temporary
  ``.pth`` that both runs load as a model file.  The network's cost does not
  depend on its weights, but the flow dynamics do: with random weights the
  cell probability and flows are noise, masks are not meaningful (often
  none), and the dynamics may cost far less (or more) than with a trained
  model.  That is why the network time is reported apart from the total.
* ``auto`` (default) uses the small test model of
  ``tests/support/tiny_cellpose.py`` when it is already in its cache (cellpose
  3 only: it has the standard CPnet, so the network costs what cyto3's does,
  and its masks are real), else ``random``.  It never trains one.
* a path: that model file.

The image is synthetic (seeded balls about one diameter wide on a jittered
grid, blurred, with noise; float32 zarr).  Both runs use the same settings:
diameter, ``do_3D``, anisotropy 1, batch size, device, and the same
normalisation — ``pystitch run --normalize global`` computes the 1st/99th
percentiles once from a sample of every block, and the whole-image run is
given those very bounds (read back from the run's summary), so both normalise
identically; the whole-image run goes through pystitch's Cellpose adapter
(``CellposeSegmenter``), which makes exactly one ``model.eval`` call on the
whole array with the keyword arguments it gives every block.  Cellpose
rescales images by (model diameter) / ``--diameter``: a random cellpose 3
model is saved with ``diam_mean`` equal to ``--diameter`` and cellpose 4's
reference diameter is 30 (the GPU default), so by default neither run
rescales.

Measured per run: wall time and voxels/s of the image (blockwise: the whole
``pystitch run`` command — process start, plan, model loading in every
worker, segmentation of blocks with their halos, stitching, writing the
output, report without pictures; whole image: the ``eval`` call on an array
in memory, the model already loaded — its load time is reported apart), the
time inside the network's ``forward`` (every process, see
``benchmarks/_gpu_nettime/sitecustomize.py``), and the GPU's utilisation
sampled every ~100 ms (NVML through ``pynvml`` when importable, else
``nvidia-smi --query-gpu ... -lms 100``): its mean over the run is the
fraction of the time a kernel was running.  Without a GPU (``--device cpu``,
or ``auto`` on a machine without one) it runs in CPU mode, on a smaller
image by default, and records CPU utilisation instead (CPU time of the
process tree / (wall time x cores), and the machine's CPU utilisation); the
results say "CPU mode: no GPU".

The run keeps to ``--budget-s`` (default 400 s from start, setup included,
so that the whole benchmark stays under 8 minutes): a repeat that would not
fit is skipped, and a ``pystitch run`` that would leave no time for the
whole-image run after it is stopped; the results say so.

Results: ``benchmarks/results/gpu-<date>-<device>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import importlib.util
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOOK_DIR = HERE / "_gpu_nettime"
NET_ENV = "PYSTITCH_GPU_BENCH_NET_DIR"


# ---------------------------------------------------------------- helpers


def _load_hook():
    spec = importlib.util.spec_from_file_location("_pystitch_gpu_nettime", HOOK_DIR / "sitecustomize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.install()
    return module


def _shape(text: str, ndim: int | None = None) -> tuple[int, ...]:
    values = tuple(int(v) for v in str(text).split(","))
    if ndim is not None and len(values) == 1:
        values = values * ndim
    return values


def _cellpose_major() -> int:
    from importlib.metadata import version

    return int(version("cellpose").split(".")[0])


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("pystitch", "cellpose", "torch", "numpy", "zarr", "pynvml", "nvidia-ml-py"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _find_key(obj, key):
    if isinstance(obj, dict):
        if key in obj and obj[key]:
            return obj[key]
        for value in obj.values():
            found = _find_key(value, key)
            if found is not None:
                return found
    elif isinstance(obj, list):
        for value in obj:
            found = _find_key(value, key)
            if found is not None:
                return found
    return None


def synthetic_balls(shape: tuple[int, ...], diameter: float, seed: int = 0) -> np.ndarray:
    """Balls (disks in 2-D) 0.8-1.0 diameters wide on a jittered grid 1.25
    diameters apart (none overlap), 85% of the grid sites filled, random
    brightness, blurred, noisy; float32 about 0.1 (background) to 1."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    spacing = 1.25 * diameter
    # sites one spacing apart, the grid centred; an axis thinner than a spacing gets one site in its middle
    # (the balls are then cut by the image's faces)
    axes = [(np.arange(int(s // spacing)) + 0.5) * spacing + (s - spacing * int(s // spacing)) / 2
            if s >= spacing else np.array([s / 2]) for s in shape]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(shape))
    grid = grid[rng.random(len(grid)) < 0.85]
    grid = grid + rng.uniform(-0.1, 0.1, grid.shape) * diameter
    signal = np.zeros(shape, np.float32)
    for centre in grid:
        r = 0.5 * diameter * rng.uniform(0.8, 1.0)
        lo = [max(0, int(np.floor(c - r))) for c in centre]
        hi = [min(s, int(np.ceil(c + r)) + 1) for c, s in zip(centre, shape)]
        if any(h <= l for l, h in zip(lo, hi)):
            continue
        grids = np.ogrid[tuple(slice(l, h) for l, h in zip(lo, hi))]
        inside = sum((g - c) ** 2 for g, c in zip(grids, centre)) <= r * r
        box = signal[tuple(slice(l, h) for l, h in zip(lo, hi))]
        box[inside] = rng.uniform(0.6, 1.0)
    image = ndimage.gaussian_filter(signal, 1.0)
    image += 0.1 + 0.04 * rng.standard_normal(shape).astype(np.float32)
    return image


# ---------------------------------------------------------------- samplers


class Sampler:
    """Samples one number every ``period`` seconds in the background:
    GPU utilisation (%) and memory used (MiB) through NVML or nvidia-smi, or
    the machine's CPU utilisation (%) through psutil."""

    def __init__(self, mode: str, gpu_index: int = 0, period: float = 0.1) -> None:
        self.period = period
        self.samples: list[tuple[float, float, float]] = []  # (wall time, value %, memory MiB)
        self.source = "none"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None
        if mode == "gpu":
            try:
                import pynvml

                pynvml.nvmlInit()
                handle = pynvml.nvmlDeviceGetHandleByIndex(gpu_index)
                self.source = "NVML (pynvml), every %.0f ms" % (period * 1000)

                def read():
                    util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
                    mem = pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
                    return float(util), float(mem)

                self._read = read
            except Exception:  # noqa: BLE001 - no pynvml, or NVML not usable: try nvidia-smi
                if shutil.which("nvidia-smi"):
                    self.source = "nvidia-smi -lms %d" % (period * 1000)
                    self._gpu_index = gpu_index
                    self._read = None
                else:
                    self.source = "none (neither pynvml nor nvidia-smi)"
                    self._read = lambda: None
        else:
            try:
                import psutil

                psutil.cpu_percent(None)
                self.source = "psutil.cpu_percent (whole machine), every %.0f ms" % (period * 1000)
                self._read = lambda: (float(psutil.cpu_percent(None)), 0.0)
            except ImportError:
                self.source = "none (no psutil)"
                self._read = lambda: None

    def start(self) -> None:
        if self.source.startswith("nvidia-smi"):
            cmd = ["nvidia-smi", "-i", str(self._gpu_index), "--query-gpu=timestamp,utilization.gpu,memory.used",
                   "--format=csv,noheader,nounits", "-lms", str(int(self.period * 1000))]
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._smi_loop, daemon=True)
        else:
            self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            value = self._read()
            if value is not None:
                self.samples.append((time.time(), value[0], value[1]))
            self._stop.wait(self.period)

    def _smi_loop(self) -> None:
        for line in self._proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            try:
                stamp = dt.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()  # local time
                self.samples.append((stamp, float(parts[1]), float(parts[2])))
            except (ValueError, IndexError):
                continue

    def stop(self) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._thread is not None:
            self._thread.join(5)

    def window(self, t0: float, t1: float) -> dict:
        values = [(v, m) for t, v, m in self.samples if t0 <= t <= t1]
        if not values:
            return {"samples": 0}
        util = np.array([v for v, _ in values])
        return {"samples": len(values), "mean_percent": round(float(util.mean()), 1),
                "busy_fraction": round(float(util.mean()) / 100.0, 3),
                "nonzero_fraction": round(float((util > 0).mean()), 3),
                "max_memory_mib": round(max(m for _, m in values))}


# ---------------------------------------------------------------- models


def make_model(spec: str, major: int, diameter: float, workdir: Path, seed: int) -> tuple[Path, str, float | None]:
    """(model file, description, diameter the model was trained at or None)."""
    if spec not in ("auto", "random"):
        path = Path(spec).resolve()
        return path, f"model file {path}", None
    if spec == "auto" and major == 3:
        sys.path.insert(0, str(REPO / "tests" / "support"))
        try:
            import tiny_cellpose as tc

            params = tc.TrainingParams().resolved(major)
            cached = tc.resolve_cache_dir() / f"tiny-cp{major}-{tc.cache_key(params, major)}.pth"
            if cached.is_file():
                return (cached, f"the small test model of tests/support/tiny_cellpose.py, from its cache "
                        f"({cached.name}; standard CPnet, trained on blobs {params.diameter_min:g}-"
                        f"{params.diameter_max:g} px: masks are real)", params.diameter)
        except Exception:  # noqa: BLE001 - no test support: random weights
            pass
        finally:
            sys.path.pop(0)
    import torch

    torch.manual_seed(seed)
    path = workdir / f"random-cp{major}.pth"
    if major == 3:
        from cellpose import models

        model = models.CellposeModel(gpu=False, pretrained_model=False, model_type=None, nchan=2,
                                     diam_mean=float(diameter))
        model.net.save_model(str(path))
        what = "CPnet (cellpose 3's standard network, the size of cyto3's)"
        del model
    else:
        from cellpose.vit import CPSAM

        net = CPSAM(dtype=torch.float32)
        net.save_model(str(path))  # cellpose 4 stores its models as float32
        what = "CPSAM with the full ViT-L encoder (cellpose 4's cpsam architecture)"
        del net
    return (path, f"{what} with freshly initialised weights (torch seed {seed}), saved to a temporary file: "
            "network time is representative, masks are NOT meaningful and the dynamics may cost unlike a "
            "trained model's", None)


# ---------------------------------------------------------------- the two runs


def _net_totals(directory: Path) -> dict:
    seconds, calls, tiles, procs = 0.0, 0, 0, 0
    for name in glob.glob(str(directory / "*.json")):
        try:
            data = json.loads(Path(name).read_text())
        except (OSError, ValueError):
            continue
        seconds += data["seconds"]
        calls += data["calls"]
        tiles += data["tiles"]
        procs += 1
    return {"seconds": round(seconds, 3), "calls": calls, "tiles": tiles, "processes": procs}


def run_blockwise(args, image_path: Path, model: Path, diameter: float, device: str, out_dir: Path,
                  net_dir: Path, timeout: float) -> dict:
    exe = Path(sys.executable).parent / "pystitch"
    cmd = [str(exe) if exe.exists() else (shutil.which("pystitch") or "pystitch"),
           "run", str(image_path), str(out_dir / "labels.zarr"),
           "--backend", "cellpose", "--pretrained-model", str(model), "--diameter", f"{diameter:g}",
           "--anisotropy", "1", "--batch-size", str(args.batch_size), "--normalize", "global",
           "--block-shape", args.block_shape, "--device", device, "--workers", str(args.workers),
           "--work-dir", str(out_dir / "work"), "--report-dir", str(out_dir / "report"),
           "--keep-work", "--no-pictures", "--no-progress", "--overwrite"]
    if len(args.shape) == 3:
        cmd += ["--do-3d", "true" if args.do_3d else "false"]
    if args.halo:
        cmd += ["--halo", args.halo]
    shutil.rmtree(net_dir, ignore_errors=True)
    net_dir.mkdir(parents=True)
    env = dict(os.environ)
    env[NET_ENV] = str(net_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(HOOK_DIR)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    start = time.perf_counter()
    with open(out_dir / "pystitch.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            rc = proc.wait()
            timed_out = True
    wall = time.perf_counter() - start
    t1 = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {"command": " ".join(cmd), "rc": rc, "timed_out": timed_out, "wall_s": round(wall, 3),
              "t0": t0, "t1": t1,
              "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2),
              "network": _net_totals(net_dir)}
    summary_path = out_dir / "report" / "summary.json"
    if rc == 0 and summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        result["objects"] = summary.get("objects")
        result["blocks"] = summary.get("blocks")
        result["timings_seconds"] = summary.get("timings_seconds")
        lowhigh = _find_key(summary, "lowhigh")
        if lowhigh is None:
            for name in sorted((out_dir / "work").glob("*.json")):
                lowhigh = _find_key(json.loads(name.read_text()), "lowhigh")
                if lowhigh is not None:
                    break
        result["lowhigh"] = lowhigh
    else:
        result["log_tail"] = (out_dir / "pystitch.log").read_text()[-3000:]
    return result


# ---------------------------------------------------------------- report


def _fmt(value, spec=".1f", none="—"):
    return none if value is None else format(value, spec)


def write_results(record: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"gpu-{record['date'][:10]}-{record['mode']}"
    Path(f"{stem}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    s = record["settings"]
    cpu_mode = record["mode"] == "cpu"
    lines = [f"# Cellpose: whole image vs `pystitch run` blockwise — {record['date']}", ""]
    if cpu_mode:
        lines += ["**CPU mode: no GPU.** " + record["mode_reason"], ""]
    lines += [
        f"- machine: {record['machine']['host']}, {record['machine']['cpu']}, {record['machine']['cores']} cores, "
        f"{record['machine']['memory_gib']} GiB; device: {record['device_name']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()),
        f"- model: {record['model']}",
        f"- image: {'×'.join(map(str, s['shape']))} = {s['voxels']:,} voxels, synthetic balls ~{s['diameter']:g} px "
        f"(float32 zarr, chunks {s['chunks']})",
        f"- settings (both runs): diameter {s['diameter']:g}, do_3D {s['do_3d']}, anisotropy 1, batch size "
        f"{s['batch_size']}, device {s['device']}, normalisation {record['normalisation']}",
        f"- blockwise: `pystitch run`, block shape {s['block_shape']}, halo {s['halo'] or 'default (one diameter)'}, "
        f"{s['workers']} worker(s), rule: the backend's default",
        f"- utilisation sampled by: {record['sampler']}",
        "",
        "| run | repeat | wall s | voxels/s | network s (share of wall) | tiles | "
        + ("CPU busy (process tree) | machine CPU % |" if cpu_mode
           else "GPU busy fraction | samples > 0 | GPU memory max MiB |")
        + " objects |",
        "|" + "---|" * (9 if cpu_mode else 10),
    ]
    for row in record["runs"]:
        util = row.get("utilisation") or {}
        net = row.get("network") or {}
        share = net.get("seconds", 0) / row["wall_s"] if row.get("wall_s") else None
        if cpu_mode:
            busy = f"{_fmt(row.get('cpu_busy'), '.2f')} | {_fmt(util.get('mean_percent'))}"
        else:
            busy = (f"{_fmt(util.get('busy_fraction'), '.3f')} | {_fmt(util.get('nonzero_fraction'), '.2f')} | "
                    f"{_fmt(util.get('max_memory_mib'), '.0f')}")
        note = " (timed out)" if row.get("timed_out") else ("" if row.get("rc", 0) == 0 else f" (rc {row['rc']})")
        lines.append(f"| {row['run']}{note} | {row['repeat']} | {row['wall_s']:.2f} | "
                     f"{_fmt(row.get('voxels_per_s'), ',.0f')} | {net.get('seconds', 0):.2f} ({_fmt(share, '.0%')}) | "
                     f"{net.get('tiles', 0)} | {busy} | {_fmt(row.get('objects'), 'd')} |")
    lines += [""]
    if record.get("model_load_s") is not None:
        lines.append(f"Whole image: the model was loaded once before its runs in {record['model_load_s']:.1f} s "
                     "(not in its wall time; each `pystitch run` worker loads it inside the run's wall time).")
    for row in record["runs"]:
        if row["run"] == "pystitch run" and row.get("timings_seconds"):
            lines.append(f"`pystitch run` repeat {row['repeat']} step times (s, summed over tasks): "
                         + ", ".join(f"{k} {v:g}" for k, v in row["timings_seconds"].items()))
    lines += [""] + [f"- {note}" for note in record["notes"]] + [""]
    Path(f"{stem}.md").write_text("\n".join(lines))
    return Path(f"{stem}.md"), Path(f"{stem}.json")


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"],
                    help="cuda: the GPU (an error without one); auto: the GPU when torch sees one, else CPU mode")
    ap.add_argument("--size", help="image side, or Z,Y,X / Y,X (default: 256 on a GPU, 16,48,48 in CPU mode)")
    ap.add_argument("--block-shape", help="pystitch's --block-shape (default: half the image per axis, "
                                          "Z whole below 64)")
    ap.add_argument("--halo", help="pystitch's --halo (default: pystitch's, one diameter)")
    ap.add_argument("--diameter", type=float, help="object diameter in pixels (default: 30 on a GPU, 16 in CPU "
                                                   "mode; the cached test model's 18 when it is used)")
    ap.add_argument("--do-3d", default=True, action=argparse.BooleanOptionalAction, help="3-D images: do_3D")
    ap.add_argument("--model", default="auto", help="auto | random | a model file (see above)")
    ap.add_argument("--workers", default="1", help="pystitch run --workers (default 1: one per GPU)")
    ap.add_argument("--batch-size", type=int, default=8, help="cellpose batch size, both runs (default 8)")
    ap.add_argument("--repeat", type=int, help="repeats of both runs (default: 2 on a GPU, 1 in CPU mode)")
    ap.add_argument("--budget-s", type=float, default=400.0,
                    help="seconds from start (setup included) to keep to (default 400)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (image, outputs, logs)")
    ap.add_argument("--note", action="append", default=[], help="a line for the results' notes (repeatable)")
    args = ap.parse_args(argv)
    begin = time.perf_counter()

    hook = _load_hook()  # before cellpose is imported: network time of the whole-image run
    import torch

    major = _cellpose_major()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA GPU (torch %s, built for CUDA %s)"
                 % (torch.__version__, torch.version.cuda))
    mode = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    if mode == "cpu":
        reason = ("--device cpu was asked for." if args.device == "cpu" else
                  f"torch {torch.__version__} sees no CUDA GPU here (built for CUDA {torch.version.cuda}); "
                  "nothing below says anything about GPU throughput.")
        if args.device != "cpu" and shutil.which("nvidia-smi"):
            reason += (" nvidia-smi is installed, though: if this machine has a GPU, this torch cannot use it "
                       "(a CPU-only build, or a CUDA build newer than the driver).")
        device_name = f"CPU: {_cpu_name()}"
        print("CPU mode: no GPU. " + reason, flush=True)
        if major >= 4:
            print("warning: cellpose 4's CPSAM (ViT-L) on the CPU is very slow; use a small --size", flush=True)
    else:
        reason = ""
        device_name = torch.cuda.get_device_name(0)

    size = args.size or ("256" if mode == "cuda" else "16,48,48")
    shape = _shape(size, 3 if "," not in size else None)
    args.shape = shape
    if args.block_shape is None:
        block = [s // 2 if (i > 0 or len(shape) == 2 or s >= 64) else s for i, s in enumerate(shape)]
        args.block_shape = ",".join(map(str, block))
    repeat = args.repeat or (2 if mode == "cuda" else 1)
    voxels = int(np.prod(shape))

    tmp = Path(tempfile.mkdtemp(prefix="pystitch-gpu-bench-"))
    notes: list[str] = list(args.note)
    try:
        t = time.perf_counter()
        default_diameter = 30.0 if mode == "cuda" else 16.0
        model_path, model_desc, trained_diameter = make_model(args.model, major, args.diameter or default_diameter,
                                                              tmp, args.seed)
        diameter = args.diameter or trained_diameter or default_diameter
        print(f"model: {model_desc} ({time.perf_counter() - t:.1f} s)", flush=True)

        t = time.perf_counter()
        image = synthetic_balls(shape, diameter, seed=args.seed)
        import zarr

        chunks = tuple(min(64, s) for s in shape)
        image_path = tmp / "image.zarr"
        arr = zarr.create_array(store=str(image_path), shape=shape, chunks=chunks, dtype="float32",
                                zarr_format=2, overwrite=True)
        arr[:] = image
        print(f"image {shape} ({voxels:,} voxels) in {time.perf_counter() - t:.1f} s", flush=True)

        sampler = Sampler("gpu" if mode == "cuda" else "cpu",
                          gpu_index=int((os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0])
                          if (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].isdigit() else 0)
        sampler.start()
        device = "cuda" if mode == "cuda" else "cpu"
        runs: list[dict] = []
        segmenter = None
        lowhigh = None
        model_load_s = None
        durations = {"pystitch run": 0.0, "whole image": 0.0}
        for r in range(1, repeat + 1):
            for which in ("pystitch run", "whole image"):
                left = args.budget_s - (time.perf_counter() - begin)
                if r > 1 and durations[which] > left:
                    notes.append(f"repeat {r} of {which} skipped: {left:.0f} s of the {args.budget_s:.0f} s budget "
                                 f"left, it took {durations[which]:.0f} s")
                    continue
                if which == "pystitch run":
                    out_dir = tmp / f"run{r}"
                    out_dir.mkdir()
                    # leave time for the whole-image run that follows (a third of the budget left
                    # until its duration is known: it does less work than the blockwise run)
                    reserve = durations["whole image"] * 1.2 if durations["whole image"] else left / 3
                    row = run_blockwise(args, image_path, model_path, diameter, device, out_dir, tmp / "net",
                                        timeout=left - reserve)
                    if row.get("lowhigh") and lowhigh is None:
                        lowhigh = row["lowhigh"]
                    if row["timed_out"]:
                        notes.append(f"`pystitch run` repeat {r} was stopped after {row['wall_s']:.0f} s to keep "
                                     "to the budget: no throughput for it")
                    elif row["rc"] != 0:
                        print(row.get("log_tail", ""), file=sys.stderr)
                    t0, t1, wall = row.pop("t0"), row.pop("t1"), row["wall_s"]
                    cores = os.cpu_count() or 1
                    row["cpu_busy"] = round(row["cpu_s"] / (wall * cores), 3) if wall else None
                else:
                    if lowhigh is None:
                        lo, hi = (float(v) for v in np.percentile(image, [1, 99]))
                        lowhigh = [[lo, hi]]
                        notes.append("pystitch's normalisation bounds were not found in its summary: the whole "
                                     "image used its exact 1st/99th percentiles instead")
                    if segmenter is None:
                        from pystitch.backends.cellpose import CellposeSegmenter

                        t = time.perf_counter()
                        kw = {"do_3D": args.do_3d, "anisotropy": 1.0} if len(shape) == 3 else {}
                        if len(shape) == 3 and not args.do_3d:
                            kw["stitch_threshold"] = 0.3
                        segmenter = CellposeSegmenter(pretrained_model=str(model_path), diameter=diameter,
                                                      lowhigh=lowhigh, batch_size=args.batch_size, device=device,
                                                      **kw)
                        model_load_s = time.perf_counter() - t
                    hook.reset()
                    ru0 = resource.getrusage(resource.RUSAGE_SELF)
                    t0 = time.time()
                    start = time.perf_counter()
                    labels = segmenter(image)
                    if mode == "cuda":
                        torch.cuda.synchronize()
                    wall = time.perf_counter() - start
                    t1 = time.time()
                    ru1 = resource.getrusage(resource.RUSAGE_SELF)
                    cpu_s = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
                    net = hook.totals()
                    row = {"rc": 0, "wall_s": round(wall, 3), "cpu_s": round(cpu_s, 2),
                           "cpu_busy": round(cpu_s / (wall * (os.cpu_count() or 1)), 3),
                           "network": {"seconds": round(net["seconds"], 3), "calls": net["calls"],
                                       "tiles": net["tiles"], "processes": 1},
                           "objects": int(labels.max())}
                    del labels
                durations[which] = row["wall_s"]
                row.update(run=which, repeat=r, utilisation=sampler.window(t0, t1),
                           voxels_per_s=round(voxels / row["wall_s"], 1) if row.get("rc") == 0 else None)
                runs.append(row)
                print(f"{which} #{r}: {row['wall_s']:.2f} s, {row.get('voxels_per_s') or 0:,.0f} voxels/s, "
                      f"network {row['network']['seconds']:.2f} s, utilisation {row['utilisation']}, "
                      f"objects {row.get('objects')}", flush=True)
        sampler.stop()
        if segmenter is not None:
            segmenter.close()

        normalisation = (f"global, the same absolute bounds {lowhigh} (pystitch's 1st/99th percentiles of a "
                         "sample of every block) for every block and for the whole image")
        notes += [
            "voxels/s = voxels of the image / wall time of the run (blockwise: the whole `pystitch run` command; "
            "whole image: one `eval` on the array in memory, model already loaded).",
            "network s = time inside the network's forward (synchronised on CUDA), summed over every process; "
            "the rest of a run is normalisation, resizing, flow dynamics and mask building (cellpose), and "
            "reading, staging, stitching and writing (pystitch).",
            "Blockwise segments every block with its halo, so it runs the network on more voxels than the whole "
            "image (tiles column).",
        ]
        if mode == "cuda":
            notes.append("Repeat 1 is cold for both runs (first CUDA kernels, cuDNN's algorithm choice, in "
                         "every `pystitch run` worker too); later repeats are warm only for the whole image, whose "
                         "model stays loaded — each `pystitch run` starts its workers afresh.")
            notes.append("GPU busy fraction = mean NVML utilisation.gpu over the run / 100: the share of the time "
                         "at least one kernel ran (not how full the GPU was).")
        else:
            notes.append("CPU busy (process tree) = CPU time of the run's processes / (wall time × "
                         f"{os.cpu_count()} cores); machine CPU % includes everything else running on this "
                         "machine at the time.")
        if "random" in model_desc or "freshly initialised" in model_desc:
            notes.append("Random weights: object counts (and the dynamics' cost) say nothing about a trained "
                         "model; compare the network times.")
        record = {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "mode": mode, "mode_reason": reason, "device_name": device_name,
            "machine": {"host": socket.gethostname(), "platform": platform.platform(), "cpu": _cpu_name(),
                        "cores": os.cpu_count(),
                        "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)},
            "versions": {**_versions(), "torch_cuda": torch.version.cuda,
                         "cuda_available": torch.cuda.is_available()},
            "model": model_desc, "model_load_s": model_load_s,
            "settings": {"shape": list(shape), "voxels": voxels, "chunks": list(chunks), "diameter": diameter,
                         "do_3d": args.do_3d if len(shape) == 3 else None, "batch_size": args.batch_size,
                         "device": device, "block_shape": args.block_shape, "halo": args.halo,
                         "workers": args.workers, "repeat": repeat, "budget_s": args.budget_s, "seed": args.seed},
            "normalisation": normalisation, "sampler": sampler.source, "runs": runs, "notes": notes,
            "total_s": round(time.perf_counter() - begin, 1),
        }
        md, js = write_results(record, args.out)
        print(md.read_text())
        print(f"{md}\n{js}\ntotal {record['total_s']} s")
        return 0 if all(r.get("rc") == 0 for r in runs) else 1
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
