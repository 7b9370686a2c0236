"""Scale, measured: one synthetic volume at several sizes (e.g. 512^3 and
2048^3 = 8.6e9 voxels), end to end with the local runner (``pystitch run``)
and with the Nextflow pipeline (local executor, ``-with-trace``).

    python benchmarks/scale.py --sizes 512,2048 --nextflow-sizes 512,2048 \\
        --scratch /tmp/pystitch-scale --name scale-<date>

The image is written chunk by chunk (never whole in memory): a zstd zarr
(chunks 128^3) of uint16 background (100 + noise 0..31) with foreground
(1000 + noise) spheres and rods.  Spheres: one per cell of a 40^3 grid,
integer centre (cell centre +- 3), integer radius 4..12, so neighbouring
spheres are at least 3 voxels apart (no two touch, also with full
connectivity) and many cross block faces, edges and corners.  Rods: 3x3
voxels thick, along x through the whole image, on the cell boundaries
y, z = 40 j with j % 8 == 4 (they cross every block in their row).  So the
true objects are known without labelling the whole image: each sphere and
each rod is exactly one object, whose voxel count and bounding box are known.

Checks (every size): the object count, and the multiset of (bounding box,
voxel count) of the regions table equals the generated one; a sub-volume
(256^3 around a block corner; objects inside it compared as a partition with
scipy's labels of that sub-volume); where ``--full-check-max`` allows
(default up to 512^3), the whole label image as a partition of
``scipy.ndimage.label`` (full connectivity) of the whole image.  The
Nextflow output is compared with the local runner's (regions table byte for
byte; labels chunk files byte for byte).

Recorded per run: wall time, voxels/s, peak PSS of the whole process tree
(local runner; polled), per-task peak_rss/realtime from the Nextflow trace,
files created (work dir, staging, output), sizes of plan, manifests, pairs
and lut, per-step times from the run's summary.json, resolve time and
memory (local: ``pystitch resolve`` rerun on the kept work directory under
``/usr/bin/time``; Nextflow: the RESOLVE task's peak_rss).  Results go to
``benchmarks/results/<name>.json`` after every run (an interrupted
benchmark keeps what it measured) and ``.md``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import itertools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from perf import TreePSS, same_partition  # noqa: E402

VENV_BIN = Path(sys.executable).parent
# the checkout this interpreter's pystitch is installed from (its kernels built): its main.nf and bin/ run
# the pipeline; every command runs in the scratch directory so that an unbuilt checkout in the current
# directory never shadows it
SRC = Path(subprocess.run([sys.executable, "-c", "import pystitch; print(pystitch.__file__)"], capture_output=True,
                          text=True, cwd="/", check=True).stdout.strip()).parents[1]
THR = 500
CELL, JITTER, RMIN, RMAX = 40, 3, 4, 12
ROD_EVERY, ROD_AT, ROD_HALF = 8, 4, 1
CHUNK = 128


# ----------------------------------------------------------------------------- the image


def objects_of(side: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Sphere centres (n, 3) and radii (n,), and the rod positions (on y and z)."""
    cells = side // CELL
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(cells)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centres = grid * CELL + CELL // 2 + rng.integers(-JITTER, JITTER + 1, size=grid.shape)
    radii = rng.integers(RMIN, RMAX + 1, size=len(grid))
    rods = [j * CELL for j in range(1, cells + 1) if j % ROD_EVERY == ROD_AT and j * CELL + ROD_HALF < side]
    return centres.astype(np.int64), radii.astype(np.int64), rods


def ball_voxels(r: int) -> int:
    d = np.arange(-r, r + 1) ** 2
    return int((d[:, None, None] + d[None, :, None] + d[None, None, :] <= r * r).sum())


def expected_regions(side: int, seed: int) -> list[tuple]:
    """(z_min, z_max, y_min, y_max, x_min, x_max, voxels) of every object, sorted; max exclusive."""
    centres, radii, rods = objects_of(side, seed)
    vox = {r: ball_voxels(r) for r in range(RMIN, RMAX + 1)}
    out = []
    for c, r in zip(centres.tolist(), radii.tolist()):
        out.append((c[0] - r, c[0] + r + 1, c[1] - r, c[1] + r + 1, c[2] - r, c[2] + r + 1, vox[r]))
    t = 2 * ROD_HALF + 1
    out += [(z - ROD_HALF, z + ROD_HALF + 1, y - ROD_HALF, y + ROD_HALF + 1, 0, side, t * t * side)
            for z in rods for y in rods]
    return sorted(out)


def render(side: int, seed: int, box: tuple[slice, ...], centres, radii, rods) -> np.ndarray:
    """The image inside ``box`` (slices of the whole image)."""
    lo = np.array([s.start for s in box])
    hi = np.array([s.stop for s in box])
    ident = hashlib.sha256(f"{seed}:{lo.tolist()}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(ident[:8], "little"))
    fg = np.zeros(tuple(hi - lo), bool)
    near = np.all((centres + radii[:, None] >= lo) & (centres - radii[:, None] < hi), axis=1)
    for c, r in zip(centres[near], radii[near]):
        a, b = np.maximum(c - r, lo), np.minimum(c + r + 1, hi)
        zz, yy, xx = np.ogrid[a[0]:b[0], a[1]:b[1], a[2]:b[2]]
        fg[a[0] - lo[0]:b[0] - lo[0], a[1] - lo[1]:b[1] - lo[1], a[2] - lo[2]:b[2] - lo[2]] |= (
            (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r)
    for z in rods:
        for y in rods:
            a = np.maximum([z - ROD_HALF, y - ROD_HALF], lo[:2])
            b = np.minimum([z + ROD_HALF + 1, y + ROD_HALF + 1], hi[:2])
            if np.all(a < b):
                fg[a[0] - lo[0]:b[0] - lo[0], a[1] - lo[1]:b[1] - lo[1], :] = True
    image = rng.integers(0, 32, size=fg.shape, dtype=np.uint16)
    image += np.where(fg, np.uint16(1000), np.uint16(100))
    return image


_G: dict = {}


def _init(path: str, side: int, seed: int) -> None:
    import zarr

    _G.update(arr=zarr.open_array(path, mode="r+"), side=side, seed=seed, objs=objects_of(side, seed))


def _write_chunk(idx: tuple[int, ...]) -> None:
    box = tuple(slice(i, min(i + CHUNK, _G["side"])) for i in idx)
    _G["arr"][box] = render(_G["side"], _G["seed"], box, *_G["objs"])


def generate(path: Path, side: int, seed: int, workers: int) -> dict:
    import zarr
    from zarr.codecs import ZstdCodec

    t = time.perf_counter()
    zarr.create_array(store=str(path), shape=(side,) * 3, chunks=(CHUNK,) * 3, dtype=np.uint16, overwrite=True,
                      compressors=[ZstdCodec(level=3)], fill_value=0)
    idx = list(itertools.product(*[range(0, side, CHUNK)] * 3))
    with ProcessPoolExecutor(workers, initializer=_init, initargs=(str(path), side, seed)) as pool:
        list(pool.map(_write_chunk, idx, chunksize=8))
    return {"seconds": time.perf_counter() - t, "chunks": len(idx), "bytes": du(path)}


# ----------------------------------------------------------------------------- measuring


def _files(path: Path):
    """Regular files under ``path`` (links, e.g. Nextflow's staged inputs, are not counted)."""
    if path.is_file() and not path.is_symlink():
        return [path]
    return [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()] if path.is_dir() else []


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in _files(path))


def nfiles(path: Path) -> int:
    return len(_files(path))


def parts_anywhere(root: Path) -> dict:
    """Files and bytes of the plan, manifests, pairs, lut... wherever they are under ``root`` (Nextflow: in the
    task directories and the staging directory)."""
    out = {}
    for name, pattern in [("plan", "plan*.json"), ("manifests", "*manifest*"), ("pairs", "pairs*"),
                          ("lut.zarr", "lut.zarr"), ("staging.zarr", "staging.zarr"), ("stats", "stats*")]:
        files = {f for p in root.rglob(pattern) if not p.is_symlink() for f in _files(p)}
        out[name] = {"files": len(files), "bytes": sum(f.stat().st_size for f in files)}
    return out


def work_sizes(work: Path) -> dict:
    """Files and bytes of the parts of a pystitch work directory."""
    parts = {}
    for name in ["plan.json", "manifests", "pairs", "lut.zarr", "resolve.json", "staging.zarr", "stats"]:
        p = work / name
        parts[name] = {"files": nfiles(p) if p.is_dir() else int(p.exists()), "bytes": du(p)}
    parts["total"] = {"files": nfiles(work), "bytes": du(work)}
    return parts


def time_v(cmd: list[str], env: dict | None = None) -> dict:
    """Wall seconds and max RSS (MiB) of a command under /usr/bin/time -v."""
    t = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env, cwd="/")
    wall = time.perf_counter() - t
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr)
    return {"rc": res.returncode, "wall_s": wall, "max_rss_mib": int(rss.group(1)) / 1024 if rss else None,
            "stderr_tail": res.stderr[-1500:] if res.returncode else ""}


def regions_of(csv_path: Path) -> list[tuple]:
    with open(csv_path, newline="") as fh:
        return sorted((int(r["z_min"]), int(r["z_max"]), int(r["y_min"]), int(r["y_max"]), int(r["x_min"]),
                       int(r["x_max"]), int(r["voxels"])) for r in csv.DictReader(fh))


def open_labels(path: Path):
    import zarr

    node = zarr.open(str(path), mode="r")
    while isinstance(node, zarr.Group):
        names = sorted(k for k, _ in node.members())
        node = node["labels"] if "labels" in names else node[names[0]]
    return node


def check(image: Path, labels: Path, report: Path, side: int, seed: int, block: int, full_max: int) -> dict:
    from scipy import ndimage

    import zarr

    st = ndimage.generate_binary_structure(3, 3)
    out: dict = {}
    want, got = expected_regions(side, seed), regions_of(report / "regions.csv")
    out["expected_objects"] = len(want)
    out["objects_in_table"] = len(got)
    out["regions_equal_generated"] = got == want
    # a sub-volume around a block corner: objects wholly inside compared with scipy's labels there
    c = min(side // 2 // block * block, side - 128) if side > 256 else side // 2
    lo, hi = max(c - 128, 0), min(c + 128, side)
    box = (slice(lo, hi),) * 3
    img = zarr.open_array(str(image), mode="r")[box]
    lab = open_labels(labels)[box]
    ref = ndimage.label(img > THR, structure=st)[0]
    border = np.zeros(ref.shape, bool)
    border[[0, -1], :, :] = border[:, [0, -1], :] = border[:, :, [0, -1]] = True
    cut = np.unique(ref[border & (ref > 0)])
    inside = (ref > 0) & ~np.isin(ref, cut)
    out["subvolume"] = [lo, hi]
    out["subvolume_objects_inside"] = int(len(np.unique(ref[inside])))
    out["subvolume_same_foreground"] = bool(np.array_equal(img > THR, lab > 0))
    out["subvolume_same_partition_inside"] = bool(
        same_partition(np.where(inside, lab, 0), np.where(inside, ref, 0))
        and not np.isin(lab[~inside & (lab > 0)], np.unique(lab[inside])).any())
    del img, lab, ref, border, inside
    if side <= full_max:
        img = zarr.open_array(str(image), mode="r")[:]
        ref = ndimage.label(img > THR, structure=st)[0]
        del img
        out["whole_image_same_partition_as_scipy"] = bool(same_partition(open_labels(labels)[:], ref))
    out["ok"] = all(v for k, v in out.items() if k in ("regions_equal_generated", "subvolume_same_foreground",
                                                          "subvolume_same_partition_inside",
                                                          "whole_image_same_partition_as_scipy"))
    return out


def summary_steps(report: Path) -> dict:
    s = json.loads((report / "summary.json").read_text())
    keep = ["objects", "provisional_objects", "pairs", "merges", "blocks", "empty_blocks", "finalize_seconds",
            "workers", "timings_seconds"]
    return {k: s.get(k) for k in keep}


def run_local(image: Path, tmp: Path, side: int, block: int, workers: int) -> dict:
    out = tmp / "local" / "labels.zarr"
    shutil.rmtree(tmp / "local", ignore_errors=True)
    (tmp / "local").mkdir(parents=True)
    cmd = [str(VENV_BIN / "pystitch"), "run", str(image), str(out), "--threshold", str(THR), "--connectivity", "full",
           "--block-shape", str(block), "--halo", "8", "--workers", str(workers), "--output-format", "zarr",
           "--no-pictures", "--keep-work", "--no-progress", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp)
    with TreePSS(proc.pid, interval=0.2) as mem:
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(stderr[-3000:])
    work, report = tmp / "local" / "labels_work", tmp / "local" / "labels_report"
    r = {"runner": "local", "side": side, "voxels": side ** 3, "block": block, "workers": workers,
         "command": " ".join(cmd[1:]), "wall_s": wall, "voxels_per_s": side ** 3 / wall,
         "peak_pss_mib": mem.peak / 2 ** 20, **summary_steps(report),
         "work": work_sizes(work), "output": {"files": nfiles(out), "bytes": du(out)},
         "report": {"files": nfiles(report), "bytes": du(report)}}
    # resolve alone, on the kept work directory (its lut and output array go elsewhere)
    again = tmp / "local" / "resolve-again"
    again.mkdir()
    r["resolve_rerun"] = time_v([str(VENV_BIN / "pystitch"), "resolve", str(work), "--out", str(again), "--quiet"],
                                env)
    r["resolve_rerun"]["note"] = "pystitch resolve rerun alone on the kept work directory, /usr/bin/time -v"
    return r


NF_CONFIG = """
process {{
    resourceLimits = [ cpus: 1, memory: {mem}.GB, time: 8.h ]
}}
executor {{
    name   = 'local'
    cpus   = {cpus}
    memory = '{total} GB'
}}
trace {{
    fields = 'task_id,name,status,exit,realtime,%cpu,peak_rss,peak_vmem,rchar,wchar,memory,cpus'
}}
"""


def to_mib(v: str) -> float | None:
    m = re.match(r"([\d.]+)\s*(B|KB|MB|GB|TB)", v or "")
    if not m:
        return None
    return float(m.group(1)) * {"B": 2 ** -20, "KB": 2 ** -10, "MB": 1, "GB": 1024, "TB": 2 ** 20}[m.group(2)]


def to_s(v: str) -> float | None:
    if not v or v == "-":
        return None
    total = 0.0
    for num, unit in re.findall(r"([\d.]+)\s*(ms|s|m|h|d)", v):
        total += float(num) * {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    return total


def nextflow_executable() -> str:
    res = subprocess.run([str(SRC / "scripts" / "install-nextflow.sh")], capture_output=True, text=True, check=True)
    return res.stdout.strip().splitlines()[-1]


def run_nextflow(image: Path, tmp: Path, side: int, block: int, workers: int, blocks_per_task: int,
                 task_mem_gb: int) -> dict:
    launch = tmp / "nf"
    shutil.rmtree(launch, ignore_errors=True)
    launch.mkdir(parents=True)
    (launch / "scale.config").write_text(NF_CONFIG.format(mem=task_mem_gb, cpus=workers, total=workers * task_mem_gb))
    (launch / "samples.csv").write_text(f"sample,image\nscale,{image}\n")
    outdir = launch / "results"
    cmd = [nextflow_executable(), "run", str(SRC / "main.nf"), "-c", str(launch / "scale.config"),
           "--input", str(launch / "samples.csv"), "--outdir", str(outdir), "--threshold", str(THR),
           "--connectivity", "full", "--block_shape", str(block), "--halo", "8", "--blocks_per_task",
           str(blocks_per_task), "--output_format", "zarr", "--pictures", "false",
           "-with-trace", str(launch / "trace.txt")]
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", NXF_ANSI_LOG="false",
               NXF_HOME=str(launch / "nxf_home"), NXF_OFFLINE="true", NXF_DISABLE_CHECK_LATEST="true",
               OMP_NUM_THREADS="1")
    for var in ("NXF_WORK", "NXF_SYNTAX_PARSER", "PYTHONPATH"):
        env.pop(var, None)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=launch, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    with TreePSS(proc.pid, interval=0.5) as mem:
        log, _ = proc.communicate()
    wall = time.perf_counter() - t
    (launch / "nextflow-stdout.txt").write_text(log)
    if proc.returncode:
        raise RuntimeError(log[-4000:])
    with open(launch / "trace.txt", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    steps: dict = {}
    for row in rows:
        name = row["name"].split(" ")[0].split(":")[-1]
        s = steps.setdefault(name, {"tasks": 0, "max_peak_rss_mib": 0.0, "sum_realtime_s": 0.0,
                                    "max_realtime_s": 0.0})
        s["tasks"] += 1
        s["max_peak_rss_mib"] = max(s["max_peak_rss_mib"], to_mib(row.get("peak_rss", "")) or 0.0)
        rt = to_s(row.get("realtime", "")) or 0.0
        s["sum_realtime_s"] += rt
        s["max_realtime_s"] = max(s["max_realtime_s"], rt)
    work = launch / "work"
    staging = work / "pystitch-staging"
    sample = outdir / "scale"
    labels = sample / "labels.zarr"
    report = sample / "labels_report"
    return {"runner": "nextflow", "side": side, "voxels": side ** 3, "block": block, "workers": workers,
            "blocks_per_task": blocks_per_task, "task_memory_cap_gb": task_mem_gb,
            "command": " ".join(cmd[1:]), "wall_s": wall, "voxels_per_s": side ** 3 / wall,
            "peak_pss_whole_tree_mib": mem.peak / 2 ** 20, "tasks": len(rows), "steps": steps,
            **summary_steps(report),
            "work_dir": {"files": nfiles(work), "bytes": du(work)},
            "staging": {"files": nfiles(staging), "bytes": du(staging)}, "parts": parts_anywhere(work),
            "task_dirs": sum(1 for p in work.glob("*/*") if p.is_dir() and p.parent.name != "pystitch-staging"),
            "output": {"files": nfiles(labels), "bytes": du(labels)},
            "report": {"files": nfiles(report), "bytes": du(report)},
            "_labels": str(labels), "_report": str(report)}


def same_files(a: Path, b: Path) -> bool:
    """The same chunk files, byte for byte (the metadata differs: the pipeline's plan marks empty blocks at plan
    time, so its plan hash differs from the local runner's)."""
    fa = {str(p.relative_to(a)): p for p in a.rglob("*") if p.is_file() and p.name != "zarr.json"}
    fb = {str(p.relative_to(b)): p for p in b.rglob("*") if p.is_file() and p.name != "zarr.json"}
    if sorted(fa) != sorted(fb):
        return False
    return all(fa[k].read_bytes() == fb[k].read_bytes() for k in fa)


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="512,2048", help="cube sides for the local runner")
    ap.add_argument("--nextflow-sizes", default="512", help="cube sides also run with Nextflow ('' for none)")
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--blocks-per-task", type=int, default=0,
                    help="Nextflow --blocks_per_task (default: blocks/16, 1..64: some 16 tasks per batch step)")
    ap.add_argument("--task-memory-gb", type=int, default=8, help="Nextflow per-task memory cap (resourceLimits)")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--full-check-max", type=int, default=512, help="largest side labelled whole by scipy")
    ap.add_argument("--scratch", default="/tmp/pystitch-scale")
    ap.add_argument("--keep", action="store_true", help="keep the scratch data")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--name", default=f"scale-{dt.date.today().isoformat()}")
    args = ap.parse_args()
    stem = Path(args.out) / args.name
    results = json.loads(stem.with_suffix(".json").read_text()) if stem.with_suffix(".json").exists() else {}
    results.setdefault("runs", [])
    results["machine"] = machine()
    results["settings"] = {k: v for k, v in vars(args).items() if k not in ("out", "name")}
    results["settings"]["image"] = (f"uint16, zstd level 3 zarr, chunks {CHUNK}^3; background 100 + U[0,32), "
                                    f"foreground 1000 + U[0,32); spheres r {RMIN}..{RMAX} one per {CELL}^3 cell; "
                                    f"3x3 rods along x every {ROD_EVERY * CELL} voxels; threshold {THR}, "
                                    "full connectivity")
    nf_sizes = {int(s) for s in args.nextflow_sizes.split(",") if s}
    sides = sorted({int(s) for s in args.sizes.split(",") if s} | nf_sizes)
    local_sides = {int(s) for s in args.sizes.split(",") if s}
    scratch = Path(args.scratch)
    for side in sides:
        tmp = scratch / str(side)
        tmp.mkdir(parents=True, exist_ok=True)
        image = tmp / "input.zarr"
        done = tmp / "input.json"
        if done.exists() and json.loads(done.read_text())["seed"] == args.seed:
            gen = json.loads(done.read_text())  # written by an earlier invocation with --keep
        else:
            gen = dict(generate(image, side, args.seed, args.workers), seed=args.seed)
            done.write_text(json.dumps(gen))
        print(f"{side}^3 generated in {gen['seconds']:.1f} s, {gen['bytes'] / 2 ** 30:.2f} GiB", flush=True)
        local = None
        if side in local_sides:
            local = run_local(image, tmp, side, args.block, args.workers)
            local["input"] = gen
            print(f"{side}^3 local: {local['wall_s']:.1f} s, {local['peak_pss_mib']:.0f} MiB, "
                  f"{local['objects']} objects; checking", flush=True)
            t = time.perf_counter()
            local["check"] = check(image, tmp / "local" / "labels.zarr", tmp / "local" / "labels_report", side,
                                   args.seed, args.block, args.full_check_max)
            local["check"]["seconds"] = time.perf_counter() - t
            print(f"  check: {local['check']}", flush=True)
            save(results, local, stem)
        if side in nf_sizes:
            df("before nextflow")
            # room on disk: of the local run only its output is kept, for the comparison
            shutil.rmtree(tmp / "local" / "labels_work", ignore_errors=True)
            blocks = -(-side // args.block) ** 3
            per_task = args.blocks_per_task or min(64, max(1, -(-blocks // 16)))
            nf = run_nextflow(image, tmp, side, args.block, args.workers, per_task, args.task_memory_gb)
            nf["input"] = gen
            labels, report = Path(nf.pop("_labels")), Path(nf.pop("_report"))
            print(f"{side}^3 nextflow: {nf['wall_s']:.1f} s, {nf['tasks']} tasks, {nf['objects']} objects; checking",
                  flush=True)
            t = time.perf_counter()
            nf["check"] = check(image, labels, report, side, args.seed, args.block, args.full_check_max)
            if (tmp / "local" / "labels.zarr").exists():
                same = {"same_regions_csv_as_local": (report / "regions.csv").read_bytes()
                        == (tmp / "local" / "labels_report" / "regions.csv").read_bytes(),
                        "same_label_chunks_as_local": same_files(labels, tmp / "local" / "labels.zarr")}
                nf["check"].update(same, ok=nf["check"]["ok"] and all(same.values()))
            nf["check"]["seconds"] = time.perf_counter() - t
            print(f"  check: {nf['check']}", flush=True)
            save(results, nf, stem)
        df(f"after {side}")
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    write_md(results, stem)


def df(what: str) -> None:
    st = shutil.disk_usage("/")
    print(f"[disk {what}: {st.free / 2 ** 30:.1f} GiB free]", flush=True)


def machine() -> dict:
    import psutil

    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2 ** 30, 1), "python": platform.python_version(),
            "platform": platform.platform(), "load_average": os.getloadavg()}


def save(results: dict, run: dict, stem: Path) -> None:
    run["load_average_after"] = os.getloadavg()  # 1, 5, 15 min: other work on the machine during the run
    results["runs"] = [r for r in results["runs"] if (r["runner"], r["side"]) != (run["runner"], run["side"])]
    results["runs"].append(run)
    results["runs"].sort(key=lambda r: (r["runner"], r["side"]))
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1, default=float))
    write_md(results, stem)


def _mem(r: dict) -> float:
    """Local runner: peak PSS of the whole run; Nextflow: the largest task's peak_rss."""
    return r.get("peak_pss_mib") or max((s["max_peak_rss_mib"] for s in r.get("steps", {}).values()), default=0)


def _created(r: dict) -> int:
    return (r["work"]["total"]["files"] + r["output"]["files"] + r["report"]["files"] if r["runner"] == "local"
            else r["work_dir"]["files"] + r["output"]["files"] + r["report"]["files"])


def _parts(r: dict) -> dict:
    return r["work"] if r["runner"] == "local" else r["parts"]


def _resolve(r: dict) -> tuple[float, float]:
    """Seconds and memory (MiB) of resolve: the run's own step time and the rerun's max RSS (local), the
    RESOLVE task's realtime and peak_rss (Nextflow)."""
    if r["runner"] == "local":
        return r["timings_seconds"]["resolve"], r["resolve_rerun"]["max_rss_mib"]
    s = r["steps"]["RESOLVE"]
    return s["max_realtime_s"], s["max_peak_rss_mib"]


ROWS = [
    ("wall time (s)", lambda r: r["wall_s"], "{:.1f}"),
    ("voxels/s", lambda r: r["voxels_per_s"], "{:.3g}"),
    ("peak memory (MiB; local: PSS of the whole run, Nextflow: largest task peak_rss)", _mem, "{:.0f}"),
    ("objects", lambda r: r["objects"], "{:d}"),
    ("provisional ids", lambda r: r["provisional_objects"], "{:d}"),
    ("pairs", lambda r: r["pairs"], "{:d}"),
    ("blocks (empty)", lambda r: f"{r['blocks']} ({r['empty_blocks']})", "{}"),
    ("tasks (blocks per batch task)", lambda r: f"{r['tasks']} ({r['blocks_per_task']})" if "tasks" in r else "-",
     "{}"),
    ("peak PSS of the whole process tree MiB (Nextflow: with its JVM)",
     lambda r: r.get("peak_pss_mib") or r["peak_pss_whole_tree_mib"], "{:.0f}"),
    ("files created (work + output + report)", _created, "{:d}"),
    ("output files / MiB", lambda r: f"{r['output']['files']} / {r['output']['bytes'] / 2 ** 20:.0f}", "{}"),
    ("plan files / KiB", lambda r: (lambda p: f"{p['files']} / {p['bytes'] / 1024:.1f}")(
        _parts(r).get("plan.json") or _parts(r)["plan"]), "{}"),
    ("manifests files / KiB", lambda r: f"{_parts(r)['manifests']['files']} / "
                                        f"{_parts(r)['manifests']['bytes'] / 1024:.0f}", "{}"),
    ("pairs files / KiB", lambda r: f"{_parts(r)['pairs']['files']} / {_parts(r)['pairs']['bytes'] / 1024:.0f}",
     "{}"),
    ("lut files / KiB", lambda r: f"{_parts(r)['lut.zarr']['files']} / {_parts(r)['lut.zarr']['bytes'] / 1024:.0f}",
     "{}"),
    ("staging files / MiB", lambda r: f"{_parts(r)['staging.zarr']['files']} / "
                                      f"{_parts(r)['staging.zarr']['bytes'] / 2 ** 20:.0f}", "{}"),
    ("resolve s", lambda r: _resolve(r)[0], "{:.2f}"),
    ("resolve memory MiB", lambda r: _resolve(r)[1], "{:.0f}"),
    ("check", lambda r: r["check"].get("ok"), "{}"),
]


def write_md(results: dict, stem: Path) -> None:
    """Tables of every run (runner x size, growth factor from the smallest to the largest size); the discussion
    is written by hand below the marker and kept when the tables are rewritten."""
    runs = results["runs"]
    lines = [f"<!-- generated by benchmarks/scale.py from {stem.name}.json -->", ""]
    for runner in ("local", "nextflow"):
        rs = sorted((r for r in runs if r["runner"] == runner), key=lambda r: r["side"])
        if not rs:
            continue
        head = " | ".join(f"{r['side']}³ ({r['voxels']:.2g} voxels)" for r in rs)
        grow = len(rs) > 1
        how = (f"pystitch run, {results['settings']['workers']} workers" if runner == "local" else
               f"main.nf, local executor with {results['settings']['workers']} CPUs, one per task")
        lines += [f"**{runner}** ({how}, blocks {rs[0]['block']}³, halo 8)", "",
                  f"| | {head} |" + (" growth |" if grow else ""),
                  "|---|" + "---|" * len(rs) + ("---|" if grow else "")]
        for label, fn, fmt in ROWS:
            vals = []
            for r in rs:
                try:
                    vals.append(fn(r))
                except (KeyError, TypeError):
                    vals.append(None)
            cells = [fmt.format(v) if v is not None else "-" for v in vals]
            g = ""
            if grow:
                a, b = vals[0], vals[-1]
                g = f" {b / a:.2f}× |" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a and \
                    not isinstance(a, bool) else " |"
            lines.append(f"| {label} | " + " | ".join(cells) + " |" + g)
        lines.append("")
    nf = [r for r in runs if r["runner"] == "nextflow"]
    if nf:
        lines += ["Nextflow per step (trace: tasks, largest peak_rss MiB, longest and summed realtime s):", "",
                  "| image | " + " | ".join(nf[0]["steps"]) + " |", "|---|" + "---|" * len(nf[0]["steps"])]
        for r in sorted(nf, key=lambda r: r["side"]):
            lines.append(f"| {r['side']}³ | " + " | ".join(
                f"{s['tasks']}, {s['max_peak_rss_mib']:.0f}, {s['max_realtime_s']:.1f}, {s['sum_realtime_s']:.1f}"
                for s in (r["steps"].get(k, {"tasks": 0, "max_peak_rss_mib": 0, "max_realtime_s": 0,
                                             "sum_realtime_s": 0}) for k in nf[0]["steps"])) + " |")
        lines.append("")
    loc = [r for r in runs if r["runner"] == "local"]
    if loc:
        keys = ["plan", "segment", "face_pairs", "resolve", "apply_lut"]
        lines += ["Local runner per step (summary.json `timings_seconds`, s; finalize: `finalize_seconds`):", "",
                  "| image | " + " | ".join(keys) + " | finalize |", "|---|" + "---|" * (len(keys) + 1)]
        for r in sorted(loc, key=lambda r: r["side"]):
            t = r["timings_seconds"]
            lines.append(f"| {r['side']}³ | " + " | ".join(f"{t.get(k, 0):.2f}" for k in keys) +
                         f" | {r['finalize_seconds']:.2f} |")
        lines.append("")
    table = "\n".join(lines) + "\n"
    md = stem.with_suffix(".md")
    marker = "<!-- end of generated tables -->"
    rest = md.read_text().split(marker, 1)[1] if md.exists() and marker in md.read_text() else "\n"
    md.write_text(table + marker + rest)


if __name__ == "__main__":
    main()
