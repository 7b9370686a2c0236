"""The ``cellpose`` backend: Cellpose 3.x or 4.x with one GLOBAL normalisation.

Plan time (no cellpose or torch needed there): options are checked, the halo
defaults to one object diameter per side (fewer planes in Z when voxels are
anisotropic), the anisotropy defaults to the voxel sizes, and the intensity
percentiles that normalise EVERY block are computed once from an evenly
strided sample of the whole image (``normalize="global"``, the default) —
dim and bright regions are not stretched differently per block.  Blocks whose
maximum is at or below the low normalisation bound are empty (nothing but
background after normalisation) and skipped.

Task time: the model is loaded once per task (per worker process), on the
device the task has (``--device auto``: a GPU when there is one).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, InputNotFoundError
from .base import Backend, SegmentationContext, parse_bool, register, reject_unknown
from .cellpose import CellposeSegmenter, default_halo

log = logging.getLogger(__name__)

OPTIONS = {
    "model", "pretrained_model", "diameter", "do_3d", "anisotropy", "stitch_threshold", "flow_threshold",
    "cellprob_threshold", "min_size", "max_size_fraction", "niter", "batch_size", "channels", "invert",
    "normalize", "percentile", "skip_below",
}
#: default normalisation percentiles (cellpose's own defaults, applied globally)
DEFAULT_PERCENTILE = (1.0, 99.0)
#: memory model of one segmentation task: BASE_BYTES + BYTES_PER_VOXEL x voxels
#: of a block (core + halo).  Measured with benchmarks/cellpose_memory.py
#: (Cellpose 3.1, CPU, standard network; results in benchmarks/results/): the
#: process holds ~1.1 GiB before the first block (python, torch, model) plus
#: ~0.3 GiB of tile buffers, then grows by ~790 bytes/voxel for ``do_3D``,
#: ~380 for planes stitched in 3-D and ~1370 for 2-D images; the constants
#: below add a margin.  GPU memory was not measured (no GPU here): the same
#: figures are used for a GPU's memory.
BYTES_PER_VOXEL = {"do_3D": 1000, "planes": 500, "2-D": 1600}
BASE_BYTES = int(1.5 * 2 ** 30)


def _pair(value: Any, name: str) -> tuple[float, float]:
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"Expected --{name} as two numbers, e.g. 1,99. Got {value!r} instead.") from None
    if not 0 <= lo < hi <= 100:
        raise InputError(f"Expected --{name} low,high with 0 <= low < high <= 100. Got {value!r} instead.")
    return lo, hi


@register
class CellposeBackend(Backend):
    name = "cellpose"
    default_rule = "match"

    def __init__(self, *, model: str | None = None, pretrained_model: str | None = None, diameter: float = 30.0,
                 do_3D: bool = True, anisotropy: float | None = None, stitch_threshold: float = 0.0,
                 flow_threshold: float = 0.4, cellprob_threshold: float = 0.0, min_size: int = 15,
                 max_size_fraction: float = 0.4, niter: int | None = None, batch_size: int = 8,
                 channels: list[int] | None = None, invert: bool = False, normalize: str = "global",
                 percentile: list[float] | tuple[float, float] = DEFAULT_PERCENTILE, skip_below: float | None = None,
                 lowhigh: list[list[float]] | None = None, n_channels: int = 1, ndim: int = 3) -> None:
        self.settings = dict(
            model=model, pretrained_model=pretrained_model, diameter=diameter, do_3D=do_3D, anisotropy=anisotropy,
            stitch_threshold=stitch_threshold, flow_threshold=flow_threshold, cellprob_threshold=cellprob_threshold,
            min_size=min_size, max_size_fraction=max_size_fraction, niter=niter, batch_size=batch_size,
            channels=channels, invert=invert)
        self.normalize = normalize
        self.percentile = tuple(float(p) for p in percentile)
        self.skip_below = skip_below
        self.lowhigh = lowhigh
        self.n_channels = int(n_channels)
        self.ndim = int(ndim)
        self._segmenter: CellposeSegmenter | None = None

    # ---- plan time

    @classmethod
    def from_options(cls, ndim: int, **options: Any) -> "CellposeBackend":
        options = {k.lower(): v for k, v in options.items()}  # --do-3D and --do-3d alike
        reject_unknown(cls.name, options, OPTIONS)
        model, path = options.get("model"), options.get("pretrained_model")
        if path is not None:
            p = Path(str(path)).expanduser().resolve()
            if not p.is_file():
                raise InputNotFoundError(
                    f"Cellpose model file not found: {p}. Expected --pretrained-model to be the path of a model file "
                    "(or use --model with a built-in name such as cyto3, nuclei or cpsam)."
                )
            path = str(p)
        if (model is None) == (path is None):
            if model is None:
                model = "cyto3"  # Cellpose's general model; downloaded by cellpose when online
            else:
                raise InputError("Expected one of --model (a built-in name) and --pretrained-model (a file). Got both.")
        try:
            diameter = float(options.get("diameter", 30.0))
        except (TypeError, ValueError):
            raise InputError(f"Expected --diameter in pixels. Got {options.get('diameter')!r} instead.") from None
        if not math.isfinite(diameter) or diameter <= 0:
            raise InputError(f"Expected --diameter > 0 (pixels). Got {diameter} instead.")
        do_3d = parse_bool(options.get("do_3d", ndim == 3), "do-3d") and ndim == 3
        stitch = float(options.get("stitch_threshold", 0.0))
        if ndim == 3 and not do_3d and stitch <= 0:
            stitch = 0.3  # per-plane segmentation needs planes to be joined
        normalize = str(options.get("normalize", "global")).lower()
        if normalize not in ("global", "block"):
            raise InputError(f"Expected --normalize global or block. Got {normalize!r} instead.")
        channels = options.get("channels")
        if channels is not None:
            channels = [int(c) for c in (channels.split(",") if isinstance(channels, str) else channels)]
        anisotropy = options.get("anisotropy")
        skip = options.get("skip_below")
        be = cls(model=None if path else str(model), pretrained_model=path, diameter=diameter, do_3D=do_3d,
                 anisotropy=None if anisotropy is None else float(anisotropy), stitch_threshold=stitch,
                 flow_threshold=float(options.get("flow_threshold", 0.4)),
                 cellprob_threshold=float(options.get("cellprob_threshold", 0.0)),
                 min_size=int(options.get("min_size", 15)),
                 max_size_fraction=float(options.get("max_size_fraction", 0.4)),
                 niter=None if options.get("niter") is None else int(options["niter"]),
                 batch_size=int(options.get("batch_size", 8)), channels=channels,
                 invert=parse_bool(options.get("invert", False), "invert"), normalize=normalize,
                 percentile=_pair(options.get("percentile", DEFAULT_PERCENTILE), "percentile"),
                 skip_below=None if skip is None else float(skip), ndim=ndim)
        be._validate()
        return be

    def _validate(self) -> None:
        """Range checks of the adapter, without loading cellpose or a model."""
        s = self.settings
        if s["anisotropy"] is not None and not s["anisotropy"] > 0:
            raise InputError(f"Expected --anisotropy > 0. Got {s['anisotropy']} instead.")
        if not 0 <= s["stitch_threshold"] <= 1:
            raise InputError(f"Expected --stitch-threshold in [0, 1]. Got {s['stitch_threshold']} instead.")
        if s["batch_size"] < 1 or s["min_size"] < 0:
            raise InputError("Expected --batch-size >= 1 and --min-size >= 0.")

    def adapt(self, source: Any) -> "CellposeBackend":
        self.n_channels = source.n_channels
        if self.settings["anisotropy"] is None and source.voxel_size and len(source.voxel_size) == 3:
            z, y, x = source.voxel_size
            self.settings["anisotropy"] = round(float(z / ((y + x) / 2)), 6)
        return self

    def params(self) -> dict:
        return {**self.settings, "normalize": self.normalize, "percentile": list(self.percentile),
                "skip_below": self.skip_below, "lowhigh": self.lowhigh, "n_channels": self.n_channels,
                "ndim": self.ndim}

    @property
    def stats_needed(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"sample", "max"}) if self.normalize == "global" else frozenset(
            {"max"} if self.skip_below is not None else set())

    def finish_plan(self, sample: np.ndarray | None) -> tuple["CellposeBackend", dict]:
        if self.normalize != "global":
            return self, {}
        if sample is None or sample.size == 0:
            raise InputError("Global normalisation needs an intensity sample, but the image is empty.")
        rows = sample.reshape(self.n_channels, -1) if sample.ndim == 1 else sample
        lowhigh = []
        for c, r in enumerate(rows):
            lo, hi = (float(v) for v in np.percentile(r, self.percentile))
            if hi <= lo:  # sparse objects: the high percentile is still background
                hi = float(r.max())
                log.warning("channel %d: the %s percentile equals the %s percentile (%s); normalising up to the "
                            "sampled maximum %s instead", c, self.percentile[1], self.percentile[0], lo, hi)
            if hi <= lo:  # a constant image: nothing to segment, every block is empty
                hi = lo + 1.0
            lowhigh.append([lo, hi])
        done = CellposeBackend(**{**self.params(), "lowhigh": lowhigh})
        return done, {"lowhigh": lowhigh, "percentile": list(self.percentile),
                      "normalisation": f"global: percentiles {list(self.percentile)} of {rows.shape[1]} voxels "
                                       "sampled evenly from every block, per channel"}

    def empty_below(self) -> float | None:
        if self.skip_below is not None:
            return self.skip_below
        if self.lowhigh:
            # at or below every channel's low bound, a block normalises to background only
            return min(lo for lo, _ in self.lowhigh)
        return None

    def default_halo(self, ndim: int, voxel_size: tuple[float, ...] | None) -> tuple[int, ...]:
        return default_halo(self.settings["diameter"], self.settings["anisotropy"], ndim)

    def task_memory(self, voxels: int) -> int:
        """The memory model above for blocks of ``voxels`` voxels (core + halo)."""
        mode = "2-D" if self.ndim == 2 else ("do_3D" if self.settings["do_3D"] else "planes")
        return BASE_BYTES + BYTES_PER_VOXEL[mode] * int(voxels)

    def auto_block_shape(self, shape: tuple[int, ...], halo: tuple[int, ...], memory_bytes: int) -> tuple[int, ...]:
        """The largest block (core, a multiple of 16 in Y/X, at least twice the
        halo) whose core + halo fits ``memory_bytes`` by the memory model above;
        never larger than the image."""
        mode = "2-D" if len(shape) == 2 else ("do_3D" if self.settings["do_3D"] else "planes")
        per_voxel = BYTES_PER_VOXEL[mode]
        voxels = (memory_bytes - BASE_BYTES) / per_voxel
        smallest = [min(n, max(16, 2 * h)) for n, h in zip(shape, halo)]
        need = BASE_BYTES + per_voxel * math.prod(c + 2 * h for c, h in zip(smallest, halo))
        if need > memory_bytes:
            raise InputError(
                f"Expected at least {need / 1e9:.1f} GB per segmentation task for Cellpose blocks with halo "
                f"{tuple(halo)} ({mode}). Got {memory_bytes / 1e9:.1f} GB instead (--memory-gb)."
            )
        aniso = max(self.settings["anisotropy"] or 1.0, 1.0) if len(shape) == 3 else 1.0

        def core_for(side: int) -> tuple[int, ...]:
            sides = [side] * len(shape)
            if len(shape) == 3:  # fewer planes than Y/X pixels when the Z step is larger
                sides[0] = int(side / aniso)
            return tuple(min(n, max(lo, c)) for c, n, lo in zip(sides, shape, smallest))

        best = tuple(smallest)
        for side in range(16, 16 * (max(shape) // 16 + 2), 16):
            core = core_for(side)
            if math.prod(c + 2 * h for c, h in zip(core, halo)) > voxels:
                break
            best = core
        return best

    # ---- task time

    def open(self, ctx: SegmentationContext | None = None, **runtime: Any) -> "CellposeBackend":
        unknown = set(runtime) - {"device", "allow_cpu_fallback"}
        if unknown:
            raise InputError(f"Unknown run-time option(s) for cellpose: {sorted(unknown)}.")
        s = dict(self.settings)
        if self.ndim == 2:
            s["do_3D"] = False
        self._segmenter = CellposeSegmenter(
            **s, channel_axis=0 if self.n_channels > 1 else None,
            lowhigh=self.lowhigh if self.normalize == "global" else None,
            percentile=self.percentile if self.normalize == "block" else None,
            device=runtime.get("device") or os.environ.get("PYSTITCH_DEVICE", "auto"),
            allow_cpu_fallback=bool(runtime.get("allow_cpu_fallback", False)),
        )
        return self

    def close(self) -> None:
        if self._segmenter is not None:
            self._segmenter.close()
            self._segmenter = None

    def segment(self, data: np.ndarray, crop: tuple[slice, ...], ctx: SegmentationContext) -> np.ndarray:
        if self._segmenter is None:
            self.open(ctx)
        assert self._segmenter is not None
        block = data[(Ellipsis,) + crop] if data.ndim > ctx.ndim else data[crop]
        return self._segmenter(block)

    def info(self) -> dict:
        return self._segmenter.info() if self._segmenter is not None else {"backend": self.name}
