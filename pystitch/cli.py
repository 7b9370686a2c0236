"""Command-line shells over the step functions (python-fire).

The commands hold no logic: they coerce their arguments explicitly (fire
types values by their look: ``7`` is an int, ``0,1,2`` a tuple, ``007`` a
string), configure logging, call one library function and exit.  Errors that
users can cause are printed as one clear line and exit with status 1; set
``PYSTITCH_DEBUG=1`` for the traceback.

Global flags (any command): ``--quiet`` (warnings only), ``--log-level
LEVEL``, ``--version``.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

import fire

from ._version import __version__
from .backends.base import parse_bool as _flag
from .errors import PystitchError

log = logging.getLogger("pystitch")


# --------------------------------------------------------------------------- coercion


def _paths(value: Any) -> list[str] | None:
    """Paths from one path, a list, or text with comma/space separated paths or globs."""
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    out: list[str] = []
    for item in items:
        text = str(item)
        if os.path.exists(text):
            out.append(text)
            continue
        for part in (p for p in re.split(r"[,\s]+", text) if p):
            matches = sorted(glob.glob(part))
            out.extend(matches or [part])
    return out


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise PystitchError(f"Expected an integer for --{name}. Got a flag without a value instead.")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise PystitchError(f"Expected an integer for --{name}. Got {value!r} instead.") from None


def _opt_float(value: Any, name: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise PystitchError(f"Expected a number for --{name}. Got {value!r} instead.") from None


def _blocks(value: Any) -> Any:
    if value is None:
        raise PystitchError("Expected --blocks: one id (7), a range (0-9), a list (0,3,5) or 'all'.")
    return value


def _backend_options(options: dict) -> dict:
    return {k.replace("-", "_"): v for k, v in options.items()}


# --------------------------------------------------------------------------- commands


def plan_blocks(image: str, output: str, block_shape: Any, halo: Any = None, backend: str = "threshold",
                rule: str | None = None, min_iou: float | None = None, label_dtype: str = "auto",
                work_dir: str | None = None, report_dir: str | None = None, overwrite: bool = False,
                skip_empty: bool = True, stats_level: int | None = None, workers: int = 1,
                array_path: str | None = None, level: int | None = None, channel: Any = None,
                channel_axis: int | None = None, timepoint: int | None = None, output_format: str = "ome-zarr",
                ngff_version: str | None = None, pyramid_levels: int | None = None, memory_gb: float | None = None,
                **backend_options: Any) -> str:
    """Plan a run: check the input, cut it into blocks, scan it once, write plan.json.

    Prints the path of plan.json.  Later steps take that path.

    Args:
        image: input image: a zarr array, a zarr group (with --array-path), an OME-Zarr image or a TIFF file.
        output: where the final label image goes (zarr). It must not exist unless --overwrite.
        block_shape: block core size in voxels, one value or one per axis (e.g. 64,256,256); also the output chunks.
            auto (cellpose): the largest block whose segmentation fits --memory-gb.
        halo: overlap read around each block, per axis (e.g. 8,16,16); must be smaller than the block.
        backend: threshold | callable | cellpose.
        rule: stitching rule, exact (any overlap joins) or match (mutual best IoU); default per backend.
        min_iou: IoU threshold of the match rule (default 0.2).
        label_dtype: auto (uint32, or uint64 when needed) | uint16 | uint32 | uint64.
        work_dir: where plan, staging store and intermediate files go (default: <output stem>_work).
        report_dir: where regions table and summary go (default: <output stem>_report).
        overwrite: replace an existing output / work directory.
        skip_empty: mark blocks that cannot hold objects (backend's own criterion) and skip them.
        stats_level: scan a coarser OME-Zarr level for block maxima and samples (faster, approximate).
        workers: processes for the scan.
        array_path: array inside a zarr group.
        level: OME-Zarr multiscale level (or TIFF pyramid level) to segment; 0 is full resolution.
        channel: channel index (or indices, e.g. 0,1 for segmenters using two channels).
        channel_axis: channel axis of an array without axis metadata.
        timepoint: time index for images with a time axis.
        output_format: ome-zarr (multiscale label image; inside the input image when OUTPUT is
            <image>/labels/<name>) | zarr (one plain array).
        ngff_version: 0.4 (zarr v2, read by every current viewer; default) | 0.5 (zarr v3).
        pyramid_levels: number of levels (default: until the largest side is <= 256).
        memory_gb: memory of one segmentation task for --block-shape auto (default: this machine's GPU,
            else half of its available RAM).
        **backend_options: threshold backend: --threshold N|otsu --sigma S --connectivity 1..ndim|full;
            callable backend: --function module:function|file.py:function --kwargs JSON --empty-below V;
            cellpose backend: --model NAME|--pretrained-model FILE --diameter D --do-3d true|false --anisotropy A
            --stitch-threshold T --flow-threshold F --cellprob-threshold C --min-size N --batch-size B
            --channels C,N --invert --normalize global|block --percentile 1,99 --skip-below V.
    """
    from .plan import plan_blocks as _plan

    plan = _plan(
        str(image), str(output), block_shape=block_shape, halo=halo, backend=str(backend),
        rule=_opt_str(rule), min_iou=_opt_float(min_iou, "min-iou"), label_dtype=str(label_dtype),
        work_dir=_opt_str(work_dir), report_dir=_opt_str(report_dir), overwrite=_flag(overwrite, "overwrite"),
        skip_empty=_flag(skip_empty, "skip-empty"), stats_level=_opt_int(stats_level, "stats-level"),
        workers=_opt_int(workers, "workers") or 1, array_path=_opt_str(array_path),
        level=_opt_int(level, "level"), channel=channel, channel_axis=_opt_int(channel_axis, "channel-axis"),
        timepoint=_opt_int(timepoint, "timepoint"), backend_options=_backend_options(backend_options),
        output_format=str(output_format), ngff_version=_opt_str(ngff_version),
        pyramid_levels=_opt_int(pyramid_levels, "pyramid-levels"), memory_gb=_opt_float(memory_gb, "memory-gb"),
    )
    print(plan.plan_path)
    return None  # type: ignore[return-value]


def segment_block(plan: str, blocks: Any = None, manifest_dir: str | None = None, skip_existing: bool = False,
                  device: str | None = None, allow_cpu_fallback: bool | None = None) -> None:
    """Segment blocks of a plan and write their labels to the staging store.

    Writes one manifest block-<id>.json per block, LAST (a block without a
    manifest is unfinished).

    Args:
        plan: path of plan.json (or of the work directory holding it).
        blocks: block ids: one (7), a range (0-9), a list (0,3,5), a mix (0-9,12) or all.
        manifest_dir: where manifests go (default: <work_dir>/manifests).
        skip_existing: skip blocks that already have a valid manifest.
        device: where a model runs (cellpose): auto (a GPU when the task has one), cpu, cuda, cuda:N, mps.
            A property of the task, not of the plan.
        allow_cpu_fallback: run on the CPU (with a warning) when the requested GPU is not available.
    """
    from .segment import segment_blocks

    segment_blocks(str(plan), _blocks(blocks), manifest_dir=_opt_str(manifest_dir),
                   skip_existing=_flag(skip_existing, "skip-existing"), device=_opt_str(device),
                   allow_cpu_fallback=None if allow_cpu_fallback is None else _flag(allow_cpu_fallback,
                                                                                    "allow-cpu-fallback"))


def face_pairs(plan: str, blocks: Any = None, manifests: Any = None, out: str | None = None) -> None:
    """Find the objects of neighbouring blocks that are one object.

    Compares each block with its neighbours of larger id on the voxels both
    predicted, with the plan's rule, and writes one pairs-<first>-<last>.npz.

    Args:
        plan: path of plan.json.
        blocks: block ids (7, 0-9, 0,3,5, all).
        manifests: manifests of these blocks and their neighbours: a directory, files, globs, or a
            JSON Lines file of concatenated manifests (default: <work_dir>/manifests).
        out: output file or directory (default: <work_dir>/pairs/).
    """
    from .faces import face_pairs as _pairs

    _pairs(str(plan), _blocks(blocks), manifests=_paths(manifests), out=_opt_str(out))


def resolve(plan: str, manifests: Any = None, pairs: Any = None, out: str | None = None) -> None:
    """Join all pairs into final ids (union-find) and write the lut store.

    Also creates the output array with the dtype the number of objects
    needs, and writes resolve.json (objects, merges, blocks, empty blocks).

    Args:
        plan: path of plan.json.
        manifests: all block manifests: directory, files, globs or JSON Lines (default: <work_dir>/manifests).
        pairs: all pairs files: directory, files or globs (default: <work_dir>/pairs).
        out: lut store path (default: <work_dir>/lut.zarr).
    """
    from .resolve import resolve as _resolve

    _resolve(str(plan), manifests=_paths(manifests), pairs=_paths(pairs), out=_opt_str(out))


def apply_lut(plan: str, blocks: Any = None, lut: str | None = None, out: str | None = None) -> None:
    """Write final ids of blocks into the output and their region statistics.

    Reads only each block's slice of the lut.

    Args:
        plan: path of plan.json.
        blocks: block ids (7, 0-9, 0,3,5, all).
        lut: lut store (default: <work_dir>/lut.zarr).
        out: statistics file or directory (default: <work_dir>/stats/).
    """
    from .relabel import apply_lut as _apply

    _apply(str(plan), _blocks(blocks), lut=_opt_str(lut), out=_opt_str(out))


def finalize(plan: str, lut: str | None = None, stats: Any = None, overwrite: bool = False,
             trace: str | None = None, qc_faces: Any = 256, pictures: bool = True, grid: bool = False) -> None:
    """Merge region statistics into the regions table, check seams, draw pictures, write the summary, publish.

    Prints the output path, then the report directory.

    Args:
        plan: path of plan.json.
        lut: lut store (default: <work_dir>/lut.zarr).
        stats: statistics files: directory, files or globs (default: <work_dir>/stats).
        overwrite: replace an existing output and report.
        trace: a Nextflow trace file (-with-trace) for per-step timings in the summary.
        qc_faces: block faces sampled by the seam QC, or all.
        pictures: write the QC pictures (--nopictures to skip).
        grid: draw the block grid on the projections.
    """
    from .finalize import finalize as _finalize

    faces = None if str(qc_faces).lower() == "all" else _opt_int(qc_faces, "qc-faces")
    summary = _finalize(str(plan), lut=_opt_str(lut), stats=_paths(stats), overwrite=_flag(overwrite, "overwrite"),
                        trace=_opt_str(trace), qc_faces=faces, pictures=_flag(pictures, "pictures"),
                        grid=_flag(grid, "grid"))
    print(summary["output"])
    print(summary["report_dir"])


def run(image: str, output: str, block_shape: Any, halo: Any = None, backend: str = "threshold",
        rule: str | None = None, min_iou: float | None = None, label_dtype: str = "auto", workers: int = 1,
        work_dir: str | None = None, report_dir: str | None = None, overwrite: bool = False,
        keep_work: bool = False, skip_empty: bool | None = None, stats_level: int | None = None,
        array_path: str | None = None, level: int | None = None, channel: Any = None,
        channel_axis: int | None = None, timepoint: int | None = None, output_format: str = "ome-zarr",
        ngff_version: str | None = None, pyramid_levels: int | None = None, pictures: bool = True,
        grid: bool = False, device: str | None = None, allow_cpu_fallback: bool | None = None,
        memory_gb: float | None = None, progress: bool = True, **backend_options: Any) -> None:
    """Run every step locally (parallel processes, resumable) and print the output path.

    Args:
        image: input image (zarr, OME-Zarr, TIFF).
        output: output label image (zarr).
        block_shape: block core size per axis (e.g. 64,256,256).
        halo: overlap per axis (e.g. 8,16,16).
        backend: threshold | callable | cellpose.
        rule: exact | match (default per backend).
        min_iou: IoU threshold of the match rule.
        label_dtype: auto | uint16 | uint32 | uint64.
        workers: parallel processes.
        work_dir: intermediate files (default: <output stem>_work); an interrupted run resumes from it.
        report_dir: regions table and summary (default: <output stem>_report).
        overwrite: replace an existing output.
        keep_work: keep the work directory after success.
        skip_empty: mark blocks that cannot hold objects at plan time (an extra pass over the image);
            by default they are found when segmented, or at plan time when the image is scanned anyway.
        stats_level: scan a coarser level for block statistics.
        array_path: array inside a zarr group.
        level: multiscale level to segment.
        channel: channel index or indices.
        channel_axis: channel axis of arrays without metadata.
        timepoint: time index.
        output_format: ome-zarr | zarr (see plan-blocks --help).
        ngff_version: 0.4 | 0.5.
        pyramid_levels: number of pyramid levels (default: automatic).
        pictures: write QC pictures into the report (--nopictures to skip).
        grid: draw the block grid on the QC projections.
        device: where a model runs (cellpose): auto | cpu | cuda | cuda:N | mps.
        allow_cpu_fallback: run on the CPU (with a warning) when the requested GPU is not available.
        memory_gb: memory of one segmentation task for --block-shape auto.
        progress: show progress bars.
        **backend_options: options of the backend (see plan-blocks --help).
    """
    from .runner import run as _run

    summary = _run(
        str(image), str(output), block_shape=block_shape, halo=halo, backend=str(backend), rule=_opt_str(rule),
        min_iou=_opt_float(min_iou, "min-iou"), label_dtype=str(label_dtype), workers=_opt_int(workers, "workers") or 1,
        work_dir=_opt_str(work_dir), report_dir=_opt_str(report_dir), overwrite=_flag(overwrite, "overwrite"),
        keep_work=_flag(keep_work, "keep-work"),
        skip_empty=None if skip_empty is None else _flag(skip_empty, "skip-empty"),
        stats_level=_opt_int(stats_level, "stats-level"), array_path=_opt_str(array_path),
        level=_opt_int(level, "level"), channel=channel, channel_axis=_opt_int(channel_axis, "channel-axis"),
        timepoint=_opt_int(timepoint, "timepoint"), output_format=str(output_format),
        ngff_version=_opt_str(ngff_version), pyramid_levels=_opt_int(pyramid_levels, "pyramid-levels"),
        pictures=_flag(pictures, "pictures"), grid=_flag(grid, "grid"), device=_opt_str(device),
        allow_cpu_fallback=None if allow_cpu_fallback is None else _flag(allow_cpu_fallback, "allow-cpu-fallback"),
        memory_gb=_opt_float(memory_gb, "memory-gb"), progress=_flag(progress, "progress") and sys.stderr.isatty(),
        **_backend_options(backend_options))
    log.info("%d objects -> %s", summary["objects"], summary["output"])
    print(summary["output"])


def batches(plan: str, size: int = 64) -> None:
    """Print the blocks that need work as batches, one per line (e.g. 0-63), for a workflow to fan out.

    Blocks planned empty are left out.

    Args:
        plan: path of plan.json.
        size: blocks per batch (one task each).
    """
    from .plan import Plan, batches as _batches, format_block_ids

    n = _opt_int(size, "size")
    if not n or n < 1:
        raise PystitchError(f"Expected --size >= 1. Got {size!r} instead.")
    p = Plan.load(str(plan))
    for group in _batches(p.work_blocks(), n):
        print(format_block_ids(group))


def example(path: str = "example.zarr", shape: Any = "48,160,160", seed: int = 0, overwrite: bool = False) -> None:
    """Write the built-in synthetic example image (OME-Zarr) and print its path.

    Args:
        path: where to write it.
        shape: image shape (2 or 3 values).
        seed: random seed.
        overwrite: replace an existing file.
    """
    from .example import write_example
    from .plan import parse_shape

    text = shape if not isinstance(shape, (list, tuple)) else ",".join(map(str, shape))
    nd = len([p for p in re.split(r"[,x\s]+", str(text)) if p])
    print(write_example(str(path), parse_shape(shape, nd, "shape"), seed=_opt_int(seed, "seed") or 0,
                        overwrite=_flag(overwrite, "overwrite")))


COMMANDS: dict[str, Callable] = {
    "run": run,
    "plan-blocks": plan_blocks,
    "segment-block": segment_block,
    "face-pairs": face_pairs,
    "resolve": resolve,
    "apply-lut": apply_lut,
    "finalize": finalize,
    "batches": batches,
    "example": example,
}


# --------------------------------------------------------------------------- entry points


def _setup(argv: list[str]) -> list[str]:
    """Handle the global flags; returns the remaining arguments."""
    level = os.environ.get("PYSTITCH_LOG_LEVEL", "INFO").upper()
    rest: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in ("--quiet", "-q"):
            level = "WARNING"
        elif arg == "--log-level":
            level = next(it, "INFO").upper()
        elif arg.startswith("--log-level="):
            level = arg.split("=", 1)[1].upper()
        else:
            rest.append(arg)
    logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return rest


def _dispatch(component: Any, argv: list[str], name: str) -> int:
    argv = _setup(argv)
    if argv[:1] in (["--version"], ["version"]):
        print(__version__)
        return 0
    if "--help" in argv:
        # fire would take --help as a value for **backend_options: ask for help explicitly
        argv = [a for a in argv if a != "--help"] + ["--", "--help"]
    try:
        fire.Fire(component, command=argv, name=name)
    except PystitchError as exc:
        if os.environ.get("PYSTITCH_DEBUG"):
            raise
        log.error("%s", exc)
        return 1
    except fire.core.FireExit as exc:
        return int(exc.code or 0)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``pystitch <command> ...``: every step plus ``run`` and ``example``."""
    return _dispatch(COMMANDS, list(sys.argv[1:] if argv is None else argv), "pystitch")


def _single(name: str) -> Callable[[list[str] | None], int]:
    def entry(argv: list[str] | None = None) -> int:
        return _dispatch(COMMANDS[name], list(sys.argv[1:] if argv is None else argv), name)
    entry.__name__ = name.replace("-", "_") + "_main"
    return entry


plan_blocks_main = _single("plan-blocks")
segment_block_main = _single("segment-block")
face_pairs_main = _single("face-pairs")
resolve_main = _single("resolve")
apply_lut_main = _single("apply-lut")
finalize_main = _single("finalize")
