"""The local runner and the Python API.

``run`` calls the same step functions the CLIs and the Nextflow pipeline
call: plan, segment (in parallel processes), face-pairs, resolve, apply-lut,
finalize.  It resumes: blocks with a valid manifest and batches with a valid
result file are skipped, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from tqdm.auto import tqdm

from .faces import face_pairs, pairs_name
from .finalize import finalize
from .output import LabelOutput
from .plan import WHEN_SCANNING, Plan, batches, plan_blocks
from .relabel import apply_lut, stats_name
from .resolve import Lut, resolve
from .segment import segment_blocks
from .storage import read_npz, remove_path

log = logging.getLogger(__name__)

#: blocks per face-pairs / apply-lut task of the local runner (fixed, so that
#: a resumed run finds the files of the interrupted one)
BATCH_SIZE = 32


_POOL: ProcessPoolExecutor | None = None


def _context() -> multiprocessing.context.BaseContext:
    """Workers are never forked from this process (zarr's I/O threads do not
    survive a fork): a fork server that has imported pystitch once starts them
    quickly where available, else they are spawned."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["pystitch.runner"])
        return ctx
    return multiprocessing.get_context("spawn")


@contextmanager
def worker_pool(workers: int) -> Iterator[None]:
    """Keep one pool of ``workers`` processes for every step inside the block:
    workers start (and import numpy, scipy, zarr) once per run, not per step."""
    global _POOL
    if workers <= 1 or _POOL is not None:
        yield
        return
    _POOL = ProcessPoolExecutor(max_workers=workers, mp_context=_context())
    try:
        yield
    finally:
        _POOL.shutdown(cancel_futures=True)
        _POOL = None


def map_blocks(fn: Callable, tasks: Sequence[Any], *, workers: int = 1, progress: bool = False,
               desc: str = "") -> Iterator[Any]:
    """Apply ``fn`` to every task, in ``workers`` processes.  Yields results as
    they complete; the first failure cancels what has not started and is
    raised."""
    bar = tqdm(total=len(tasks), desc=desc, disable=not progress, unit="task", leave=False)
    try:
        if workers <= 1 or len(tasks) <= 1:
            for t in tasks:
                yield fn(t)
                bar.update()
            return
        with worker_pool(workers):
            pool = _POOL
            assert pool is not None
            pending = {pool.submit(fn, t) for t in tasks}
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    if fut.exception() is not None:
                        for p in pending:
                            p.cancel()
                        raise fut.exception()
                    yield fut.result()
                    bar.update()
    finally:
        bar.close()


def sweep_order(groups: list[list[int]], workers: int) -> list[list[int]]:
    """Order batches so that workers taking the next one in turn each sweep a
    contiguous range: a worker's consecutive batches then read the same input
    chunks (the halos of neighbouring rows), which its chunk cache decodes
    once.  Only the order changes, never the batches."""
    if workers <= 1 or len(groups) <= workers:
        return groups
    size, extra = divmod(len(groups), workers)
    bounds = [w * size + min(w, extra) for w in range(workers + 1)]  # the longer ranges first
    ranges = [groups[a:b] for a, b in zip(bounds, bounds[1:])]
    return [r[i] for i in range(size + (extra > 0)) for r in ranges if i < len(r)]


# top-level task functions (picklable for worker processes)

def _segment_task(args: tuple) -> list[int]:
    plan_path, ids, runtime = args
    return segment_blocks(plan_path, ids, skip_existing=True, **runtime)


def _pairs_task(args: tuple) -> Path:
    plan_path, ids = args
    return face_pairs(plan_path, ids)


def _apply_task(args: tuple) -> Path:
    plan_path, ids = args
    return apply_lut(plan_path, ids)


def _valid_result(path: Path, plan: Plan, ids: list[int]) -> bool:
    if not path.exists():
        return False
    try:
        data = read_npz(path, "result", ["blocks", "plan_hash"])
    except Exception:
        return False
    return str(data["plan_hash"]) == plan.hash and [int(b) for b in data["blocks"]] == ids


def _pending_batches(plan: Plan, directory: Path, ids: list[int], name: Callable[[list[int]], str],
                     batch_size: int) -> list[list[int]]:
    """Batches whose result file is missing; removes files of other batchings."""
    groups = batches(ids, batch_size)
    wanted = {name(g) for g in groups}
    if directory.exists():
        for f in directory.glob("*.npz"):
            if f.name not in wanted:
                f.unlink()
    return [g for g in groups if not _valid_result(directory / name(g), plan, g)]


def _batch_step(task: Callable, plan: Plan, directory: Path, name: Callable[[list[int]], str], ids: list[int],
                batch_size: int, workers: int, progress: bool, desc: str) -> None:
    """Run a per-batch step on the batches whose result file is missing."""
    pending = _pending_batches(plan, directory, ids, name, batch_size)
    for _ in map_blocks(task, [(str(plan.plan_path), g) for g in pending], workers=workers, progress=progress,
                        desc=desc):
        pass


def _lut_reusable(plan: Plan) -> bool:
    try:
        Lut.open(plan)
        LabelOutput.open(plan)
    except Exception:
        return False
    return True


def run(image: str | os.PathLike, output: str | os.PathLike, *, block_shape: Any, halo: Any = None,
        backend: str = "threshold", rule: str | None = None, min_iou: float | None = None, label_dtype: str = "auto",
        work_dir: str | os.PathLike | None = None, report_dir: str | os.PathLike | None = None,
        overwrite: bool = False, keep_work: bool = False, workers: int = 1, batch_size: int = BATCH_SIZE,
        skip_empty: bool | None = None, stats_level: int | None = None, progress: bool = True,
        array_path: str | None = None, level: int | None = None, channel: Any = None,
        channel_axis: int | None = None, timepoint: int | None = None, output_format: str = "ome-zarr",
        ngff_version: str | None = None, pyramid_levels: int | None = None, pictures: bool = True,
        grid: bool = False, device: str | None = None, allow_cpu_fallback: bool | None = None,
        memory_gb: float | None = None, **backend_options: Any) -> dict:
    """Segment ``image`` block by block and stitch the labels into ``output``.

    Backend options (``threshold=500``, ``sigma=1``, ``connectivity=1``,
    ``function="pkg.mod:fn"``, ...) are passed as keyword arguments.
    ``skip_empty`` None: empty blocks are found when segmented (no extra pass
    over the image unless the backend scans it anyway); True marks them at
    plan time.  Returns
    the run summary (also written to ``<report_dir>/summary.json``).
    """
    with worker_pool(workers):
        return _run(image, output, block_shape=block_shape, halo=halo, backend=backend, rule=rule, min_iou=min_iou,
                    label_dtype=label_dtype, work_dir=work_dir, report_dir=report_dir, overwrite=overwrite,
                    keep_work=keep_work, workers=workers, batch_size=batch_size, skip_empty=skip_empty,
                    stats_level=stats_level, progress=progress, array_path=array_path, level=level, channel=channel,
                    channel_axis=channel_axis, timepoint=timepoint, output_format=output_format,
                    ngff_version=ngff_version, pyramid_levels=pyramid_levels, pictures=pictures, grid=grid,
                    device=device, allow_cpu_fallback=allow_cpu_fallback, memory_gb=memory_gb, **backend_options)


def _run(image: Any, output: Any, *, block_shape: Any, halo: Any, backend: str, rule: str | None, min_iou: float | None,
         label_dtype: str, work_dir: Any, report_dir: Any, overwrite: bool, keep_work: bool, workers: int,
         batch_size: int, skip_empty: bool | None, stats_level: int | None, progress: bool, array_path: str | None,
         level: int | None, channel: Any, channel_axis: int | None, timepoint: int | None, output_format: str,
         ngff_version: str | None, pyramid_levels: int | None, pictures: bool, grid: bool,
         device: str | None, allow_cpu_fallback: bool | None, memory_gb: float | None,
         **backend_options: Any) -> dict:
    timings: dict[str, float] = {}
    t = time.perf_counter()
    plan = plan_blocks(
        image, output, block_shape=block_shape, halo=halo, backend=backend, rule=rule, min_iou=min_iou,
        label_dtype=label_dtype, work_dir=work_dir, report_dir=report_dir, overwrite=overwrite,
        # locally, segment-block finds empty blocks itself: no extra pass over the image just for that
        skip_empty=WHEN_SCANNING if skip_empty is None else skip_empty, stats_level=stats_level, workers=workers,
        array_path=array_path, level=level,
        channel=channel, channel_axis=channel_axis, timepoint=timepoint, backend_options=backend_options,
        output_format=output_format, ngff_version=ngff_version, pyramid_levels=pyramid_levels, memory_gb=memory_gb,
        progress=progress)
    plan_path = str(plan.plan_path)
    timings["plan"] = time.perf_counter() - t
    todo = plan.work_blocks()

    t = time.perf_counter()
    # rows of neighbouring blocks per task: they read the same input chunks (see io.ChunkCache)
    row = min(max(plan.grid[-1], 4), 64)
    runtime = {"device": device, "allow_cpu_fallback": allow_cpu_fallback}
    groups = sweep_order(batches(todo, row), workers)
    for _ in map_blocks(_segment_task, [(plan_path, g, runtime) for g in groups], workers=workers,
                        progress=progress, desc="segment"):
        pass
    timings["segment"] = time.perf_counter() - t

    t = time.perf_counter()
    _batch_step(_pairs_task, plan, plan.pairs_dir, pairs_name, todo, batch_size, workers, progress, "face-pairs")
    timings["face_pairs"] = time.perf_counter() - t

    t = time.perf_counter()
    if _lut_reusable(plan):
        log.info("the lut of this plan exists: not resolving again")
    else:
        remove_path(plan.stats_dir)  # statistics written with an earlier lut are void
        resolve(plan)
    timings["resolve"] = time.perf_counter() - t

    t = time.perf_counter()
    _batch_step(_apply_task, plan, plan.stats_dir, stats_name, todo, batch_size, workers, progress, "apply-lut")
    timings["apply_lut"] = time.perf_counter() - t

    summary = finalize(plan, overwrite=overwrite, grid=grid, pictures=pictures,
                       extra={"workers": workers, "timings_seconds": {k: round(v, 3) for k, v in timings.items()}})
    if not keep_work:
        plan.clean_work_dir()
    return summary
