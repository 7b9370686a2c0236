"""Cellpose as a block segmenter: one interface over the cellpose 3.x and 4.x APIs.

The module imports without cellpose or torch installed; both are imported
inside the functions that need them.  It relies on nothing of pystitch but
:mod:`pystitch.errors`.

What it guarantees, whatever the cellpose major version:

* The model is built once (:class:`CellposeSegmenter` is constructed once per
  task) and never downloaded by surprise: a ``pretrained_model`` path is
  checked to exist, to be a file and to hold weights for the installed major
  version before cellpose sees it (cellpose falls back to downloading a
  default model for a path that does not exist).  Built-in names (``cyto3``,
  ``nuclei``, ``cpsam``...) are checked against the installed version; cellpose
  downloads their weights when they are not cached yet.
* Every block of an image is normalised identically when ``lowhigh`` (absolute
  intensity bounds per input channel, computed once for the whole image) is
  given; otherwise cellpose's per-block percentile normalisation applies.  The
  normalisation options are always passed as a complete dict: cellpose mutates
  its module-level defaults when it is given a bool.
* ``diameter=None`` never estimates the size per block (which would make blocks
  disagree): cellpose 3 uses the model's training diameter, cellpose 4 no
  rescaling.
* Labels come back as ``uint32`` with the block's spatial shape, 0 for
  background and 1..n for objects.
"""

from __future__ import annotations

import logging
import math
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import DeviceError, InputError, InputNotFoundError, SegmenterError

logger = logging.getLogger(__name__)

__all__ = [
    "CellposeSegmenter",
    "SUPPORTED_MAJORS",
    "cellpose_version",
    "default_halo",
    "resolve_device",
]

#: cellpose major versions this adapter speaks
SUPPORTED_MAJORS = (3, 4)

INSTALL_HINT = (
    "Install cellpose with `pip install 'cellpose==3.1.1.3'` or `pip install 'cellpose==4.2.1.1'` "
    "(pin torch, and for cellpose 4 torchvision, from one build)."
)

#: built-in model names of each major version (cellpose downloads their weights)
_BUILTIN_NAMES: dict[int, frozenset[str]] = {
    3: frozenset({
        "cyto3", "nuclei", "cyto2_cp3", "tissuenet_cp3", "livecell_cp3", "yeast_PhC_cp3",
        "yeast_BF_cp3", "bact_phase_cp3", "bact_fluor_cp3", "deepbacs_cp3", "cyto2", "cyto",
        "CPx", "transformer_cp3", "neurips_cellpose_default", "neurips_cellpose_transformer",
        "neurips_grayscale_cyto2", "CP", "TN1", "TN2", "TN3", "LC1", "LC2", "LC3", "LC4",
    }),
    4: frozenset({"cpsam", "cpsam_v2", "cpdino", "cpdino-vitb"}),
}

#: the normalisation keys cellpose 3.1 and 4.x understand; all are passed, every call
_NORMALIZE_KEYS = (
    "lowhigh", "percentile", "normalize", "norm3D", "sharpen_radius", "smooth_radius",
    "tile_norm_blocksize", "tile_norm_smooth3D", "invert",
)

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


# ---------------------------------------------------------------- versions and devices


def cellpose_version() -> str:
    """Version of the installed cellpose, read from its metadata (no import)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cellpose")
    except PackageNotFoundError:
        raise InputError(
            f"Expected cellpose to be installed. Got no cellpose package instead. {INSTALL_HINT}"
        ) from None


def _major(version: str) -> int:
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise InputError(f"Expected a cellpose version like 3.1.1 or 4.2.1. Got {version!r} instead.") from None
    if major not in SUPPORTED_MAJORS:
        raise InputError(
            f"Expected cellpose major version {' or '.join(map(str, SUPPORTED_MAJORS))}. "
            f"Got cellpose {version} instead. {INSTALL_HINT}"
        )
    return major


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise InputError(f"Expected torch to be importable for cellpose. Got {exc} instead. {INSTALL_HINT}") from exc
    return torch


def _import_cellpose_models() -> Any:
    try:
        from cellpose import models
    except ImportError as exc:
        raise InputError(
            f"Expected cellpose {cellpose_version()} to be importable. Got {type(exc).__name__}: {exc} instead. "
            f"{INSTALL_HINT}"
        ) from exc
    except RuntimeError as exc:  # e.g. a torchvision built for another torch
        raise InputError(
            f"Expected cellpose {cellpose_version()} to import. Got {type(exc).__name__}: {exc} instead "
            "(torch and torchvision must come from the same build)."
        ) from exc
    return models


def resolve_device(device: str = "auto", allow_cpu_fallback: bool = False) -> str:
    """The torch device to run on: ``"cpu"``, ``"cuda:N"`` or ``"mps"``.

    ``"auto"`` picks the first CUDA GPU torch sees, else Apple's MPS, else the
    CPU.  An explicit ``"cuda"``/``"cuda:N"``/``"mps"`` that is not available
    raises :class:`DeviceError`, unless ``allow_cpu_fallback`` is set: then a
    warning is logged and the CPU is used.
    """
    if not isinstance(device, str) or not _DEVICE_RE.match(device.strip().lower()):
        raise InputError(f"Expected device 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'. Got {device!r} instead.")
    device = device.strip().lower()
    if device == "cpu":
        return "cpu"
    torch = _import_torch()
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if device == "auto":
        if n_cuda:
            return "cuda:0"
        return "mps" if mps else "cpu"
    if device == "mps":
        if mps:
            return "mps"
        problem = "Got no MPS device instead"
    else:
        index = int(device.split(":")[1]) if ":" in device else 0
        if index < n_cuda:
            return f"cuda:{index}"
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        problem = f"Got {n_cuda} CUDA device(s) visible to torch {torch.__version__} ({build}) instead"
    message = f"Expected device {device!r} to be available. {problem}."
    if allow_cpu_fallback:
        logger.warning("%s Falling back to the CPU.", message)
        return "cpu"
    raise DeviceError(message + " Use device='auto' or 'cpu', or allow the CPU fallback.")


def default_halo(diameter: float, anisotropy: float | None = None, ndim: int = 2) -> tuple[int, ...]:
    """A halo of at least one object diameter per side on every axis.

    ``diameter`` is in pixels of the Y/X axes.  For 3-D, the Z axis (first) is
    divided by ``anisotropy`` (Z step / XY step): a diameter spans fewer planes
    when they are farther apart.  Every axis gets at least one voxel.
    """
    size = _positive("diameter", diameter, allow_none=False)
    z_step = _positive("anisotropy", anisotropy) or 1.0
    if ndim not in (2, 3):
        raise InputError(f"Expected ndim 2 or 3. Got {ndim!r} instead.")
    assert size is not None
    xy = max(1, math.ceil(size))
    if ndim == 2:
        return (xy, xy)
    return (max(1, math.ceil(size / z_step)), xy, xy)


# ---------------------------------------------------------------- validation


def _positive(name: str, value: Any, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        what = "a number > 0" + (" or None" if allow_none else "")
        raise InputError(f"Expected {name} to be {what}. Got {value!r} instead.")
    return number


def _in_range(name: str, value: Any, lo: float, hi: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not (lo <= number <= hi):
        raise InputError(f"Expected {name} between {lo:g} and {hi:g}. Got {value!r} instead.")
    return number


def _int_at_least(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise InputError(f"Expected {name} to be an integer >= {lo}. Got {value!r} instead.")
    return int(value)


def _check_channels(channels: Any) -> tuple[int, int] | None:
    if channels is None:
        return None
    try:
        pair = tuple(channels)
    except TypeError:
        pair = ()
    if len(pair) != 2 or not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 0 for c in pair):
        raise InputError(
            "Expected channels as a pair [channel to segment, nuclear channel] of 1-based indices "
            f"(0 = grayscale / none), or None. Got {channels!r} instead."
        )
    return int(pair[0]), int(pair[1])


def _check_lowhigh(lowhigh: Any) -> tuple[tuple[float, float], ...] | None:
    if lowhigh is None:
        return None
    arr = np.asarray(lowhigh, dtype=float) if _is_numeric(lowhigh) else None
    if arr is not None and arr.shape == (2,):
        arr = arr[None, :]  # one (low, high) pair for a single-channel image
    if arr is None or arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 1 \
            or not np.all(np.isfinite(arr)) or not np.all(arr[:, 0] < arr[:, 1]):
        raise InputError(
            "Expected lowhigh as one (low, high) pair of finite absolute intensities per input channel, "
            f"low < high. Got {lowhigh!r} instead."
        )
    return tuple((float(lo), float(hi)) for lo, hi in arr)


def _is_numeric(value: Any) -> bool:
    try:
        np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return False
    return True


def _model_file_major(path: pathlib.Path, version: str) -> int:
    """Which cellpose major version a weights file is for (3: CPnet, 4: CPSAM/CPDINO)."""
    torch = _import_torch()
    state = None
    error: Exception | None = None
    for mmap in (True, False):  # mmap avoids reading a 1.2 GB file; old formats need False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            break
        except Exception as exc:  # noqa: BLE001 - anything torch cannot read is "not a model"
            error = exc
    if state is None:
        raise InputError(
            f"Expected a Cellpose model file (torch weights) for the installed cellpose {version} at {path}. "
            f"Got a file torch cannot load instead ({type(error).__name__}: {str(error).splitlines()[0][:200]})."
        )
    keys = {k[7:] if k.startswith("module.") else k for k in state} if isinstance(state, dict) else set()
    if "W2" in keys:
        return 4
    if "output.2.weight" in keys and any(k.startswith("downsample.") for k in keys):
        return 3
    raise InputError(
        f"Expected a Cellpose model file for the installed cellpose {version} at {path}. "
        f"Got torch data that holds no Cellpose network weights instead ({len(keys)} entries)."
    )


# ---------------------------------------------------------------- segmenter


class CellposeSegmenter:
    """Segment image blocks with one Cellpose model, loaded once.

    Parameters
    ----------
    model:
        A built-in model name of the installed version (``cyto3``, ``nuclei``...
        for cellpose 3; ``cpsam``, ``cpsam_v2``... for cellpose 4).  Cellpose
        downloads its weights when they are not cached.
    pretrained_model:
        Path of a model file; exactly one of ``model`` and ``pretrained_model``.
    diameter:
        Typical object diameter in pixels (> 0), or None for the model's own
        scale (never estimated per block).
    do_3D, anisotropy, stitch_threshold:
        3-D blocks are segmented either in 3-D (``do_3D``, ``anisotropy`` = Z
        step / XY step) or plane by plane with planes joined at IoU
        ``stitch_threshold`` (> 0).
    flow_threshold, cellprob_threshold, min_size, max_size_fraction, niter, batch_size:
        Passed to cellpose (``flow_threshold`` is not used in 3-D).
    channels:
        Cellpose-3 style ``(channel to segment, nuclear channel)``, 1-based.
        ``(c, n)`` with ``c > 0`` feeds channel ``c`` then, if ``n > 0``,
        channel ``n`` (on both versions); ``(0, ...)`` feeds the mean of all
        channels as one grayscale channel.  ``None`` feeds the first channels
        (2 on cellpose 3, up to 3 on cellpose 4).
    channel_axis:
        ``None``: blocks are spatial, ``(Y, X)`` or ``(Z, Y, X)``; ``0``: blocks
        are channel-first, ``(C, Y, X)`` or ``(C, Z, Y, X)``.
    lowhigh:
        Absolute normalisation bounds ``(low, high)`` per input channel (of the
        block as given, before ``channels`` selects), the same for every block;
        a grayscale mean gets the mean bounds.  ``None`` normalises each block
        by its own 1st and 99th (or ``percentile``) percentiles.
    percentile, invert:
        Per-block percentiles used when ``lowhigh`` is None; invert intensities
        after normalisation (dark objects on a bright background).
    device, allow_cpu_fallback:
        See :func:`resolve_device`.
    use_bfloat16:
        Cellpose 4 only: bfloat16 weights; default on CUDA only.
    """

    def __init__(
        self,
        *,
        model: str | None = None,
        pretrained_model: str | pathlib.Path | None = None,
        diameter: float | None = None,
        do_3D: bool = False,
        anisotropy: float | None = None,
        stitch_threshold: float = 0.0,
        flow_threshold: float = 0.4,
        cellprob_threshold: float = 0.0,
        min_size: int = 15,
        max_size_fraction: float = 0.4,
        niter: int | None = None,
        batch_size: int = 8,
        channels: Sequence[int] | None = None,
        channel_axis: int | None = None,
        lowhigh: Sequence[Sequence[float]] | None = None,
        percentile: tuple[float, float] | None = None,
        invert: bool = False,
        device: str = "auto",
        allow_cpu_fallback: bool = False,
        use_bfloat16: bool | None = None,
    ) -> None:
        self.version = cellpose_version()
        self.major = _major(self.version)

        # ---- validate everything before touching cellpose
        if (model is None) == (pretrained_model is None):
            raise InputError(
                "Expected exactly one of model (a built-in name) and pretrained_model (a file path). "
                f"Got model={model!r}, pretrained_model={pretrained_model!r} instead."
            )
        self.diameter = _positive("diameter", diameter)
        self.anisotropy = _positive("anisotropy", anisotropy)
        self.do_3D = bool(do_3D)
        self.stitch_threshold = _in_range("stitch_threshold", stitch_threshold, 0.0, 1.0)
        self.flow_threshold = _in_range("flow_threshold", flow_threshold, 0.0, math.inf)
        self.cellprob_threshold = _in_range("cellprob_threshold", cellprob_threshold, -6.0, 6.0)
        self.min_size = _int_at_least("min_size", min_size, 0)
        self.max_size_fraction = _in_range("max_size_fraction", max_size_fraction, 0.0, 1.0)
        self.niter = None if niter is None else _int_at_least("niter", niter, 1)
        self.batch_size = _int_at_least("batch_size", batch_size, 1)
        self.channels = _check_channels(channels)
        if channel_axis not in (None, 0):
            raise InputError(f"Expected channel_axis 0 (channel-first blocks) or None. Got {channel_axis!r} instead.")
        self.channel_axis = channel_axis
        self.lowhigh = _check_lowhigh(lowhigh)
        if percentile is not None:
            pair = tuple(percentile) if isinstance(percentile, (tuple, list)) else ()
            if len(pair) != 2:
                raise InputError(f"Expected percentile as a (low, high) pair. Got {percentile!r} instead.")
            lo, hi = (_in_range("percentile", p, 0.0, 100.0) for p in pair)
            if not lo < hi:
                raise InputError(f"Expected percentile (low, high) with low < high. Got {percentile!r} instead.")
            percentile = (lo, hi)
        self.percentile = percentile
        self.invert = bool(invert)
        if self.do_3D and self.stitch_threshold > 0:
            raise InputError(
                "Expected either do_3D=True or stitch_threshold > 0 for 3-D blocks. "
                f"Got do_3D=True and stitch_threshold={self.stitch_threshold} instead."
            )

        self.model_name: str | None = None
        self.model_path: pathlib.Path | None = None
        if model is not None:
            self.model_name = self._check_builtin(model)
        else:
            self.model_path = self._check_model_file(pretrained_model)

        self.device = resolve_device(device, allow_cpu_fallback)
        self.use_bfloat16 = self.device.startswith("cuda") if use_bfloat16 is None else bool(use_bfloat16)
        self._model = self._build()

    # ------------------------------------------------------------ construction

    def _check_builtin(self, name: Any) -> str:
        if not isinstance(name, str) or not name:
            raise InputError(f"Expected model to be a built-in Cellpose model name. Got {name!r} instead.")
        models = _import_cellpose_models()
        known = frozenset(getattr(models, "MODEL_NAMES", ())) or _BUILTIN_NAMES[self.major]
        if name in known:
            model_dir = pathlib.Path(getattr(models, "MODEL_DIR", pathlib.Path.home() / ".cellpose" / "models"))
            if not any(model_dir.glob(f"{name}*")):
                logger.info("cellpose will download the weights of %r into %s", name, model_dir)
            return name
        other = [m for m in SUPPORTED_MAJORS if m != self.major and name in _BUILTIN_NAMES[m]]
        if other:
            raise InputError(
                f"Expected a model of installed cellpose {self.version} ({', '.join(sorted(known))}). "
                f"Got {name!r}, a cellpose {other[0]} model, instead."
            )
        hint = " (for a model file, use pretrained_model=PATH)" if ("/" in name or "." in name) else ""
        raise InputError(
            f"Expected a built-in model name of cellpose {self.version}: {', '.join(sorted(known))}. "
            f"Got {name!r} instead{hint}."
        )

    def _check_model_file(self, value: Any) -> pathlib.Path:
        if not isinstance(value, (str, pathlib.PurePath)) or not str(value):
            raise InputError(f"Expected pretrained_model to be a file path. Got {value!r} instead.")
        path = pathlib.Path(value).expanduser()
        if not path.exists():
            raise InputNotFoundError(f"Expected a Cellpose model file at {path}. Got no such file instead.")
        if not path.is_file():
            raise InputError(f"Expected a Cellpose model file at {path}. Got a directory instead.")
        file_major = _model_file_major(path, self.version)
        if file_major != self.major:
            raise InputError(
                f"Expected a cellpose {self.major} model file for the installed cellpose {self.version}. "
                f"Got a cellpose {file_major} model at {path} instead."
            )
        return path.resolve()

    def _build(self) -> Any:
        torch = _import_torch()
        models = _import_cellpose_models()
        kwargs: dict[str, Any] = {"gpu": self.device != "cpu", "device": torch.device(self.device)}
        if self.major == 3:
            if self.model_path is not None:
                kwargs.update(pretrained_model=str(self.model_path), model_type=None)
            else:
                kwargs.update(pretrained_model=False, model_type=self.model_name)
        else:
            kwargs.update(
                pretrained_model=str(self.model_path) if self.model_path is not None else self.model_name,
                use_bfloat16=self.use_bfloat16,
            )
        source = self.model_path or f"built-in {self.model_name!r}"
        try:
            return models.CellposeModel(**kwargs)
        except (OSError, ConnectionError) as exc:
            if self.model_path is None:
                raise SegmenterError(
                    f"Expected the weights of built-in Cellpose model {self.model_name!r} in "
                    f"{getattr(models, 'MODEL_DIR', '~/.cellpose/models')} or downloadable. Got "
                    f"{type(exc).__name__}: {exc} instead. Offline, copy the file there or use pretrained_model=PATH."
                ) from exc
            raise SegmenterError(
                f"Expected cellpose to load the model {source}. Got {type(exc).__name__}: {exc} instead."
            ) from exc
        except (ValueError, AssertionError, RuntimeError, KeyError) as exc:
            raise InputError(
                f"Expected a model that cellpose {self.version} can load at {source}. "
                f"Got {type(exc).__name__}: {str(exc).strip()[:300]} instead."
            ) from exc

    # ------------------------------------------------------------ segmentation

    @property
    def model_diameter(self) -> float | None:
        """The scale the model works at when ``diameter`` is None (cellpose 3)."""
        if self.major == 3:
            return float(self._model.diam_labels)
        return None

    def _normalize_options(self, lowhigh: np.ndarray | None) -> dict[str, Any]:
        options = {
            "lowhigh": None if lowhigh is None else lowhigh.tolist(),
            "percentile": list(self.percentile) if self.percentile else [1.0, 99.0],
            "normalize": True,
            "norm3D": True,
            "sharpen_radius": 0,
            "smooth_radius": 0,
            "tile_norm_blocksize": 0,
            "tile_norm_smooth3D": 1,
            "invert": self.invert,
        }
        assert tuple(options) == _NORMALIZE_KEYS
        return options

    def _channels_last(self, block: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        """Block as (spatial..., C) and its spatial shape."""
        if not isinstance(block, np.ndarray):
            block = np.asarray(block)
        if block.dtype.kind not in "uifb":
            raise InputError(f"Expected a numeric image block. Got dtype {block.dtype} instead.")
        if self.channel_axis is None:
            if block.ndim not in (2, 3):
                raise InputError(
                    "Expected a block of shape (Y, X) or (Z, Y, X) (channel_axis=None). "
                    f"Got shape {block.shape} instead."
                )
            return block[..., None], tuple(block.shape)
        if block.ndim not in (3, 4):
            raise InputError(
                f"Expected a channel-first block of shape (C, Y, X) or (C, Z, Y, X). Got shape {block.shape} instead."
            )
        return np.moveaxis(block, 0, -1), tuple(block.shape[1:])

    def _select_channels(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Pick the input channels cellpose gets, with their normalisation bounds."""
        n_in = x.shape[-1]
        bounds = None
        if self.lowhigh is not None:
            if len(self.lowhigh) != n_in:
                raise InputError(
                    f"Expected lowhigh with one (low, high) pair per input channel ({n_in}). "
                    f"Got {len(self.lowhigh)} pair(s) instead."
                )
            bounds = np.asarray(self.lowhigh, dtype=np.float64)
        if self.channels is None:
            keep = list(range(min(n_in, 2 if self.major == 3 else 3)))
        elif self.channels[0] == 0:  # grayscale: the mean of all channels
            x = x.astype(np.float32).mean(axis=-1, keepdims=True)
            return x, None if bounds is None else bounds.mean(axis=0, keepdims=True)
        else:
            keep = [c - 1 for c in self.channels if c > 0]
            if max(keep) >= n_in:
                raise InputError(
                    f"Expected channels {list(self.channels)} (1-based) within the block's {n_in} channel(s). "
                    "Got an index beyond them instead."
                )
        if keep != list(range(n_in)):
            x = x[..., keep]
            bounds = None if bounds is None else bounds[keep]
        return x, bounds

    def __call__(self, block: np.ndarray) -> np.ndarray:
        """Labels (``uint32``, 0 background, 1..n) of one block, with its spatial shape."""
        x, spatial = self._channels_last(block)
        if len(spatial) == 3 and spatial[0] == 1:  # one plane: segment it in 2-D
            return self._segment(x[0], spatial[1:]).reshape(spatial)
        return self._segment(x, spatial)

    def _segment(self, x: np.ndarray, spatial: tuple[int, ...]) -> np.ndarray:
        three_d = len(spatial) == 3
        if self.do_3D and not three_d:
            raise InputError(f"Expected a 3-D block (Z, Y, X) for do_3D=True. Got spatial shape {spatial} instead.")
        if three_d and not self.do_3D and self.stitch_threshold <= 0:
            raise InputError(
                "Expected do_3D=True or stitch_threshold > 0 to segment a 3-D block. "
                f"Got do_3D=False, stitch_threshold={self.stitch_threshold} for shape {spatial} instead."
            )
        if min(spatial) < 2:
            raise InputError(
                f"Expected a block at least 2 pixels wide on every axis. Got spatial shape {spatial} instead."
            )
        x, bounds = self._select_channels(x)
        if bounds is not None and self.major == 3 and x.shape[-1] == 1:
            # cellpose 3 appends a zero channel; (0, 1) keeps it zero
            bounds = np.vstack([bounds, [0.0, 1.0]])
        kwargs: dict[str, Any] = {
            "batch_size": self.batch_size,
            "channel_axis": x.ndim - 1,
            "z_axis": 0 if three_d else None,
            "normalize": self._normalize_options(bounds),
            "diameter": self.diameter,
            "flow_threshold": self.flow_threshold,
            "cellprob_threshold": self.cellprob_threshold,
            "do_3D": self.do_3D and three_d,
            "anisotropy": self.anisotropy,
            "stitch_threshold": self.stitch_threshold if three_d else 0.0,
            "min_size": self.min_size,
            "max_size_fraction": self.max_size_fraction,
            "niter": self.niter,
        }
        if self.major == 3:
            kwargs["channels"] = [1, 2] if x.shape[-1] > 1 else [1, 0]
        try:
            masks = self._model.eval(x, **kwargs)[0]
        except Exception as exc:  # noqa: BLE001 - any failure inside cellpose is a segmenter failure
            hint = ""
            if "out of memory" in str(exc).lower():
                hint = " Lower batch_size or the block size."
            raise SegmenterError(
                f"Expected cellpose {self.version} to segment a block of shape {x.shape} (spatial {spatial}) on "
                f"{self.device}. Got {type(exc).__name__}: {str(exc).strip()[:300]} instead.{hint}"
            ) from exc
        return self._as_labels(np.asarray(masks), spatial)

    @staticmethod
    def _as_labels(masks: np.ndarray, spatial: tuple[int, ...]) -> np.ndarray:
        if masks.size == np.prod(spatial) and masks.shape != spatial:
            masks = masks.reshape(spatial)  # cellpose squeezes unit axes
        if masks.shape != spatial or masks.dtype.kind not in "iu":
            raise SegmenterError(
                f"Expected integer labels of shape {spatial} from cellpose. "
                f"Got {masks.dtype} of shape {masks.shape} instead."
            )
        labels = masks.astype(np.uint32, copy=False)
        top = int(labels.max()) if labels.size else 0
        if top:
            present = np.bincount(labels.ravel(), minlength=top + 1) > 0
            present[0] = False
            n = int(present.sum())
            if n != top:  # make ids consecutive 1..n
                lut = np.zeros(top + 1, np.uint32)
                lut[present] = np.arange(1, n + 1, dtype=np.uint32)
                labels = lut[labels]
        return labels

    # ------------------------------------------------------------ the flows rule's predict step

    def model_facts(self) -> Any:
        """What ``eval`` decides about the tiling with these settings
        (:class:`pystitch.flows.predict.ModelFacts`): tile size, channels,
        rescale factor (cellpose 3: ``diam_mean / diameter``, the model's
        ``diam_labels`` without one; cellpose 4: ``30 / diameter``, 1 without)."""
        from ..flows.predict import ModelFacts

        m = self._model
        if self.major == 3:
            rescale = m.diam_mean / (self.diameter if self.diameter else m.diam_labels)
            bsize, nchan = 224, 2
        else:
            rescale = 30.0 / self.diameter if self.diameter else 1.0
            bsize = 256 if getattr(m, "backbone", "sam_vitl") == "sam_vitl" else 384
            nchan = 3
        return ModelFacts(major=self.major, bsize=bsize, nchan=nchan, nout=3, rescale=float(rescale),
                          anisotropy=self.anisotropy if self.do_3D else None, batch_size=self.batch_size)

    def network_input(self, block: np.ndarray) -> np.ndarray:
        """Any part of the image as ``eval`` feeds it to the network before
        resizing (channels last, float32): the selected channels normalised
        with the global ``lowhigh`` -- per-block percentiles would make every
        block's input different from the whole image's."""
        from ..flows.predict import prepare

        x, _ = self._channels_last(block)
        x, bounds = self._select_channels(x)
        if bounds is None:
            raise InputError("Expected lowhigh (global normalisation bounds) for the flows rule. Got none instead: "
                             "per-block percentiles differ from the whole image's.")
        if self.major == 3 and x.shape[-1] == 1:
            bounds = np.vstack([bounds, [0.0, 1.0]])
        return prepare(x, self.major, bounds, self.invert)

    def forward(self, tiles: np.ndarray) -> np.ndarray:
        """The network on a batch of tiles ``(n, nchan, ly, lx)``: ``(n, 3, ly, lx)`` float32."""
        from cellpose import core

        y = np.asarray(core._forward(self._model.net, tiles)[0], np.float32)
        if y.ndim != 4 or y.shape[1] != 3:
            raise SegmenterError(f"Expected the network to give (n, 3, ly, lx) (flows, cell probability). "
                                 f"Got shape {y.shape} instead.")
        return y

    # ------------------------------------------------------------ description

    def info(self) -> dict[str, Any]:
        """Settings and versions to record in block manifests."""
        import importlib.metadata as metadata

        try:
            torch_version = metadata.version("torch")
        except metadata.PackageNotFoundError:  # pragma: no cover - cellpose needs torch
            torch_version = None
        return {
            "backend": "cellpose",
            "cellpose_version": self.version,
            "torch_version": torch_version,
            "device": self.device,
            "model": self.model_name,
            "pretrained_model": None if self.model_path is None else str(self.model_path),
            "diameter": self.diameter,
            "model_diameter": self.model_diameter,
            "do_3D": self.do_3D,
            "anisotropy": self.anisotropy,
            "stitch_threshold": self.stitch_threshold,
            "flow_threshold": self.flow_threshold,
            "cellprob_threshold": self.cellprob_threshold,
            "min_size": self.min_size,
            "max_size_fraction": self.max_size_fraction,
            "niter": self.niter,
            "channels": None if self.channels is None else list(self.channels),
            "channel_axis": self.channel_axis,
            "invert": self.invert,
            "use_bfloat16": self.use_bfloat16 if self.major >= 4 else None,
            "normalization": "global lowhigh" if self.lowhigh is not None else "per-block percentile",
            "lowhigh": None if self.lowhigh is None else [list(p) for p in self.lowhigh],
            "percentile": list(self.percentile) if self.percentile else [1.0, 99.0],
        }

    def close(self) -> None:
        """Drop the model (and cached GPU memory)."""
        self._model = None
        if self.device.startswith("cuda"):
            _import_torch().cuda.empty_cache()

    def __repr__(self) -> str:
        source = self.model_name or self.model_path
        return f"CellposeSegmenter(cellpose {self.version}, {source}, device={self.device}, diameter={self.diameter})"
