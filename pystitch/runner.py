"""The local runner: every step on this machine, in parallel processes.

``run`` calls the same step functions the CLIs and the Nextflow pipeline
call: plan, segment, face-pairs, resolve, apply-lut, finalize.  It resumes:
blocks with a valid manifest and batches with a valid result file are
skipped, so an interrupted run continues where it stopped.

Scheduling lives here and only here: one pool of worker processes per run
(started once, used by every step), batches of blocks ordered so that each
worker sweeps neighbouring rows, and per-worker state (the open backend and
image of a plan) that lives as long as the pool.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from . import params
from .grid import batches
from .plan import Plan
from .steps.apply_lut import apply_lut, stats_name
from .steps.face_pairs import face_pairs, pairs_name
from .steps.finalize import finalize
from .steps.plan_blocks import WHEN_SCANNING, plan_blocks
from .steps.resolve import resolve
from .steps.segment_block import BlockSegmenter, segment_blocks
from .manifests import digest, read_manifests
from .plan import clean_work_dir, default_work_dir, run_stem
from .steps.plan_blocks import AlreadyDone, check_run_locations
from .storage.files import DirectoryLock, read_json, read_npz
from .storage.images import ImageSpec, absolute_uri
from .storage.labels import is_published

log = logging.getLogger(__name__)

#: blocks per face-pairs / apply-lut task of the local runner (fixed, so that
#: a resumed run finds the files of the interrupted one)
BATCH_SIZE = 32


# --------------------------------------------------------------------------- per-process state

#: open BlockSegmenters of this process, by (plan hash, runtime settings).  In a
#: worker it lives as long as the pool, i.e. one run; in the calling process the
#: runner empties it when a run ends.
_SEGMENTERS: dict[tuple, BlockSegmenter] = {}


def _segmenter(plan_path: str, runtime: dict) -> BlockSegmenter:
    plan = Plan.load(plan_path)
    key = (plan.hash, tuple(sorted(runtime.items())))
    seg = _SEGMENTERS.get(key)
    if seg is None:
        _close_segmenters()
        seg = _SEGMENTERS[key] = BlockSegmenter(plan, **runtime)
    return seg


def _close_segmenters() -> None:
    for seg in _SEGMENTERS.values():
        seg.close()
    _SEGMENTERS.clear()


# --------------------------------------------------------------------------- the pool


def _context() -> multiprocessing.context.BaseContext:
    """Workers are never forked from this process (zarr's I/O threads do not
    survive a fork): a fork server that has imported pystitch once starts them
    quickly where available, else they are spawned."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["pystitch.runner"])
        return ctx
    return multiprocessing.get_context("spawn")


class Scheduler:
    """Runs the tasks of a step: in this process (``workers`` <= 1) or in one
    pool of worker processes started once for the whole run."""

    def __init__(self, workers: int, progress: bool = False) -> None:
        self.workers = workers
        self.progress = progress
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "Scheduler":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
        _close_segmenters()

    def map(self, fn: Callable, tasks: Sequence[Any], desc: str = "") -> Iterator[Any]:
        """Apply ``fn`` to every task.  Yields results as they complete; the
        first failure cancels what has not started and is raised."""
        bar = tqdm(total=len(tasks), desc=desc, disable=not self.progress, unit="task", leave=False)
        try:
            if self.workers <= 1 or len(tasks) <= 1:
                for t in tasks:
                    yield fn(t)
                    bar.update()
                return
            if self._pool is None:
                self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=_context())
            pending = {self._pool.submit(fn, t) for t in tasks}
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

    def map_tasks(self, desc: str) -> Callable[[Callable, Sequence[Any]], Iterator[Any]]:
        """``map`` as the plain ``(fn, tasks)`` function a step accepts."""
        return lambda fn, tasks: self.map(fn, tasks, desc)


def sweep_order(groups: list[list[int]], workers: int) -> list[list[int]]:
    """Order batches so that workers taking the next one in turn each sweep a
    contiguous range: a worker's consecutive batches then read the same input
    chunks (the halos of neighbouring rows), which its open image's chunk
    cache decodes once.  Only the order changes, never the batches."""
    if workers <= 1 or len(groups) <= workers:
        return groups
    size, extra = divmod(len(groups), workers)
    bounds = [w * size + min(w, extra) for w in range(workers + 1)]  # the longer ranges first
    ranges = [groups[a:b] for a, b in zip(bounds, bounds[1:])]
    return [r[i] for i in range(size + (extra > 0)) for r in ranges if i < len(r)]


# top-level task functions (picklable for worker processes)

def _segment_task(args: tuple) -> list[int]:
    plan_path, ids, runtime = args
    return segment_blocks(plan_path, ids, skip_existing=True, segmenter=_segmenter(plan_path, runtime))


def _pairs_task(args: tuple) -> Path:
    plan_path, ids = args
    return face_pairs(plan_path, ids)


def _apply_task(args: tuple) -> Path:
    plan_path, ids = args
    return apply_lut(plan_path, ids)


def _valid_result(path: Path, plan: Plan, ids: list[int], belongs: Callable[[dict], bool]) -> bool:
    if not path.exists():
        return False
    try:
        data = read_npz(path, "result", ["blocks", "plan_hash"])
    except Exception:
        return False
    return str(data["plan_hash"]) == plan.hash and [int(b) for b in data["blocks"]] == ids and belongs(data)


def _pairs_current(plan: Plan) -> Callable[[dict], bool]:
    """Pairs files computed from the blocks' current segmentation."""
    manifests = read_manifests(plan)
    return lambda data: all(b in manifests and digest(manifests[int(b)]) == int(d)
                            for b, d in data.get("digests", np.zeros((0, 2), np.uint64)))


def _stats_current(plan: Plan) -> Callable[[dict], bool]:
    """Statistics written with the current lut into the current output."""
    current = read_json(plan.output_id_path, "output id")
    return lambda data: str(data.get("output_id")) == current.get("output_id")


def _pending_batches(plan: Plan, directory: Path, ids: list[int], name: Callable[[list[int]], str],
                     batch_size: int, belongs: Callable[[dict], bool]) -> list[list[int]]:
    """Batches whose result file is missing; removes files of other batchings."""
    groups = batches(ids, batch_size)
    wanted = {name(g) for g in groups}
    if directory.exists():
        for f in directory.glob("*.npz"):
            if f.name not in wanted:
                f.unlink()
    return [g for g in groups if not _valid_result(directory / name(g), plan, g, belongs)]


def _batch_step(scheduler: Scheduler, task: Callable, plan: Plan, directory: Path, name: Callable[[list[int]], str],
                ids: list[int], batch_size: int, desc: str) -> None:
    """Run a per-batch step on the batches whose result file is missing."""
    belongs = _pairs_current(plan) if task is _pairs_task else _stats_current(plan)
    pending = _pending_batches(plan, directory, ids, name, batch_size, belongs)
    for _ in scheduler.map(task, [(str(plan.plan_path), g) for g in pending], desc=desc):
        pass


def run(image: str | os.PathLike, output: str | os.PathLike, **options: Any) -> dict:
    o, backend_options = params.bind("run", options)
    image = ImageSpec.from_options(image, o)  # takes the input options _run does not name (pattern, scene, ...)
    return _run(image, output, backend_options=backend_options, **o)


run.__doc__ = params.document("run", """Segment ``image`` block by block and stitch the labels into ``output``.

Every step runs on this machine, in ``workers`` processes; an interrupted
run resumes where it stopped.  Options of the chosen backend
(``threshold=500``, ``function="pkg.mod:fn"``, ``diameter=17`` ...) are
keyword arguments like the others.  Returns the run summary (also written
to ``<report_dir>/summary.json``).""")


def _run(image: Any, output: Any, *, block_shape: Any, halo: Any, backend: str, rule: str | None,
         min_iou: float | None, label_dtype: str, work_dir: Any, report_dir: Any, overwrite: bool, keep_work: bool,
         workers: int, skip_empty: bool | None, stats_level: int | None, progress: bool, array_path: str | None,
         level: int | None, channel: Any, channel_axis: int | None, timepoint: int | None, output_format: str,
         ngff_version: str | None, pyramid_levels: int | None, pictures: bool, grid: bool, device: str | None,
         allow_cpu_fallback: bool | None, memory_gb: float | None, backend_options: dict,
         batch_size: int = BATCH_SIZE) -> dict:
    timings: dict[str, float] = {}
    spec = image if isinstance(image, ImageSpec) else ImageSpec(
        uri=image, array_path=array_path, level=level, channel=channel, channel_axis=channel_axis,
        timepoint=timepoint)
    output = absolute_uri(output)
    wd = absolute_uri(work_dir) if work_dir else default_work_dir(run_stem(spec.uri, output))
    check_run_locations(spec.uri, output, wd, report_dir)
    # one run per work directory: a second one fails at once, naming this one
    with DirectoryLock(wd), Scheduler(workers, progress) as scheduler:
        t = time.perf_counter()
        try:
            plan = plan_blocks(
                spec, output, block_shape=block_shape, halo=halo, backend=backend, rule=rule, min_iou=min_iou,
                label_dtype=label_dtype, work_dir=wd, report_dir=report_dir, overwrite=overwrite,
                # locally, segment-block finds empty blocks itself: no extra pass over the image just for that
                skip_empty=WHEN_SCANNING if skip_empty is None else skip_empty, stats_level=stats_level,
                map_tasks=scheduler.map_tasks("scan image"), backend_options=backend_options,
                output_format=output_format, ngff_version=ngff_version, pyramid_levels=pyramid_levels,
                memory_gb=memory_gb)
        except AlreadyDone as done:
            summary_path = Path(done.report_dir) / "summary.json"
            if summary_path.exists():
                log.info("%s already holds the finished labels of this run: nothing to do", done.output)
                if not keep_work:  # what a run killed while cleaning up left
                    clean_work_dir(wd, finished=True)
                return read_json(summary_path, "summary")
            raise
        plan_path = str(plan.plan_path)
        timings["plan"] = time.perf_counter() - t
        todo = plan.work_blocks()
        finished = is_published(plan.output, plan.hash)  # killed after publishing: only the report is left

        t = time.perf_counter()
        # rows of neighbouring blocks per task: they read the same input chunks (see ChunkCache)
        row = min(max(plan.grid.counts[-1], 4), 64)
        runtime = {k: v for k, v in {"device": device, "allow_cpu_fallback": allow_cpu_fallback}.items()
                   if v is not None}
        groups = [] if finished else sweep_order(batches(todo, row), workers)
        log.info("stage segment: %d blocks in %d tasks, %d worker(s)", len(todo), len(groups), workers)
        for _ in scheduler.map(_segment_task, [(plan_path, g, runtime) for g in groups], desc="segment"):
            pass
        timings["segment"] = time.perf_counter() - t

        if not finished:
            log.info("stage face-pairs")
            t = time.perf_counter()
            _batch_step(scheduler, _pairs_task, plan, plan.pairs_dir, pairs_name, todo, batch_size, "face-pairs")
            timings["face_pairs"] = time.perf_counter() - t

            log.info("stage resolve")
            t = time.perf_counter()
            resolve(plan)  # does nothing when the lut of these manifests and pairs exists
            timings["resolve"] = time.perf_counter() - t

            log.info("stage apply-lut")
            t = time.perf_counter()
            _batch_step(scheduler, _apply_task, plan, plan.stats_dir, stats_name, todo, batch_size, "apply-lut")
            timings["apply_lut"] = time.perf_counter() - t

        log.info("stage finalize")
        summary = finalize(plan, overwrite=overwrite, grid=grid, pictures=pictures,
                           extra={"workers": workers,
                                  "timings_seconds": {k: round(v, 3) for k, v in timings.items()}})
        if not keep_work:
            plan.clean_work_dir(finished=True)
    return summary
