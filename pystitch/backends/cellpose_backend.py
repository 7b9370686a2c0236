"""The ``cellpose`` backend: Cellpose 3.x or 4.x with one GLOBAL normalisation.

Plan time (no cellpose or torch needed there): options are checked by the
adapter's validators (:func:`pystitch.backends.cellpose.check_settings` and
``check_model``, which reads model files without torch), the halo defaults to
one object diameter per side (fewer planes in Z when voxels are anisotropic),
the anisotropy defaults to the voxel sizes, and the intensity percentiles
that normalise EVERY block are computed once from an evenly strided sample of
the whole image (``normalize="global"``, the default) — dim and bright regions
are not stretched differently per block.  Blocks whose maximum is at or below
the low normalisation bound are empty (nothing but background after
normalisation) and skipped.

The diameter means what it means to Cellpose: omitted, the model's own scale
(cellpose 3: the ``diam_labels`` stored in the model file; cellpose 4: no
rescaling), read at plan time for the default halo; ``auto`` (or 0): Cellpose
3's size model estimates it once, at plan time (this needs cellpose there),
on the central region of a 2-D image.  Plan and summary record the diameter,
the model's own diameter and where the value came from.

Task time: the model is loaded once per task (per worker process), on the
device the task has (``--device auto``: a GPU when there is one).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np

from ..errors import InputError
from .base import Backend, SegmentationContext, register, reject_unknown
from .cellpose import (AUTO, CELLPOSE_DEFAULTS, CellposeSegmenter, check_model, check_settings, default_halo,
                       installed_major, model_diameter, size_model_file)

log = logging.getLogger(__name__)

OPTIONS = {
    "model", "pretrained_model", "diameter", "do_3d", "anisotropy", "stitch_threshold", "flow_threshold",
    "cellprob_threshold", "min_size", "max_size_fraction", "niter", "batch_size", "channels", "invert",
    "normalize", "percentile", "skip_below",
}
#: default normalisation percentiles: cellpose's own, applied globally
DEFAULT_PERCENTILE = CELLPOSE_DEFAULTS["percentile"]
#: the model cellpose uses when given none, per major version
DEFAULT_MODEL = {3: "cyto3", 4: "cpsam_v2"}
#: ``--diameter auto`` estimates on the central region of at most this many pixels per side
ESTIMATE_SIDE = 512
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


def flag(name: str) -> str:
    """An option as the command line spells it: do_3D -> --do-3d."""
    return "--" + name.lower().replace("_", "-")


@register
class CellposeBackend(Backend):
    name = "cellpose"
    default_rule = "match"

    def __init__(self, *, model: str | None = None, pretrained_model: str | None = None,
                 diameter: float | str | None = None, do_3D: bool = True, anisotropy: float | None = None,
                 stitch_threshold: float = 0.0, flow_threshold: float = CELLPOSE_DEFAULTS["flow_threshold"],
                 cellprob_threshold: float = CELLPOSE_DEFAULTS["cellprob_threshold"],
                 min_size: int = CELLPOSE_DEFAULTS["min_size"],
                 max_size_fraction: float = CELLPOSE_DEFAULTS["max_size_fraction"], niter: int | None = None,
                 batch_size: int = CELLPOSE_DEFAULTS["batch_size"], channels: list[int] | None = None,
                 invert: bool = False, normalize: str = "global",
                 percentile: list[float] | tuple[float, float] = DEFAULT_PERCENTILE, skip_below: float | None = None,
                 lowhigh: list[list[float]] | None = None, n_channels: int = 1, ndim: int = 3,
                 model_diameter: float | None = None, diameter_source: str | None = None) -> None:
        self.settings = dict(
            model=model, pretrained_model=pretrained_model, diameter=diameter, do_3D=do_3D, anisotropy=anisotropy,
            stitch_threshold=stitch_threshold, flow_threshold=flow_threshold, cellprob_threshold=cellprob_threshold,
            min_size=min_size, max_size_fraction=max_size_fraction, niter=niter, batch_size=batch_size,
            channels=None if channels is None else list(channels), invert=invert)
        self.normalize = normalize
        self.percentile = tuple(float(p) for p in percentile)
        self.skip_below = skip_below
        self.lowhigh = lowhigh
        self.n_channels = int(n_channels)
        self.ndim = int(ndim)
        #: the object diameter (pixels) the model segments at without a diameter
        self.model_diameter = model_diameter
        #: where the diameter used comes from, in words (plan.json, summary)
        self.diameter_source = diameter_source
        self._segmenter: CellposeSegmenter | None = None

    # ---- plan time

    @classmethod
    def from_options(cls, ndim: int, **options: Any) -> "CellposeBackend":
        options = {k.lower(): v for k, v in options.items()}  # --do-3D and --do-3d alike
        reject_unknown(cls.name, options, OPTIONS)
        major_here = installed_major()
        model, path = options.get("model"), options.get("pretrained_model")
        if model is None and path is None:
            model = DEFAULT_MODEL.get(major_here or 3)  # cellpose's own default model
        name, file, major = check_model(model, path, flag, major_here)

        stitch_given = options.get("stitch_threshold") is not None
        s = check_settings(
            flag, auto_diameter=True, diameter=options.get("diameter"),
            do_3D=options.get("do_3d", ndim == 3 and not stitch_given), anisotropy=options.get("anisotropy"),
            stitch_threshold=options.get("stitch_threshold", 0.0),
            flow_threshold=options.get("flow_threshold", CELLPOSE_DEFAULTS["flow_threshold"]),
            cellprob_threshold=options.get("cellprob_threshold", CELLPOSE_DEFAULTS["cellprob_threshold"]),
            min_size=options.get("min_size", CELLPOSE_DEFAULTS["min_size"]),
            max_size_fraction=options.get("max_size_fraction", CELLPOSE_DEFAULTS["max_size_fraction"]),
            niter=options.get("niter"), batch_size=options.get("batch_size", CELLPOSE_DEFAULTS["batch_size"]),
            channels=options.get("channels"), invert=options.get("invert", False),
            percentile=options.get("percentile", DEFAULT_PERCENTILE))
        do_3d = s["do_3D"] and ndim == 3
        stitch = s["stitch_threshold"]
        if ndim == 3 and not do_3d and stitch <= 0:
            stitch = 0.3  # per-plane segmentation needs planes to be joined
        normalize = str(options.get("normalize", "global")).strip().lower()
        if normalize not in ("global", "block"):
            raise InputError(f"Expected {flag('normalize')} to be global or block. "
                             f"Got {options['normalize']!r} instead.")
        skip = options.get("skip_below")
        if skip is not None:
            try:
                skip = float(skip)
            except (TypeError, ValueError):
                skip = math.nan
            if not math.isfinite(skip) or isinstance(options["skip_below"], bool):
                raise InputError(f"Expected {flag('skip_below')} to be a number (an intensity). "
                                 f"Got {options['skip_below']!r} instead.")

        diameter = s["diameter"]
        if diameter == AUTO:
            size_model_file(name, file, major, flag)  # one clear line now if there is none
            if ndim != 2:
                raise InputError(f"Expected a 2-D image for {flag('diameter')} auto (cellpose 3 estimates sizes of "
                                 f"2-D images only). Got a {ndim}-D image instead; give {flag('diameter')} in pixels.")
            own, source = None, "to be estimated by cellpose's size model"
        elif diameter is None:
            own, source = model_diameter(major, name, file)
            source = f"the model's own: {source}"
        else:
            own, source = model_diameter(major, name, file)[0], f"given ({flag('diameter')})"
        be = cls(model=name, pretrained_model=None if file is None else str(file.path), diameter=diameter,
                 do_3D=do_3d, anisotropy=s["anisotropy"], stitch_threshold=stitch,
                 flow_threshold=s["flow_threshold"], cellprob_threshold=s["cellprob_threshold"],
                 min_size=s["min_size"], max_size_fraction=s["max_size_fraction"], niter=s["niter"],
                 batch_size=s["batch_size"], channels=None if s["channels"] is None else list(s["channels"]),
                 invert=s["invert"], normalize=normalize, percentile=s["percentile"] or DEFAULT_PERCENTILE,
                 skip_below=skip, ndim=ndim,
                 model_diameter=own, diameter_source=source)
        if diameter is None:
            log.info("cellpose: no %s: segmenting at the model's own scale, as cellpose does: %s%s", flag("diameter"),
                     "diameter unknown until the weights are read" if own is None else f"{own:.4g} px", f" ({source})")
        elif diameter != AUTO:
            log.info("cellpose: diameter %.4g px (%s)", diameter, flag("diameter"))
        return be

    @property
    def diameter(self) -> float | None:
        """The object diameter in pixels the segmentation assumes (None: not known at plan time)."""
        d = self.settings["diameter"]
        return self.model_diameter if d is None else (None if d == AUTO else float(d))

    def adapt(self, source: Any) -> "CellposeBackend":
        self.n_channels = source.n_channels
        if self.settings["anisotropy"] is None and source.voxel_size and len(source.voxel_size) == 3:
            z, y, x = source.voxel_size
            self.settings["anisotropy"] = round(float(z / ((y + x) / 2)), 6)
        if self.settings["diameter"] == AUTO:
            self._estimate_diameter(source)
        return self

    def _estimate_diameter(self, source: Any) -> None:
        """``--diameter auto``: cellpose 3's size model, once, on the central region of the image."""
        if installed_major() is None:
            raise InputError(f"Expected cellpose to be installed where the plan is made for {flag('diameter')} auto "
                             "(its size model runs once, at plan time). Got no cellpose package instead; give "
                             f"{flag('diameter')} in pixels.")
        region = tuple(slice(max(0, (n - ESTIMATE_SIDE) // 2), max(0, (n - ESTIMATE_SIDE) // 2) + min(n, ESTIMATE_SIDE))
                       for n in source.shape)
        where = "x".join(str(r.stop - r.start) for r in region) + " region at " + \
            ",".join(str(r.start) for r in region)
        segmenter = CellposeSegmenter(
            model=self.settings["model"], pretrained_model=self.settings["pretrained_model"],
            channels=self.settings["channels"], channel_axis=0 if self.n_channels > 1 else None,
            percentile=self.percentile, invert=self.settings["invert"], batch_size=self.settings["batch_size"],
            device=os.environ.get("PYSTITCH_DEVICE", "auto"), allow_cpu_fallback=True)
        try:
            estimate = segmenter.estimate_diameter(source.read(region))
        finally:
            segmenter.close()
        self.settings["diameter"] = estimate
        self.diameter_source = f"estimated by cellpose's size model on the central {where}"
        log.info("cellpose: %s auto: diameter %.4g px, %s", flag("diameter"), estimate, self.diameter_source)

    def params(self) -> dict:
        return {**self.settings, "normalize": self.normalize, "percentile": list(self.percentile),
                "skip_below": self.skip_below, "lowhigh": self.lowhigh, "n_channels": self.n_channels,
                "ndim": self.ndim, "model_diameter": self.model_diameter, "diameter_source": self.diameter_source}

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
        if self.diameter is None:
            own = str(self.diameter_source).removeprefix("the model's own: ")
            raise InputError(f"Expected {flag('diameter')} in pixels or --halo: the default halo is one diameter, and "
                             f"the model's own diameter is {own}. Got neither instead.")
        return default_halo(self.diameter, self.settings["anisotropy"], ndim)

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
        if s["diameter"] == AUTO:
            raise InputError(f"Expected a plan whose {flag('diameter')} auto was estimated at plan time. "
                             "Got a plan without the estimate instead; make the plan again.")
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

    @property
    def segmenter(self) -> CellposeSegmenter:
        """The loaded adapter (after :meth:`open`): what the flows rule's predict step runs."""
        if self._segmenter is None:
            self.open()
        assert self._segmenter is not None
        return self._segmenter

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
