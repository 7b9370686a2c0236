"""Network time of Cellpose, per process: loaded by benchmarks/gpu.py only.

benchmarks/gpu.py puts this folder first on PYTHONPATH of the ``pystitch run``
it starts (and imports it itself), with ``PYSTITCH_GPU_BENCH_NET_DIR`` set.
Python imports ``sitecustomize`` at start-up, so every process of that run —
the command, its fork server and its workers — gets the hook below; without
the variable it does nothing.

The hook wraps the ``forward`` of Cellpose's network class (cellpose 3:
``cellpose.resnet_torch.CPnet``; cellpose 4: ``cellpose.vit.CPSAM``) when its
module is first imported: each call is timed, on CUDA up to
``torch.cuda.synchronize()`` (cellpose copies the result to the host right
after anyway), and the running totals (seconds, calls, tiles) are written to
``<dir>/<pid>.json`` after every call.  Nothing else of cellpose or pystitch
changes.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys
import time

ENV = "PYSTITCH_GPU_BENCH_NET_DIR"
TARGETS = {"cellpose.resnet_torch": "CPnet", "cellpose.vit": "CPSAM"}

_state = {"pid": os.getpid(), "seconds": 0.0, "calls": 0, "tiles": 0}


def totals() -> dict:
    """This process's totals so far."""
    if _state["pid"] != os.getpid():  # a forked child starts from zero
        reset()
    return {k: _state[k] for k in ("seconds", "calls", "tiles")}


def reset() -> None:
    _state.update(pid=os.getpid(), seconds=0.0, calls=0, tiles=0)


def _record(seconds: float, tiles: int) -> None:
    totals()
    _state["seconds"] += seconds
    _state["calls"] += 1
    _state["tiles"] += tiles
    directory = os.environ.get(ENV)
    if not directory:
        return
    path = os.path.join(directory, f"{os.getpid()}.json")
    try:
        with open(path + ".tmp", "w") as fh:
            json.dump(totals(), fh)
        os.replace(path + ".tmp", path)
    except OSError:
        pass


def _patch(cls: type | None) -> None:
    if cls is None or getattr(cls, "_pystitch_bench_timed", False):
        return
    forward = cls.forward

    def timed_forward(self, *args, **kwargs):
        import torch

        try:
            cuda = next(self.parameters()).is_cuda
        except StopIteration:
            cuda = False
        start = time.perf_counter()
        out = forward(self, *args, **kwargs)
        if cuda:
            torch.cuda.synchronize()
        tiles = int(args[0].shape[0]) if args and hasattr(args[0], "shape") else 0
        _record(time.perf_counter() - start, tiles)
        return out

    cls.forward = timed_forward
    cls._pystitch_bench_timed = True


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in TARGETS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original = spec.loader.exec_module

        def exec_module(module, _original=original, _name=name):
            _original(module)
            _patch(getattr(module, TARGETS[_name], None))

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Install the hook (idempotent); patches modules already imported too."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    for name, cls in TARGETS.items():
        if name in sys.modules:
            _patch(getattr(sys.modules[name], cls, None))


if os.environ.get(ENV):
    install()
