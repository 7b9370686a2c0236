"""pystitch benchmark suite: kernels vs references, the merge vs the I/O floor,
end to end vs peers, and scale curves.  Every comparison is a ratio measured
in the same run on the same data.

    python benchmarks/run.py                 # sizes 128^3, 256^3, 512^3 and an 8192^2 image
    python benchmarks/run.py --quick         # small sizes, a minute or two

Writes ``benchmarks/results/<date>-<host>.md`` (tables, machine, date) and a
PNG plot next to it, after every section.  ``make bench`` installs\n``benchmarks/requirements.txt`` and runs it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zarr
from scipy import ndimage

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import pystitch  # noqa: E402
from pystitch import reference  # noqa: E402
from pystitch._core import apply_lut_array, contingency  # noqa: E402
from pystitch.steps.resolve import final_lut  # noqa: E402

THR = 500


# --------------------------------------------------------------------------- measuring


def best_of(fn: Callable[[], Any], repeat: int = 3) -> float:
    """Smallest wall time of ``repeat`` calls (seconds)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


class TreeMemory:
    """Peak summed RSS of a process and all its descendants (polled)."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
                rss = 0
                for p in procs:
                    try:
                        rss += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, rss)
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def run_child(code: str, env: dict | None = None, timeout: float = 900) -> tuple[float, float, str]:
    """Run python ``code`` in a child process: (wall seconds, peak tree RSS MiB, stdout)."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})
    with TreeMemory(proc.pid) as mem:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError(f"benchmark child timed out after {timeout:.0f} s") from None
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed (exit {proc.returncode}, peak {mem.peak / 2**20:.0f} MiB):\n"
                           f"{err[-3000:]}")
    return wall, mem.peak / 2 ** 20, out


# --------------------------------------------------------------------------- data


def volume(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Seeded synthetic blobs (uint16): smoothed noise thresholded into objects."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 3.0)
    objects = field > np.quantile(field[::4, ::4] if field.ndim == 2 else field[::4, ::4, ::4], 0.8)
    image = 100 + 900 * objects.astype(np.uint16) + rng.integers(0, 60, size=shape, dtype=np.uint16)
    return image.astype(np.uint16)


def write_input(path: Path, image: np.ndarray, chunks: tuple[int, ...]) -> str:
    arr = zarr.create_array(store=str(path), shape=image.shape, chunks=chunks, dtype=image.dtype, overwrite=True)
    arr[:] = image
    return str(path)


def partition_equivalent(a: np.ndarray, b: np.ndarray) -> bool:
    fg = a > 0
    if not np.array_equal(fg, b > 0):
        return False
    pairs = np.unique(np.stack([a[fg].astype(np.uint64), b[fg].astype(np.uint64)]), axis=1)
    return pairs.shape[1] == len(np.unique(a[fg])) == len(np.unique(b[fg]))


# --------------------------------------------------------------------------- sections


def bench_apply_lut(side: int, rows: list[dict]) -> None:
    import fastremap

    image = volume((side,) * 3, seed=1)
    base = ndimage.label(image > THR)[0].astype(np.uint32)
    n = int(base.max())
    rng = np.random.default_rng(0)
    for kind in ("dense", "sparse"):
        labels = base if kind == "dense" else (base.astype(np.uint64) * 7919).astype(np.uint32)
        top = int(labels.max())
        for dtype in (np.uint32, np.uint64):
            lab = labels.astype(dtype)
            lut = np.zeros(top + 1, dtype=np.uint32)
            lut[np.unique(lab)] = rng.permutation(n + 1).astype(np.uint32)
            buf = np.empty(lab.shape, lut.dtype)
            t_ours = best_of(lambda: apply_lut_array(lab, lut))
            t_ours_buf = best_of(lambda: apply_lut_array(lab, lut, out=buf))
            t_np = best_of(lambda: lut[lab])
            t_np_buf = t_np  # numpy's best into a buffer (take refuses uint64 indices)
            if lab.dtype != np.uint64:
                t_np_buf = min(t_np, best_of(lambda: np.take(lut, lab, out=buf)))
            mapping = {int(k): int(lut[k]) for k in np.unique(lab)}
            t_fr = best_of(lambda: fastremap.remap(lab, mapping, preserve_missing_labels=True), repeat=2)
            rows.append({"section": "apply-lut", "case": f"{side}^3 {kind} lut, {np.dtype(dtype).name} labels "
                                                        f"({n} objects)",
                         "pystitch_s": t_ours, "numpy_s": t_np, "fastremap_s": t_fr,
                         "vs_numpy": t_np / t_ours, "vs_fastremap": t_fr / t_ours,
                         "pystitch_into_buffer_s": t_ours_buf, "numpy_into_buffer_s": t_np_buf,
                         "vs_numpy_into_buffer": t_np_buf / t_ours_buf})


def bench_resolve(sizes: list[int], rows: list[dict]) -> None:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(0)
    for m in sizes:
        n = 2 * m
        # realistic structure: chains of ids joined across seams, plus random pairs
        pairs = rng.integers(1, n + 1, size=(m, 2), dtype=np.uint64)

        def ours():
            chunks, n_final, _ = final_lut(n, pairs)
            for _ in chunks:
                pass

        def scipy_cc():
            g = coo_matrix((np.ones(m, np.int8), (pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64))),
                           shape=(n + 1, n + 1))
            connected_components(g, directed=False)

        t_ours = best_of(ours, repeat=2)
        t_sc = best_of(scipy_cc, repeat=2)
        rows.append({"section": "resolve", "case": f"{m:.0e} pairs, {n:.0e} objects", "pystitch_s": t_ours,
                     "scipy_s": t_sc, "vs_scipy": t_sc / t_ours})


def bench_contingency(rows: list[dict]) -> None:
    image = volume((48, 288, 288), seed=2)
    a = ndimage.label(image[:16] > THR)[0].astype(np.uint32)
    b = a.copy()
    b[b > 0] += 3  # the neighbour's ids differ
    t_ours = best_of(lambda: contingency(a, b))
    t_ref = best_of(lambda: reference.contingency(a, b))
    rows.append({"section": "face-pairs contingency", "case": f"slab {a.shape}", "pystitch_s": t_ours,
                 "numpy_s": t_ref, "vs_numpy": t_ref / t_ours})


def bench_merge_vs_io_floor(side: int, block: int, tmp: Path, rows: list[dict]) -> None:
    """Everything except the segmenter vs reading the staging labels once and
    writing the output once with the same codec and chunking (one process)."""
    image = volume((side,) * 3, seed=3)
    src = write_input(tmp / f"merge{side}.zarr", image, (block,) * 3)
    out = tmp / f"merge{side}-out.zarr"
    plan = pystitch.plan_blocks(src, out, block_shape=block, halo=2, backend_options={"threshold": THR},
                                work_dir=tmp / f"merge{side}-work", output_format="ome-zarr", pyramid_levels=1)
    pystitch.segment_blocks(plan, "all")
    ids = plan.work_blocks()

    t = time.perf_counter()
    pystitch.face_pairs(plan, ids)
    t_pairs = time.perf_counter() - t
    t = time.perf_counter()
    pystitch.resolve(plan)
    t_resolve = time.perf_counter() - t
    t = time.perf_counter()
    pystitch.apply_lut(plan, ids)
    t_apply = time.perf_counter() - t
    merge = t_pairs + t_resolve + t_apply

    # the floor: every staging label read once (cores and face slabs), the output
    # written once with the same codec and chunks, with the overlap of reads and
    # writes apply-lut uses
    from pystitch.storage.zarrs import LABEL_CODEC, WriteBehind, read_ahead
    from pystitch.grid import SIDES
    from pystitch.storage.staging import Staging

    staging = Staging(plan.staging_uri, plan.grid, plan.hash)
    floor_out = zarr.create_array(store=str(tmp / f"floor{side}.zarr"), shape=plan.shape, chunks=plan.block_shape,
                                  dtype=np.uint32, fill_value=0, compressors=[LABEL_CODEC], overwrite=True)

    def write(b: int, data: np.ndarray) -> None:
        floor_out[plan.grid.core(b)] = data

    t = time.perf_counter()
    with WriteBehind() as writer:
        for b, data in read_ahead(ids, staging.read_core):
            writer.submit(write, b, data)
    floor_core = time.perf_counter() - t
    t = time.perf_counter()
    for b in ids:
        staging.read_slabs([(b, axis, side) for axis in plan.grid.split_axes() for side in SIDES])
    floor_slabs = time.perf_counter() - t
    floor = floor_core + floor_slabs
    rows.append({"section": "merge vs I/O floor", "case": f"{side}^3, blocks {block}^3, 1 process",
                 "face_pairs_s": t_pairs, "resolve_s": t_resolve, "apply_lut_s": t_apply, "merge_s": merge,
                 "floor_cores_and_output_s": floor_core, "floor_face_slabs_s": floor_slabs, "io_floor_s": floor,
                 "merge_over_floor": merge / floor})
    shutil.rmtree(tmp / f"floor{side}.zarr", ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(tmp / f"merge{side}-work", ignore_errors=True)


END_TO_END = {
    "pystitch": """
import pystitch
s = pystitch.run({src!r}, {out!r} + '/pystitch.zarr', block_shape={block}, halo=1, threshold={thr}, workers=2,
                 progress=False, pictures=False, output_format='zarr')
""",
    "dask-image": """
import dask, dask.array as da, zarr
from dask_image import ndmeasure
img = da.from_zarr(zarr.open_array({src!r}, mode='r'))
lab, n = ndmeasure.label(img > {thr})
with dask.config.set(scheduler='threads', num_workers=2):
    da.to_zarr(lab.astype('uint32'), {out!r} + '/dask.zarr', overwrite=True)
""",
    "patchworks": """
import numpy as np, dask.array as da, zarr
from scipy import ndimage
from patchworks import tile_process
def seg(tile):
    return ndimage.label(tile > {thr})[0].astype(np.uint32)
img = da.from_zarr(zarr.open_array({src!r}, mode='r'))
tile_process(img, seg, tile_shape=({block},) * img.ndim, overlap=1, channel=None, max_workers=2, progress=False,
             write_to={out!r} + '/patchworks.zarr', pyramid_levels=1, stitch='touch', sequential_labels=True)
""",
    "scipy (whole image in memory)": """
import numpy as np, zarr
from scipy import ndimage
img = zarr.open_array({src!r}, mode='r')[:]
zarr.save_array({out!r} + '/scipy.zarr', ndimage.label(img > {thr})[0].astype(np.uint32))
""",
}


def _read_result(out: Path, name: str) -> np.ndarray | None:
    for cand in (out / f"{name}.zarr", out / "patchworks.zarr"):
        if cand.exists():
            node = zarr.open(str(cand), mode="r")
            if isinstance(node, zarr.Group):
                arrays = [k for k, v in node.arrays()]
                node = node["labels"] if "labels" in arrays else node[arrays[0]]
                while isinstance(node, zarr.Group):
                    node = node[sorted(k for k, _ in node.arrays())[0]]
            return node[:]
    return None


def bench_end_to_end(shape: tuple[int, ...], block: int, tmp: Path, rows: list[dict]) -> None:
    image = volume(shape, seed=4)
    name = "x".join(map(str, shape))
    src = write_input(tmp / f"e2e{name}.zarr", image, (block,) * len(shape))
    ref = ndimage.label(image > THR)[0]
    del image
    case = f"{name}, blocks {block}^{len(shape)}, 2 workers"
    for tool, code in END_TO_END.items():
        out = tmp / f"e2e{name}-{tool.split()[0]}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        try:
            wall, mem, _ = run_child(code.format(src=src, out=str(out), block=block, thr=THR))
        except RuntimeError as exc:
            rows.append({"section": "end to end", "case": case, "tool": tool, "error": str(exc)[-300:]})
            continue
        key = {"pystitch": "pystitch", "dask-image": "dask", "patchworks": "patchworks"}.get(tool, "scipy")
        result = _read_result(out, key)
        same = bool(result is not None and partition_equivalent(result, ref))
        shutil.rmtree(out, ignore_errors=True)
        rows.append({"section": "end to end", "case": case, "tool": tool, "wall_s": wall, "peak_rss_mib": mem,
                     "same_answer_as_scipy": same})


def bench_scale(sides: list[int], block: int, tmp: Path, rows: list[dict]) -> None:
    for side in sides:
        image = volume((side,) * 3, seed=5)
        src = write_input(tmp / f"scale{side}.zarr", image, (block,) * 3)
        code = END_TO_END["pystitch"].format(src=src, out=str(tmp / f"scale{side}"), block=block, thr=THR)
        (tmp / f"scale{side}").mkdir(exist_ok=True)
        wall, mem, _ = run_child(code)
        task = _task_peak(src, tmp, side, block)
        rows.append({"section": "scale", "case": f"{side}^3", "voxels": side ** 3, "wall_s": wall,
                     "mvoxels_per_s": side ** 3 / wall / 1e6, "tree_peak_rss_mib": mem,
                     "task_peak_rss_mib": task})


def _task_peak(src: str, tmp: Path, side: int, block: int) -> float:
    """Peak RSS of one segment-block + face-pairs + apply-lut task (one block)."""
    work = tmp / f"task{side}"
    plan = pystitch.plan_blocks(src, tmp / f"task{side}.zarr", block_shape=block, halo=1,
                                backend_options={"threshold": THR}, work_dir=work, overwrite=True)
    pystitch.segment_blocks(plan, "all")
    pystitch.face_pairs(plan, "all")
    pystitch.resolve(plan)
    mid = plan.n_blocks // 2
    code = f"""
import pystitch, resource
plan = pystitch.Plan.load({str(plan.plan_path)!r})
pystitch.segment_blocks(plan, [{mid}], manifest_dir={str(tmp / 'm')!r})
pystitch.face_pairs(plan, [{mid}], out={str(tmp / 'p.npz')!r})
pystitch.apply_lut(plan, [{mid}], out={str(tmp / 's.npz')!r})
"""
    _, mem, _ = run_child(code)
    return mem


def bench_resolve_memory(counts: list[int], rows: list[dict]) -> None:
    for n in counts:
        code = f"""
import numpy as np
from pystitch.steps.resolve import final_lut
rng = np.random.default_rng(0)
pairs = rng.integers(1, {n} + 1, size=({n} // 10, 2), dtype=np.uint64)
chunks, n_final, _ = final_lut({n}, pairs)
for c in chunks:
    pass
"""
        wall, mem, _ = run_child(code)
        rows.append({"section": "resolve memory", "case": f"{n:.0e} objects, {n // 10:.0e} pairs",
                     "objects": n, "wall_s": wall, "peak_rss_mib": mem})


# --------------------------------------------------------------------------- report


def machine() -> dict:
    import psutil

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2 ** 30, 1),
            "python": platform.python_version(), "numpy": np.__version__, "zarr": zarr.__version__,
            "pystitch": pystitch.__version__, "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M")}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def targets(rows: list[dict]) -> list[dict]:
    """Each target of the suite next to what this run measured."""
    out = []

    def sec(name: str) -> list[dict]:
        return [r for r in rows if r["section"] == name]

    lut = sec("apply-lut")
    if lut:
        worst = min(r["vs_numpy"] for r in lut)
        out.append({"target": "apply-lut >= 2x numpy lut[labels], each allocating its output", "measured":
                    f"{worst:.2f}x to {max(r['vs_numpy'] for r in lut):.2f}x "
                    f"(vs fastremap {min(r['vs_fastremap'] for r in lut):.1f}x to "
                    f"{max(r['vs_fastremap'] for r in lut):.1f}x)", "met": worst >= 2})
        if all("vs_numpy_into_buffer" in r for r in lut):
            worst = min(r["vs_numpy_into_buffer"] for r in lut)
            out.append({"target": "apply-lut >= 2x numpy, both writing into an existing buffer", "measured":
                        f"{worst:.2f}x to {max(r['vs_numpy_into_buffer'] for r in lut):.2f}x", "met": worst >= 2})
    res = sec("resolve")
    if res:
        worst = min(r["vs_scipy"] for r in res)
        out.append({"target": "resolve >= 3x scipy connected_components", "measured":
                    f"{worst:.1f}x to {max(r['vs_scipy'] for r in res):.1f}x", "met": worst >= 3})
    for r in sec("merge vs I/O floor"):
        out.append({"target": f"whole merge <= 1.5x the I/O floor ({r['case']})",
                    "measured": f"{r['merge_over_floor']:.2f}x ({r['merge_s']:.2f} s vs {r['io_floor_s']:.2f} s)",
                    "met": r["merge_over_floor"] <= 1.5})
    for case in dict.fromkeys(r["case"] for r in sec("end to end")):
        sub = [r for r in sec("end to end") if r["case"] == case]
        ours = [r for r in sub if r["tool"] == "pystitch" and "wall_s" in r]
        peers = [r for r in sub if r["tool"] != "pystitch" and not r["tool"].startswith("scipy") and "wall_s" in r]
        failed = [r["tool"] for r in sub if "error" in r]
        if not ours:
            out.append({"target": f"end to end ({case})", "measured": "pystitch failed", "met": False})
            continue
        fastest = min(peers, key=lambda r: r["wall_s"]) if peers else None
        speedup = fastest["wall_s"] / ours[0]["wall_s"] if fastest else float("inf")
        text = (f"{speedup:.2f}x the speed of {fastest['tool']}, the fastest peer ({ours[0]['wall_s']:.1f} s vs "
                f"{fastest['wall_s']:.1f} s)" if fastest else "no peer finished")
        if failed:
            text += f"; did not finish: {', '.join(failed)}"
        out.append({"target": f"end to end >= 2x the fastest peer, same answer ({case})", "measured": text,
                    "met": speedup >= 2 and bool(ours[0]["same_answer_as_scipy"])})
    scale = sec("scale")
    if len(scale) > 1:
        mems = [r["task_peak_rss_mib"] for r in scale]
        growth = mems[-1] / mems[0]
        vox = scale[-1]["voxels"] / scale[0]["voxels"]
        out.append({"target": "peak memory of a task independent of volume size", "measured":
                    f"{mems[0]:.0f} -> {mems[-1]:.0f} MiB ({growth:.2f}x) for {vox:.0f}x the voxels",
                    "met": growth <= 1.25})
    return out


def to_markdown(rows: list[dict], info: dict) -> str:
    lines = [f"# pystitch benchmarks — {info['date']}", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM; Python {info['python']}, "
             f"numpy {info['numpy']}, zarr {info['zarr']}, pystitch {info['pystitch']}.", ""]
    goals = targets(rows)
    if goals:
        lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {g['target']} | {g['measured']} | {'yes' if g['met'] else 'no'} |" for g in goals]
        lines.append("")
    for section in dict.fromkeys(r["section"] for r in rows):
        sub = [r for r in rows if r["section"] == section]
        cols = list(dict.fromkeys(k for r in sub for k in r if k != "section"))
        lines += [f"## {section}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in sub]
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    scale = [r for r in rows if r["section"] == "scale"]
    if scale:
        v = [r["voxels"] for r in scale]
        axes[0].loglog(v, [r["wall_s"] for r in scale], "o-", label="wall time")
        axes[0].loglog(v, [v[0] and scale[0]["wall_s"] * x / v[0] for x in v], "--", label="linear")
        axes[0].set(xlabel="voxels", ylabel="seconds", title="pystitch run (threshold), 2 workers")
        axes[0].legend()
        axes[1].semilogx(v, [r["task_peak_rss_mib"] for r in scale], "o-", label="one task")
        axes[1].semilogx(v, [r["tree_peak_rss_mib"] for r in scale], "s-", label="whole run")
        axes[1].set(xlabel="voxels", ylabel="peak RSS (MiB)", title="memory vs volume")
        axes[1].legend()
    e2e = [r for r in rows if r["section"] == "end to end" and "wall_s" in r]
    e2e = [r for r in e2e if r["case"] == e2e[0]["case"]] if e2e else []
    if e2e:
        axes[2].barh([r["tool"] for r in e2e], [r["wall_s"] for r in e2e])
        axes[2].set_xscale("log")
        axes[2].set(xlabel="seconds (log)", title=e2e[0]["case"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_results(rows: list[dict], info: dict, stem: Path) -> None:
    stem.with_suffix(".md").write_text(to_markdown(rows, info))
    stem.with_suffix(".json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1, default=str))
    plot(rows, stem.with_suffix(".png"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes only")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--sections", default="kernels,merge,e2e,e2e2d,scale,memory")
    ap.add_argument("--render", metavar="JSON", help="only rewrite the .md and .png of an earlier run's .json")
    args = ap.parse_args()
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        write_results(saved["rows"], saved["machine"], Path(args.render).with_suffix(""))
        print(Path(args.render).with_suffix(".md"))
        return
    sections = set(args.sections.split(","))
    sides = [64, 128] if args.quick else [128, 256, 512]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / (f"{dt.date.today().isoformat()}-{platform.node() or 'host'}" + ("-quick" if args.quick else ""))
    info = machine()
    rows: list[dict] = []
    steps: list[tuple[str, Callable[[], None]]] = [
        ("kernels", lambda: (bench_apply_lut(128 if args.quick else 256, rows),
                             bench_resolve([10 ** 5, 10 ** 6] if args.quick else [10 ** 6, 10 ** 7, 10 ** 8], rows),
                             bench_contingency(rows))),
        ("merge", lambda: [bench_merge_vs_io_floor(sides[-1], block, tmp, rows) for block in (64, 128)]),
        ("e2e", lambda: bench_end_to_end((sides[-1],) * 3, 128, tmp, rows)),
        ("e2e2d", lambda: bench_end_to_end((2048, 2048) if args.quick else (8192, 8192), 1024, tmp, rows)),
        ("scale", lambda: bench_scale(sides, 64, tmp, rows)),
        ("memory", lambda: bench_resolve_memory([10 ** 5, 10 ** 6] if args.quick else [10 ** 6, 10 ** 7, 10 ** 8],
                                                rows)),
    ]
    tmp = Path(tempfile.mkdtemp(prefix="pystitch-bench-"))
    try:
        for name, step in steps:
            if name in sections:
                print(f"[bench] {name}", flush=True)
                step()
                write_results(rows, info, stem)  # after every section: an interrupted run keeps what it measured
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(stem.with_suffix(".md"))


if __name__ == "__main__":
    main()
