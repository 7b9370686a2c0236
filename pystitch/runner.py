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

import itertools
import logging
import logging.handlers
import math
import multiprocessing
import os
import re
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from . import params
from .errors import DeviceError, InputError
from .grid import batches
from .manifests import digest, read_manifests
from .plan import Plan, clean_work_dir, default_store_dir, default_work_dir, run_stem
from .progress import Progress, format_duration, reporting, set_sink, stderr_is_terminal
from .steps.apply_lut import apply_lut, stats_name
from .steps.face_pairs import face_pairs, pairs_name
from .steps.finalize import finalize
from .steps.plan_blocks import WHEN_SCANNING, AlreadyDone, check_run_locations, plan_blocks
from .steps.resolve import resolve
from .steps.segment_block import BlockSegmenter, segment_blocks
from .storage.files import DirectoryLock, atomic_write_json, read_json, read_npz
from .storage.images import ImageSpec, absolute_uri, cache_capacity
from .storage.zarrs import set_codec_threads
from .storage import remote
from .storage.labels import is_published
from .storage.memory import fingerprint, is_array_input, local_zarr_location, register_staged, registered, stage

log = logging.getLogger(__name__)

#: blocks per face-pairs / apply-lut task of the local runner (fixed, so that
#: a resumed run finds the files of the interrupted one)
BATCH_SIZE = 32


# --------------------------------------------------------------------------- per-process state

#: open BlockSegmenters of this process, by (plan hash, runtime settings).  In a
#: worker it lives as long as the pool, i.e. one run; in the calling process the
#: runner empties it when a run ends.
_SEGMENTERS: dict[tuple, BlockSegmenter] = {}
#: the device this worker process is pinned to for its whole life (``--devices``); None: not pinned
_PINNED: str | None = None


def _segmenter(plan_path: str, runtime: dict) -> BlockSegmenter:
    if _PINNED is not None:
        runtime = {**runtime, "device": _PINNED}
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
    pool of worker processes started once for the whole run.

    Progress counts blocks, not tasks: a task is a batch of blocks, and the
    steps report each block they finish (:func:`pystitch.progress.advance`);
    worker processes send those reports and their log records to this
    process over a queue, where they reach this process's logging (so
    ``--verbose`` shows the workers' per-block lines).  ``progress``: a bar
    when stderr is a terminal, else periodic one-line log records.
    """

    def __init__(self, workers: int, progress: bool = False) -> None:
        self.workers = int(workers)
        self.progress = progress
        self.bar = bool(progress) and stderr_is_terminal()
        self._pool: ProcessPoolExecutor | None = None
        self._queue: Any = None
        self._listener: threading.Thread | None = None
        self._current: Progress | None = None
        #: staged copies of in-memory inputs (uri -> path) the workers read
        self.inputs: dict[str, str] = {}
        #: devices the workers are pinned to, in turn (``--devices``); None: none
        self.devices: list[str] | None = None

    def __enter__(self) -> "Scheduler":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop_pool()
        _close_segmenters()

    def warm(self) -> None:
        """Start the fork server now, when worker processes will be started
        from it: it imports pystitch (a second or more) in parallel with what
        this process does before the first ``map`` (planning, the plan scan),
        instead of while the first workers wait for it."""
        if self.workers > 1 and _context().get_start_method() == "forkserver":
            from multiprocessing import forkserver

            forkserver.ensure_running()

    def close_pool(self) -> None:
        """Stop the worker processes (the next ``map`` starts them again)."""
        self._stop_pool()

    def resize(self, workers: int) -> None:
        """Use ``workers`` processes from now on (a running pool of another size is stopped)."""
        if int(workers) != self.workers:
            self._stop_pool()
            self.workers = int(workers)

    # ---- the pool and the queue its workers report on

    def _start_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            ctx = _context()
            self._queue = ctx.Queue()
            self._listener = threading.Thread(target=self._listen, name="pystitch-worker-logs", daemon=True)
            self._listener.start()
            levels = (logging.getLogger().getEffectiveLevel(), logging.getLogger("pystitch").getEffectiveLevel())
            devices = None
            if self.devices:  # worker i takes device i (in turn): each worker is started once for the pool's life
                devices = ctx.Queue()
                for i in range(self.workers):
                    devices.put(self.devices[i % len(self.devices)])
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=_worker_init,
                                             initargs=(self._queue, levels, dict(self.inputs), self.workers,
                                                       remote.storage_options(), devices, dict(os.environ)))
        return self._pool

    def _stop_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
        if self._listener is not None:
            self._queue.put(None)
            self._listener.join()
            self._listener = None
            self._queue.close()
            self._queue.join_thread()
            self._queue = None

    def _listen(self) -> None:
        """Forward what workers put on the queue: progress reports and log records."""
        while True:
            try:
                item = self._queue.get()
            except (EOFError, OSError):
                return
            if item is None:
                return
            if isinstance(item, tuple):
                current = self._current
                if current is not None:
                    current.add(*item)
            else:
                logging.getLogger(item.name).handle(item)

    # ---- running tasks

    def map(self, fn: Callable, tasks: Sequence[Any], desc: str = "", sizes: Sequence[int] | None = None
            ) -> Iterator[Any]:
        """Apply ``fn`` to every task.  Yields results as they complete; the
        first failure cancels what has not started and is raised.  ``sizes``:
        blocks per task (default 1), what the progress counts."""
        sizes = list(sizes) if sizes is not None else [1] * len(tasks)
        progress = Progress(desc, sum(sizes), bar=self.bar, records=bool(self.progress))
        self._current = progress
        try:
            if self.workers <= 1 or len(tasks) <= 1:
                with reporting(progress.add):
                    for t, n in zip(tasks, sizes):
                        result = fn(t)
                        progress.task_done(n)
                        yield result
                return
            pool = self._start_pool()
            with _main_module_hidden():  # workers start as tasks are submitted
                futures = {pool.submit(fn, t): n for t, n in zip(tasks, sizes)}
            order = {fut: i for i, fut in enumerate(futures)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                failed = [f for f in done if f.exception() is not None]
                if failed:
                    # cancel what has not started; of the tasks that failed, report the first
                    # submitted, so that the error does not depend on which worker was quicker
                    for f in pending:
                        f.cancel()
                    started = [f for f in pending if not f.cancelled()]
                    wait(started)
                    failed += [f for f in started if f.exception() is not None]
                    raise min(failed, key=order.__getitem__).exception()
                for fut in done:
                    progress.task_done(futures[fut])
                    yield fut.result()
        finally:
            self._current = None
            progress.close()

    def map_tasks(self, desc: str) -> Callable[[Callable, Sequence[Any]], Iterator[Any]]:
        """``map`` as the plain ``(fn, tasks)`` function a step accepts."""
        return lambda fn, tasks: self.map(fn, tasks, desc)


@contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start worker processes without running the caller's script again.

    A spawned or fork-server worker imports the parent's ``__main__`` module
    (by path, or by name under ``python -m``), which runs a script without an
    ``if __name__ == "__main__":`` guard a second time, in every worker.
    Workers need nothing from it (tasks name pystitch functions, segmenters
    are imported by ``module:function``), so it is hidden while they start."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            if "__spec__" in saved:
                main.__spec__ = None
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


def _worker_init(queue: Any, levels: tuple[int, int], inputs: dict[str, str], workers: int,
                 storage: dict | None = None, devices: Any = None, environment: dict | None = None) -> None:
    """A worker process: its log records and progress reports go to the parent;
    it reads in-memory inputs from their staged copies and URLs with the
    parent's storage options; its numeric libraries share the cores with the
    other workers (unless the environment says); with ``devices`` it takes
    one and keeps it for its whole life (:func:`pin`)."""
    # the parent's environment as it is now, not as it was when the fork
    # server started (credentials, PYSTITCH_* settings, a segmenter's own)
    if environment is not None:
        for name in set(os.environ) - set(environment):
            del os.environ[name]
        os.environ.update(environment)
    threads = str(max(1, usable_cores() // max(1, workers)))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, threads)
    # zarr's codec threads: this worker's share of the cores
    set_codec_threads(int(threads))
    register_staged(inputs)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(logging.handlers.QueueHandler(queue))
    root.setLevel(levels[0])
    logging.getLogger("pystitch").setLevel(levels[1])
    set_sink(lambda step, blocks: queue.put((step, blocks)))
    remote.set_storage_options(storage)
    if devices is not None:
        pin(devices.get(timeout=60))


def pin(device: str) -> None:
    """Pin this worker process to ``device`` for its whole life: every block it
    segments runs there (its backend is opened once, with that device), and a
    CUDA device becomes torch's current device, so nothing of this process
    lands on another GPU."""
    global _PINNED
    _PINNED = device
    if device.startswith("cuda:"):
        import torch  # only for a model backend, which imports it in this worker anyway

        torch.cuda.set_device(int(device.split(":")[1]))
    log.debug("worker %d pinned to %s", os.getpid(), device)


def worker_device(_: Any = None) -> tuple[int, str | None]:
    """``(process id, device)`` of the process running this task: the device it
    is pinned to (``--devices``), None when it is not pinned."""
    return os.getpid(), _PINNED


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
    for _ in scheduler.map(task, [(str(plan.plan_path), g) for g in pending], desc=desc,
                           sizes=[len(g) for g in pending]):
        pass


def usable_cores() -> int:
    """CPU cores this process may run on (a batch job's allocation, not the whole node)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().split()[0]
    except (OSError, IndexError):
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> int:
    """Bytes this run may still use: the kernel's MemAvailable, bounded by the
    memory limit of this process's cgroup (containers, SLURM jobs)."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2 ** 60:
            avail = min(avail, max(0, limit - usage))
    return int(avail)


def _gpu_memory(plan: Plan, device: str | None) -> int | None:
    """Memory of the GPU a model backend's workers share, when they run on one."""
    if plan.backend.get("name") != "cellpose" or (device or "auto") == "cpu":
        return None
    try:
        import torch  # only for a model backend, which imports it in every worker anyway
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    index = int(device.split(":")[1]) if device and device.startswith("cuda:") else 0
    return int(torch.cuda.get_device_properties(index).total_memory)


_DEVICE_LIST = re.compile(r"cuda:\d+")


def _cuda_devices() -> int:
    """How many CUDA devices torch sees (0 without torch)."""
    try:
        import torch  # only when --devices is given: a model backend's workers import it anyway
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def resolve_devices(devices: Any, plan: Plan, device: str | None = None,
                    allow_cpu_fallback: bool | None = None) -> list[str] | None:
    """The devices of ``--devices``: ``cuda:0,cuda:1,...`` or ``auto`` (every GPU
    torch sees), checked against what torch sees before any block.  None:
    no device list (one device per run, ``--device``)."""
    if devices is None or (isinstance(devices, str) and not devices.strip()):
        return None
    if plan.backend.get("name") != "cellpose":
        raise InputError(f"Expected --devices only with a backend that runs a model on a device (cellpose). Got "
                         f"--backend {plan.backend.get('name')} instead.")
    if device is not None:
        raise InputError(f"Expected --device or --devices, not both. Got --device {device} and --devices {devices}.")
    found = _cuda_devices()
    if isinstance(devices, str) and devices.strip().lower() == "auto":
        wanted = [f"cuda:{i}" for i in range(found)]
        problem = None if found else "torch sees no CUDA device"
    else:
        items = [t.lower() for t in re.split(r"[,\s]+", devices.strip()) if t] if isinstance(devices, str) \
            else [str(t).lower() for t in devices]
        bad = [t for t in items if not _DEVICE_LIST.fullmatch(t)]
        if bad or not items:
            raise InputError(f"Expected --devices as cuda:0,cuda:1,... or auto. Got {devices!r} instead.")
        if len(set(items)) != len(items):
            raise InputError(f"Expected each device once in --devices. Got {devices!r} instead.")
        wanted = items
        missing = [t for t in items if int(t.split(":")[1]) >= found]
        problem = f"{', '.join(missing)} not among the {found} CUDA device(s) torch sees" if missing else None
    if problem is None:
        return wanted
    message = f"Expected the devices of --devices {devices} to be available. Got: {problem}."
    if allow_cpu_fallback:
        log.warning("%s Running on the CPU instead.", message)
        return None
    raise DeviceError(message + " Use --devices with the GPUs this node has, or --device cpu.")


def choose_workers(requested: Any, plan: Plan, tasks: int, device: str | None = None,
                   devices: Sequence[str] | None = None) -> tuple[int, str]:
    """The number of worker processes, and why.  ``auto``: the cores this
    process may use, no more than the available memory holds at the
    backend's memory per worker (its model for blocks of this plan plus the
    image's chunk cache) and, for a model on a GPU, the GPU's memory; never
    more than there are tasks.  With ``devices``: one worker per device
    (``auto``), or the given count taking the devices in turn."""
    if devices:
        if requested != "auto":
            return int(requested), f"given; pinned to {', '.join(devices)} in turn"
        n = max(1, min(len(devices), tasks))
        return n, f"auto: one per device of {', '.join(devices)}" + (f", {tasks} task(s)" if tasks < len(devices)
                                                                       else "")
    if requested != "auto":
        return int(requested), "given"
    cores = usable_cores()
    backend = plan.make_backend()
    # the largest block with its halo (an inner one), without a pass over every block
    voxels = math.prod(min(b + 2 * h, n) for b, h, n in zip(plan.block_shape, plan.halo, plan.shape))
    per_worker = backend.task_memory(voxels) + cache_capacity()
    memory = available_memory()
    by_memory = max(1, memory // per_worker)
    n = max(1, min(cores, by_memory, tasks))
    why = (f"auto: {cores} cores, {memory / 2 ** 30:.1f} GiB available, ~{per_worker / 2 ** 30:.2f} GiB per worker "
           f"({plan.backend['name']} blocks of {voxels} voxels with the halo, chunk cache included)")
    gpu = _gpu_memory(plan, device)
    if gpu is not None:
        n = max(1, min(n, int(0.8 * gpu) // backend.task_memory(voxels)))
        why += f", GPU of {gpu / 2 ** 30:.1f} GiB"
    if tasks < min(cores, by_memory):
        why += f", {tasks} task(s)"
    return n, why


def _as_image(image: Any, array_path: str | None, level: int | None) -> tuple[str, str | None, Any]:
    """``(uri, array path, in-memory array or None)`` of what the caller gave as the image."""
    if not is_array_input(image):
        return os.fspath(image), array_path, None
    where = local_zarr_location(image)
    if where is not None:  # a zarr array on disk: read in place, by path
        if array_path is not None:
            raise InputError(f"Expected array_path only with an image path. Got a zarr array ({where[0]}) "
                             f"and array_path={array_path!r} instead.")
        return where[0], where[1], None
    if array_path is not None or level not in (None, 0):
        raise InputError("Expected array_path and level only with an image path or a zarr array on disk. "
                         f"Got an in-memory {type(image).__name__} instead.")
    return fingerprint(image), None, image


def run(image: Any, output: str | os.PathLike, **options: Any) -> dict:
    o, backend_options = params.bind("run", options)
    return _run(image, output, backend_options=backend_options, **o)


_IMAGE_DOC = """image : path, zarr.Array, numpy.ndarray or dask.array.Array
    The image: a path (zarr array or group, OME-Zarr image, TIFF file), a
    zarr array (read in place when its store is a local directory), or an
    array in memory (numpy, dask, zarr in memory).  An in-memory array is
    read block by block, never copied whole: by this process when one
    worker runs, else from a copy the run writes block by block into the
    work directory (``input.zarr``, removed with the work directory).  Its
    identity in the plan is a SHA-256 of its shape, dtype and bytes (dask:
    dask's token of the graph), so a run of the same array resumes.
    Axes are ``yx`` or ``zyx`` (plus ``channel_axis``)."""


def _api_doc(command: str, intro: str, returns: str, examples: str, replace: dict[str, str]) -> str:
    """numpydoc: the intro, the parameters of ``command`` (those named in
    ``replace`` with the API's own text), what it returns, examples."""
    doc = params.document(command, intro)
    for name, text in replace.items():
        head, rest = doc.split(f"\n{name} : ", 1)
        rest = rest.split("\n", 1)[1]
        while rest.startswith("    "):
            rest = rest.split("\n", 1)[1]
        doc = head + "\n" + text + "\n" + rest
    return doc + "\n" + returns.strip("\n") + "\n" + examples


run.__doc__ = _api_doc("run", """Segment ``image`` block by block and stitch the labels into ``output``.

Every step runs on this machine, in ``workers`` processes; an interrupted
run resumes where it stopped.  Options of the chosen backend
(``threshold=500``, ``function="pkg.mod:fn"``, ``diameter=17`` ...) are
keyword arguments like the others.  Progress is a bar when stderr is a
terminal, else log records of the ``pystitch.progress`` logger.""", """
Returns
-------
dict
    The run summary (also written to ``<report_dir>/summary.json``):
    ``objects``, ``output``, ``report_dir``, settings, seam QC, timings.""", """
Examples
--------
>>> import tempfile, numpy as np, pystitch
>>> image = np.zeros((64, 64), np.uint16)
>>> image[4:60, 30:34] = 1000            # one object across four blocks
>>> with tempfile.TemporaryDirectory() as d:
...     summary = pystitch.run(image, f"{d}/labels.zarr", block_shape=32, halo=1, threshold=500,
...                            workers=1, pictures=False)
...     summary["objects"], summary["blocks"]
(1, 4)
""", {"image": _IMAGE_DOC})


def segment(image: Any, output: str | os.PathLike | None = None, **options: Any) -> Any:
    o, backend_options = params.bind("run", options)
    if output is not None:
        summary = _run(image, output, backend_options=backend_options, **o)
        from .storage.labels import read_level

        return read_level(summary["output"], 0)
    import tempfile

    import zarr

    with tempfile.TemporaryDirectory(prefix="pystitch-") as tmp:
        if o["report_dir"] is None:
            o["pictures"] = False
        o.update(output_format="zarr", work_dir=o["work_dir"] or os.path.join(tmp, "work"),
                 report_dir=o["report_dir"] or os.path.join(tmp, "report"))
        summary = _run(image, os.path.join(tmp, "labels.zarr"), backend_options=backend_options, **o)
        written = zarr.open_array(store=summary["output"], mode="r")
        labels = zarr.create_array(store=zarr.storage.MemoryStore(), shape=written.shape, chunks=written.chunks,
                                   dtype=written.dtype, fill_value=0)
        for corner in itertools.product(*(range(0, n, c) for n, c in zip(written.shape, written.chunks))):
            chunk = tuple(slice(k, k + c) for k, c in zip(corner, written.chunks))
            labels[chunk] = written[chunk]
    labels.attrs["pystitch"] = {k: summary[k] for k in ("objects", "plan_hash", "axes", "voxel_size", "unit",
                                                         "block_shape", "halo", "rule")}
    return labels


segment.__doc__ = _api_doc("run", """Segment ``image`` and return its label image as a zarr array.

The same run as :func:`run` (same options).  With ``output`` (a path) the
labels are written there and that array (level 0) is returned; without, the
labels come back in memory (a zarr array in a ``MemoryStore``; ``labels[:]``
gives numpy) and the work directory and report go to a temporary directory
that is removed, unless ``work_dir`` / ``report_dir`` are given.""", """
Returns
-------
zarr.Array
    Ids ``1..N`` (0 is background); its ``attrs["pystitch"]`` holds the
    object count and the plan's hash.""", """
Examples
--------
>>> import numpy as np, pystitch
>>> image = np.zeros((64, 64), np.uint16)
>>> image[4:60, 30:34] = 1000            # one object across four blocks
>>> image[10:14, 5:9] = 1000             # and a small one
>>> labels = pystitch.segment(image, block_shape=32, halo=1, threshold=500, workers=1)
>>> labels.shape, labels.attrs["pystitch"]["objects"], sorted(np.unique(labels[:]).tolist())
((64, 64), 2, [0, 1, 2])

A dask array is read the same way, block by block:

>>> import dask.array as da
>>> lazy = da.from_array(image, chunks=16)
>>> bool((pystitch.segment(lazy, block_shape=32, halo=1, threshold=500, workers=1)[:] == labels[:]).all())
True
""", {"image": _IMAGE_DOC, "output": """output : path, optional
    Where to write the label image (zarr); it must not exist unless
    ``overwrite``.  None: the labels are returned in memory."""})


def _run(image: Any, output: Any, *, storage_options: Any = None, **options: Any) -> dict:
    """A run with ``storage_options`` for every URL it opens (this process and its workers)."""
    with remote.using(storage_options):
        return _run_local(image, output, **options)


def _run_local(image: Any, output: Any, *, block_shape: Any, halo: Any, backend: str, rule: str | None,
         min_iou: float | None, label_dtype: str, work_dir: Any, report_dir: Any, overwrite: bool, keep_work: bool,
         workers: Any, skip_empty: bool | None, stats_level: int | None, progress: bool, array_path: str | None,
         level: int | None, channel: Any, channel_axis: int | None, timepoint: int | None, output_format: str,
         ngff_version: str | None, pyramid_levels: int | None, pictures: bool, grid: bool, device: str | None,
         allow_cpu_fallback: bool | None, memory_gb: float | None, backend_options: dict,
         intensity_stats: bool = False, batch_size: int = BATCH_SIZE, store_dir: Any = None, devices: Any = None,
         **input_options: Any) -> dict:
    started = time.perf_counter()
    in_memory = None
    if isinstance(image, ImageSpec):
        spec = image
    else:
        uri, array_path, in_memory = _as_image(image, array_path, level)
        # the input options _run does not name (pattern, scene, voxel_size, unit)
        spec = ImageSpec.from_options(uri, {**input_options, "array_path": array_path, "level": level,
                                            "channel": channel, "channel_axis": channel_axis,
                                            "timepoint": timepoint})
    output = absolute_uri(output)
    wd = absolute_uri(work_dir) if work_dir else default_work_dir(run_stem(spec.uri, output))
    sd = absolute_uri(store_dir) if store_dir else default_store_dir(run_stem(spec.uri, output))
    check_run_locations(spec.uri, output, wd, report_dir, sd)
    timings: dict[str, float] = {}
    # one run per work directory: a second one fails at once, naming this one
    with ExitStack() as stack:
        if in_memory is not None:
            stack.enter_context(registered(spec.uri, in_memory))
        stack.enter_context(DirectoryLock(wd))
        scheduler = stack.enter_context(Scheduler(usable_cores() if workers == "auto" else workers, progress))
        scheduler.warm()
        t = time.perf_counter()
        try:
            plan = plan_blocks(
                spec, output, block_shape=block_shape, halo=halo, backend=backend, rule=rule, min_iou=min_iou,
                label_dtype=label_dtype, work_dir=wd, report_dir=report_dir, overwrite=overwrite,
                # locally, segment-block finds empty blocks itself: no extra pass over the image just for that
                skip_empty=WHEN_SCANNING if skip_empty is None else skip_empty, stats_level=stats_level,
                # an in-memory image is scanned by this process, which holds it
                map_tasks=scheduler.map_tasks("scan") if in_memory is None else None,
                backend_options=backend_options, output_format=output_format, ngff_version=ngff_version,
                pyramid_levels=pyramid_levels, memory_gb=memory_gb, intensity_stats=intensity_stats, store_dir=sd)
        except AlreadyDone as done:
            summary = _read_summary(done.report_dir)
            if summary is not None:
                log.info("%s already holds the finished labels of this run: nothing to do", done.output)
                if not keep_work:  # what a run killed while cleaning up left
                    clean_work_dir(wd, finished=True, store_dir=sd)
                return summary
            raise
        plan_path = str(plan.plan_path)
        timings["plan"] = time.perf_counter() - t
        todo = plan.work_blocks()
        finished = is_published(plan.output, plan.hash)  # killed after publishing: only the report is left

        # rows of neighbouring blocks per task: they read the same input chunks (see ChunkCache)
        row = min(max(plan.grid.counts[-1], 4), 64)
        runtime = {k: v for k, v in {"device": device, "allow_cpu_fallback": allow_cpu_fallback}.items()
                   if v is not None}
        tasks = 0 if finished else max(len(batches(todo, row)), len(batches(todo, batch_size)))  # busiest step
        pinned = None if finished else resolve_devices(devices, plan, device, allow_cpu_fallback)
        n_workers, why = choose_workers(workers, plan, tasks, device)
        log.info("%d worker process%s (%s)", n_workers, "" if n_workers == 1 else "es", why)
        scheduler.resize(n_workers)
        if n_workers > 1 and todo:  # face-pairs and apply-lut: a batch for every worker at least
            batch_size = max(1, min(batch_size, -(-len(todo) // n_workers)))
        if pinned:  # the segment step: one worker per device, pinned for its life; the CPU steps after it
            n_segment, why_segment = choose_workers(workers, plan, len(batches(todo, row)), device, pinned)
            log.info("segment: %d worker process%s (%s)", n_segment, "" if n_segment == 1 else "es", why_segment)
            scheduler.resize(n_segment)
            scheduler.devices = pinned
        if in_memory is not None and n_workers > 1 and todo and not finished:
            t = time.perf_counter()
            scheduler.close_pool()  # workers started from now on know where the copy is
            stage(spec.uri, in_memory, str(plan.staged_input), _full_regions(plan, in_memory),
                  _full_chunks(plan, in_memory))
            scheduler.inputs[spec.uri] = str(plan.staged_input)
            timings["stage_input"] = time.perf_counter() - t
            log.info("copied the in-memory image to %s for the workers (%.1f s)", plan.staged_input,
                     timings["stage_input"])

        if pinned and scheduler.workers <= 1:  # one worker: this process segments, on the one device
            runtime = {**runtime, "device": pinned[0]}
        if plan.rule == "flows":
            if pinned:
                runtime = {**runtime, "device": pinned[0]}
                scheduler.close_pool()
                scheduler.devices = None
                scheduler.resize(n_workers)
            if not finished:  # what the stages measured goes into the lut, for finalize
                _flows_stages(plan, runtime, timings, scheduler, batch_size)
                all_blocks = list(range(plan.n_blocks))
                log.info("stage apply-lut")
                t = time.perf_counter()
                _batch_step(scheduler, _apply_task, plan, plan.stats_dir, stats_name, all_blocks, batch_size,
                            "apply-lut")
                timings["apply_lut"] = time.perf_counter() - t
            finished = True  # nothing of the segment, pairs and lut stages below
            pinned = None
        t = time.perf_counter()
        groups = [] if finished else sweep_order(batches(todo, row), scheduler.workers)
        if groups:
            log.info("stage segment: %d blocks in %d tasks, %d worker(s)", len(todo), len(groups), scheduler.workers)
        for _ in scheduler.map(_segment_task, [(plan_path, g, runtime) for g in groups], desc="segment",
                               sizes=[len(g) for g in groups]):
            pass
        if plan.rule != "flows":
            timings["segment"] = time.perf_counter() - t
        if pinned:
            scheduler.close_pool()
            scheduler.devices = None
            scheduler.resize(n_workers)

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
        scheduler.close_pool()

        log.info("stage finalize")
        summary = finalize(plan, overwrite=overwrite, grid=grid, pictures=pictures,
                           extra={"workers": n_workers, "workers_reason": why,
                                  "timings_seconds": {k: round(v, 3) for k, v in timings.items()}})
        if not keep_work:
            plan.clean_work_dir(finished=True)
    elapsed = time.perf_counter() - started
    log.info("done in %s: %d objects in %s (report: %s)", format_duration(elapsed), summary["objects"],
             summary["output"], summary["report_dir"])
    return summary


def _follow_task(args: tuple) -> dict:
    plan_path, ids = args
    from .steps.flows_rule import follow_step  # cellpose only

    return follow_step(plan_path, ids)


def _assign_task(args: tuple) -> dict:
    plan_path, ids = args
    from .steps.flows_rule import assign_step  # cellpose only

    return assign_step(plan_path, ids)


def _flows_stages(plan: Plan, runtime: dict, timings: dict[str, float], scheduler: Scheduler,
                  batch_size: int) -> dict:
    """The flows rule's stages (see :mod:`pystitch.steps.flows_rule`): predict
    in this process (the network, on its device), then the trajectories in
    the workers' batches when there are workers, the seeds in this process,
    the assignment of blocks in the workers' batches, then filters and the
    lut in this process."""
    from .steps.flows_rule import (already_followed, labels_from_flows, model_niter, predict_flows, seed_step,
                                   summary_path)

    done = already_followed(plan)
    if done is not None:  # killed while writing the output: apply-lut goes on with the same lut
        log.info("the lut of this plan's flows exists (%s): predict and dynamics skipped", plan.lut_uri)
        return done.get("flows", {"objects": done.get("objects")})
    backend = plan.make_backend().open(None, **runtime)
    try:
        log.info("stage predict (flows rule): the network on every block's own tiles")
        t = time.perf_counter()
        store = predict_flows(plan, backend.segmenter)
        timings["predict"] = time.perf_counter() - t
        if scheduler.workers > 1:
            log.info("stage follow (flows rule): the trajectories of every block, %d worker(s)", scheduler.workers)
            t = time.perf_counter()
            groups = batches(list(range(plan.n_blocks)), batch_size)
            for _ in scheduler.map(_follow_task, [(str(plan.plan_path), g) for g in groups], desc="follow",
                                   sizes=[len(g) for g in groups]):
                pass
            timings["follow"] = time.perf_counter() - t
            log.info("stage seeds (flows rule): the region map of the seeds of the whole image")
            t = time.perf_counter()
            seed_step(plan)
            timings["seeds"] = time.perf_counter() - t
            log.info("stage assign (flows rule): every block labelled from the seeds, %d worker(s)",
                     scheduler.workers)
            t = time.perf_counter()
            for _ in scheduler.map(_assign_task, [(str(plan.plan_path), g) for g in groups], desc="assign",
                                   sizes=[len(g) for g in groups]):
                pass
            timings["assign"] = time.perf_counter() - t
        log.info("stage dynamics (flows rule): filters over the whole image, the lut")
        t = time.perf_counter()
        info = labels_from_flows(plan, store, store.niter or model_niter(plan, backend.segmenter))
        timings["dynamics"] = time.perf_counter() - t
    finally:
        backend.close()
    atomic_write_json(summary_path(plan, plan.lut_uri),
                      {"plan_hash": plan.hash, "objects": info["objects"], "blocks": plan.n_blocks, "rule": "flows",
                       "flows": info})
    return info


def _read_summary(report_dir: str) -> dict | None:
    """The summary.json of a finished run's report (a path or a URL); None when there is none."""
    if remote.is_remote(report_dir):
        import json

        data = remote.read_bytes(remote.join(report_dir, "summary.json"))
        return json.loads(data) if data is not None else None
    path = Path(report_dir) / "summary.json"
    return read_json(path, "summary") if path.exists() else None


def _full_regions(plan: Plan, array: Any) -> list[tuple[slice, ...]]:
    """The blocks' cores as regions of the whole array (channel and time axes whole)."""
    spatial = _spatial_positions(plan, array)
    out = []
    for b in range(plan.n_blocks):
        region = [slice(None)] * len(array.shape)
        for pos, s in zip(spatial, plan.grid.core(b)):
            region[pos] = s
        out.append(tuple(region))
    return out


def _full_chunks(plan: Plan, array: Any) -> tuple[int, ...]:
    chunks = [1] * len(array.shape)
    for pos, b in zip(_spatial_positions(plan, array), plan.block_shape):
        chunks[pos] = b
    return tuple(chunks)


def _spatial_positions(plan: Plan, array: Any) -> list[int]:
    ca = plan.image.channel_axis if plan.image else None
    positions = list(range(len(array.shape)))
    if ca is not None:
        positions.remove(ca % len(array.shape))
    return positions
