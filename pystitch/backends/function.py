"""The ``callable`` backend: any segmenter as a Python function, ``module:function`` or ``file.py:function``.

The function receives the block's image data (core + halo; channel-first
when several channels are selected) and must return integer labels of the
same spatial shape, 0 for background.  Keyword arguments can be given as a
JSON object (``--kwargs '{"sigma": 2}'``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError, SegmenterError
from .base import Backend, SegmentationContext, register, reject_unknown


def load_function(spec: str) -> Callable:
    """Import ``package.module:function`` or ``path/to/file.py:function``."""
    if not isinstance(spec, str) or ":" not in spec:
        raise InputError(f"Expected --function as 'module:function' or 'file.py:function'. Got {spec!r} instead.")
    target, _, name = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target).expanduser().resolve()
            if not path.is_file():
                raise InputError(f"Segmenter file not found: {path} (from --function {spec!r}).")
            mod_name = f"pystitch_user_{abs(hash(str(path)))}"
            module = sys.modules.get(mod_name)
            if module is None:
                loader = importlib.util.spec_from_file_location(mod_name, path)
                module = importlib.util.module_from_spec(loader)
                sys.modules[mod_name] = module
                loader.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"Could not import the segmenter {spec!r}: {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, name, None)
    if not callable(fn):
        raise InputError(f"{target} has no callable named {name!r} (from --function {spec!r}).")
    return fn


@register
class CallableBackend(Backend):
    name = "callable"
    default_rule = "match"

    def __init__(self, function: str, kwargs: dict | None = None, empty_below: float | None = None) -> None:
        self.function = function
        self.kwargs = dict(kwargs or {})
        self._empty_below = empty_below
        self._fn: Callable | None = None

    @classmethod
    def from_options(cls, ndim: int, **options: Any) -> "CallableBackend":
        reject_unknown(cls.name, options, {"function", "kwargs", "empty_below"})
        if "function" not in options:
            raise InputError("The callable backend needs --function 'module:function' (or 'file.py:function').")
        function = str(options["function"])
        if function.partition(":")[0].endswith(".py"):
            path, _, name = function.rpartition(":")
            function = f"{Path(path).expanduser().resolve()}:{name}"
        kwargs = options.get("kwargs") or {}
        if isinstance(kwargs, str):
            try:
                kwargs = json.loads(kwargs)
            except json.JSONDecodeError as exc:
                raise InputError(f"Expected --kwargs as a JSON object. Got {kwargs!r} instead ({exc}).") from None
        if not isinstance(kwargs, dict):
            raise InputError(f"Expected --kwargs as a JSON object. Got {kwargs!r} instead.")
        try:
            json.dumps(kwargs)
        except TypeError as exc:
            raise InputError(f"--kwargs must be JSON-serialisable: {exc}") from None
        empty = options.get("empty_below")
        backend = cls(function, kwargs, None if empty is None else float(empty))
        load_function(function)  # fail at plan time, not in the 1000th task
        return backend

    def params(self) -> dict:
        return {"function": self.function, "kwargs": self.kwargs, "empty_below": self._empty_below}

    @property
    def stats_needed(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"max"}) if self._empty_below is not None else frozenset()

    def empty_below(self) -> float | None:
        return self._empty_below

    def open(self, ctx: SegmentationContext | None = None, **runtime: Any) -> "CallableBackend":
        super().open(ctx, **runtime)
        self._fn = load_function(self.function)
        return self

    def segment(self, data: np.ndarray, crop: tuple[slice, ...], ctx: SegmentationContext) -> np.ndarray:
        fn = self._fn or load_function(self.function)
        block = data[(Ellipsis,) + crop] if data.ndim > ctx.ndim else data[crop]
        try:
            return fn(block, **self.kwargs)
        except Exception as exc:
            raise SegmenterError(
                f"The segmenter {self.function} failed on block {ctx.block}: {type(exc).__name__}: {exc}"
            ) from exc

    def info(self) -> dict:
        return {"backend": self.name, "function": self.function}
