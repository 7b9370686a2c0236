"""Segmenters used by the tests through the ``callable`` backend."""

from __future__ import annotations

import os

import numpy as np
from scipy import ndimage


def identity(block: np.ndarray) -> np.ndarray:
    """The image already holds the instance labels (ground truth)."""
    return block.astype(np.uint32)


def border_dilating(block: np.ndarray, grow: int = 2) -> np.ndarray:
    """An instance segmenter that is wrong near the edge of what it sees: cells
    cut by the edge of the block come out ``grow`` voxels fatter, eating into
    their touching neighbours (as a network short of context does)."""
    labels = block.astype(np.uint32)
    edge = np.zeros(labels.shape, bool)
    for axis in range(labels.ndim):
        idx = [slice(None)] * labels.ndim
        idx[axis] = [0, -1]
        edge[tuple(idx)] = True
    cut = np.unique(labels[edge])
    cut = cut[cut > 0]
    out = labels.copy()
    for c in cut:
        grown = ndimage.binary_dilation(labels == c, iterations=grow)
        out[grown] = c
    return out


def fail(block: np.ndarray) -> np.ndarray:
    raise RuntimeError("model exploded")


def wrong_shape(block: np.ndarray) -> np.ndarray:
    return np.zeros([s + 1 for s in block.shape], np.uint32)


def floats(block: np.ndarray) -> np.ndarray:
    return np.zeros(block.shape, np.float32)


def negative(block: np.ndarray) -> np.ndarray:
    return -np.ones(block.shape, np.int32)


def not_an_array(block: np.ndarray):
    return [[1, 2], [3, 4]]


def counting(block: np.ndarray, log: str = "") -> np.ndarray:
    """Threshold at 500 and record each call in ``log`` (one line per block)."""
    with open(log, "a") as fh:
        fh.write(f"{block.shape}\n")
    return ndimage.label(block > 500)[0]


def flaky(block: np.ndarray, marker: str = "") -> np.ndarray:
    """Fails the first time it is called (a marker file remembers), then works."""
    if marker and not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("transient failure")
    return ndimage.label(block > 500)[0]


def killed_once(block: np.ndarray, marker: str = "") -> np.ndarray:
    """Threshold at 500, but the first call anywhere (the one that creates
    ``marker``, atomically) kills its own process with SIGKILL, as an
    out-of-memory killer or a preempting scheduler would: exit status 137."""
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
    return ndimage.label(block > 500)[0]


def counting_threshold(block: np.ndarray, config: str = "") -> np.ndarray:
    """Threshold at the value a JSON file holds now ({"threshold": T}): the same
    block segments differently once the file changes (a re-run with other data)."""
    import json

    with open(config) as fh:
        threshold = json.load(fh)["threshold"]
    return ndimage.label(block > threshold)[0]


def slow(block: np.ndarray, seconds: float = 0.5) -> np.ndarray:
    """Threshold at 500, taking its time (a run that is still going)."""
    import time

    time.sleep(seconds)
    return ndimage.label(block > 500)[0]


def _first_call(marker: str) -> bool:
    """True for the one call anywhere that creates ``marker`` (atomically);
    the marker holds the SLURM job id of that call, if any."""
    if not marker:
        return False
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, os.environ.get("SLURM_JOB_ID", "").encode())
    os.close(fd)
    return True


def slow_once(block: np.ndarray, marker: str = "", seconds: float = 120.0) -> np.ndarray:
    """Threshold at 500, but the first call anywhere sleeps ``seconds`` first
    (long enough for a test to find its job and cancel it)."""
    if _first_call(marker):
        import time

        time.sleep(seconds)
    return ndimage.label(block > 500)[0]


def memory_hog_once(block: np.ndarray, marker: str = "", megabytes: int = 1024) -> np.ndarray:
    """Threshold at 500, but the first call anywhere first holds ``megabytes``
    of touched memory for a few seconds (more than its task asked for)."""
    if _first_call(marker):
        import time

        hog = np.ones(megabytes * 2**20 // 8)
        time.sleep(6)
        assert hog[-1] == 1  # held, touched, until here
    return ndimage.label(block > 500)[0]


def first_channel_threshold(block: np.ndarray, threshold: float = 500) -> np.ndarray:
    """Objects of the first channel (a segmenter given several channels)."""
    return ndimage.label(block[0] > threshold)[0]


def needs_environment(block: np.ndarray, name: str, value: str) -> np.ndarray:
    """Thresholds the block at 500, but only where the environment variable
    ``name`` holds ``value`` (what a segmenter configured by its environment
    sees in a worker process)."""
    if os.environ.get(name) != value:
        raise RuntimeError(f"{name} is {os.environ.get(name)!r} in this worker, not {value!r}")
    return ndimage.label(block > 500)[0].astype(np.uint32)


def zarr_threads(block: np.ndarray, expected: int) -> np.ndarray:
    """Thresholds the block at 500 when zarr's codec thread pool of this
    worker has ``expected`` threads (what the runner gives each worker)."""
    import zarr

    found = zarr.config.get("threading.max_workers")
    if found != expected:
        raise RuntimeError(f"zarr has {found!r} codec threads in this worker, not {expected}")
    return ndimage.label(block > 500)[0].astype(np.uint32)
