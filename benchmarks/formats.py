"""Input formats: the segment step on a plane sequence against the same image
as zarr, and convert-then-segment against segmenting the planes directly.

    python benchmarks/formats.py            # 128 x 1024 x 1024 uint16 (256 MiB), 32 blocks
    python benchmarks/formats.py --quick    # 64 x 512 x 512

Each row is the segment step (threshold + connected components, staging
writes and manifests included) of one task over every block, in this process,
best of ``--repeat``; the ratio is to the zarr input measured in the same run.
Writes ``benchmarks/results/<date>-<host>-formats.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import zarr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import pystitch  # noqa: E402
from pystitch.steps.segment_block import BlockSegmenter  # noqa: E402
from pystitch.storage.images import open_image  # noqa: E402
from run import machine, volume  # noqa: E402

THR = 500


def segment_task(image: str, tmp: Path, block: tuple, halo: tuple, **options) -> tuple[float, dict]:
    """Plan, then time one segment task over every block (the image opened once, as a task does)."""
    out = tmp / f"labels-{time.monotonic_ns()}.zarr"
    plan = pystitch.plan_blocks(image, out, block_shape=block, halo=halo, backend="threshold",
                                backend_options={"threshold": THR}, skip_empty=False, **options)
    t = time.perf_counter()
    with BlockSegmenter(plan) as seg:
        for b in range(plan.n_blocks):
            seg.segment(b, plan.manifest_dir)
        opened = getattr(seg.source.array, "opened", None)
    seconds = time.perf_counter() - t
    info = {"blocks": plan.n_blocks}
    if opened is not None:
        info["file_openings_per_file"] = sorted(set(opened.values()))
    shutil.rmtree(plan.work_dir, ignore_errors=True)
    return seconds, info


def naive_sequence_read(files: list[str], block: tuple, halo: tuple, shape: tuple) -> float:
    """tifffile's own sequence store (one chunk per file: every read opens and decodes whole
    files) read block by block through the same chunk cache: the reading alone."""
    from pystitch.storage.images import ChunkCache, cache_capacity

    arr = zarr.open(store=tifffile.TiffSequence(files).aszarr(), mode="r")
    cache = ChunkCache(cache_capacity())
    t = time.perf_counter()
    for z in range(0, shape[0], block[0]):
        for y in range(0, shape[1], block[1]):
            for x in range(0, shape[2], block[2]):
                region = tuple(slice(max(0, s - h), min(n, s + b + h))
                               for s, b, h, n in zip((z, y, x), block, halo, shape))
                cache.read(arr, region)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="workers of convert")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    shape = (64, 512, 512) if args.quick else (128, 1024, 1024)
    block, halo = (64, 256, 256), (8, 16, 16)
    img = volume(shape, seed=1)
    rows: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="pystitch-formats-"))
    try:
        zarr_path = str(tmp / "image.zarr")
        zarr.create_array(store=zarr_path, shape=shape, chunks=(32, 128, 128), dtype=img.dtype)[:] = img
        raw = tmp / "raw"
        strips = tmp / "strips"
        whole = tmp / "whole"
        for folder in (raw, strips, whole):
            folder.mkdir()
        for z, plane in enumerate(img):
            tifffile.imwrite(raw / f"plane_{z}.tif", plane)
            tifffile.imwrite(strips / f"plane_{z}.tif", plane, compression="zlib", rowsperstrip=32)
            tifffile.imwrite(whole / f"plane_{z}.tif", plane, compression="zlib")
        inputs = {
            "zarr (chunks 32,128,128, zstd)": zarr_path,
            "TIFF planes, uncompressed (memory-mapped)": str(raw / "plane_*.tif"),
            "TIFF planes, zlib, 32-row strips": str(strips / "plane_*.tif"),
            "TIFF planes, zlib, one strip per plane": str(whole / "plane_*.tif"),
        }
        base = None
        for name, image in inputs.items():
            times, info = [], {}
            for _ in range(args.repeat):
                seconds, info = segment_task(image, tmp, block, halo)
                times.append(seconds)
            best = min(times)
            base = base or best
            rows.append({"input": name, "segment_s": round(best, 3), "ratio_to_zarr": round(best / base, 2), **info})
            print(rows[-1], flush=True)
        files = sorted((str(p) for p in raw.glob("*.tif")), key=lambda f: int(Path(f).stem.split("_")[1]))
        t_naive = min(naive_sequence_read(files, block, halo, shape) for _ in range(args.repeat))
        src = open_image(str(raw / "plane_*.tif"))
        t = time.perf_counter()
        for z in range(0, shape[0], block[0]):
            for y in range(0, shape[1], block[1]):
                for x in range(0, shape[2], block[2]):
                    src.read(tuple(slice(max(0, s - h), min(n, s + b + h))
                                   for s, b, h, n in zip((z, y, x), block, halo, shape)))
        t_ours = time.perf_counter() - t
        src.close()
        rows.append({"input": "reading only: tifffile TiffSequence store (one chunk per file) vs PlaneStack",
                     "tifffile_store_s": round(t_naive, 3), "planestack_s": round(t_ours, 3)})
        print(rows[-1], flush=True)
        # convert first, then segment the OME-Zarr: what a pipeline would do instead of reading planes
        for name, image in list(inputs.items())[1:]:
            out = tmp / f"conv-{time.monotonic_ns()}.ome.zarr"
            t = time.perf_counter()
            pystitch.convert(image, out, workers=args.workers, progress=False, pyramid_levels=1)
            t_conv = time.perf_counter() - t
            seconds, _ = segment_task(str(out), tmp, block, halo)
            rows.append({"input": f"convert ({args.workers} workers) then segment: {name}",
                         "convert_s": round(t_conv, 3), "segment_s": round(seconds, 3),
                         "total_s": round(t_conv + seconds, 3)})
            print(rows[-1], flush=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info = {"machine": machine(), "date": dt.datetime.now().isoformat(timespec="seconds"), "shape": list(shape),
            "dtype": "uint16", "block": list(block), "halo": list(halo), "repeat": args.repeat}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{dt.date.today().isoformat()}-{os.uname().nodename}-formats"
    stem.with_suffix(".json").write_text(json.dumps({"info": info, "rows": rows}, indent=2))
    lines = [f"# Input formats: segment step — {info['date']}", "",
             f"Machine: {json.dumps(info['machine'])}", "",
             f"Image {shape} uint16, blocks {block}, halo {halo}; one task over every block, best of "
             f"{args.repeat}; threshold backend.", "", "| input | seconds | ratio to zarr | notes |", "|---|---|---|---|"]
    for r in rows:
        if "ratio_to_zarr" in r:
            note = f"openings per file: {r['file_openings_per_file']}" if "file_openings_per_file" in r else ""
            lines.append(f"| {r['input']} | {r['segment_s']} | {r['ratio_to_zarr']} | {note} |")
    lines += ["", "| other | seconds |", "|---|---|"]
    for r in rows:
        if "ratio_to_zarr" not in r:
            lines.append(f"| {r['input']} | {', '.join(f'{k} {v}' for k, v in r.items() if k != 'input')} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(stem.with_suffix(".md"))


if __name__ == "__main__":
    main()
