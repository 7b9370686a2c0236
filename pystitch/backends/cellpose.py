"""Cellpose as a block segmenter: one interface over the cellpose 3.x and 4.x APIs.

The module imports without cellpose or torch installed; both are imported
inside the functions that need them.  It relies on nothing of pystitch but
:mod:`pystitch.errors`.

What it guarantees, whatever the cellpose major version:

* Every option is validated in one place, :func:`check_settings` (and
  :func:`check_model` for the model), before cellpose is imported; a caller
  such as a command line passes ``flag`` to have errors name its own spelling
  of the option (``--diameter`` instead of ``diameter``).
* The model is built once (:class:`CellposeSegmenter` is constructed once per
  task) and never downloaded by surprise: a ``pretrained_model`` path is
  checked to exist, to be a file and to hold weights for the installed major
  version before cellpose sees it (cellpose falls back to downloading a
  default model for a path that does not exist).  Model files are read
  without torch (:func:`inspect_model_file`), so this works where only the
  plan is made.  Built-in names (``cyto3``, ``nuclei``, ``cpsam``...) are
  checked against the installed version; cellpose downloads their weights
  when they are not cached yet.
* Every block of an image is normalised identically when ``lowhigh`` (absolute
  intensity bounds per input channel, computed once for the whole image) is
  given; otherwise cellpose's per-block percentile normalisation applies.  The
  normalisation options are always passed as a complete dict: cellpose mutates
  its module-level defaults when it is given a bool.
* ``diameter=None`` means what it means to cellpose's ``CellposeModel.eval``:
  cellpose 3 rescales by the model's ``diam_mean / diam_labels`` (objects are
  taken to be ``diam_labels`` pixels wide, see :func:`model_diameter`),
  cellpose 4 does not rescale.  The size is never estimated per block (which
  would make blocks disagree): :meth:`CellposeSegmenter.estimate_diameter` runs
  cellpose 3's size model once, on an image the caller chooses.
* Labels come back as ``uint32`` with the block's spatial shape, 0 for
  background and 1..n for objects.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import logging
import math
import os
import pathlib
import pickle
import re
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import DeviceError, InputError, InputNotFoundError, SegmenterError

logger = logging.getLogger(__name__)

__all__ = [
    "AUTO",
    "CELLPOSE_DEFAULTS",
    "CellposeSegmenter",
    "ModelFile",
    "SUPPORTED_MAJORS",
    "cellpose_version",
    "check_model",
    "check_settings",
    "default_halo",
    "inspect_model_file",
    "installed_major",
    "model_diameter",
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

#: cellpose 3 built-in models that come with a size model (``size_<name>*.npy``)
_SIZE_MODEL_NAMES = frozenset({"cyto", "cyto2", "cyto3", "nuclei"})

#: the defaults of ``CellposeModel.eval`` in cellpose 3.1 and 4.x (and of
#: ``transforms.normalize_img`` for the percentiles); tests compare them with
#: the installed cellpose
CELLPOSE_DEFAULTS: dict[str, Any] = {
    "diameter": None,
    "flow_threshold": 0.4,
    "cellprob_threshold": 0.0,
    "min_size": 15,
    "max_size_fraction": 0.4,
    "niter": None,
    "batch_size": 8,
    "stitch_threshold": 0.0,
    "anisotropy": None,
    "do_3D": False,
    "percentile": (1.0, 99.0),
}

#: cellpose 4 rescales by 30 / diameter: without a diameter it segments objects
#: as they are, as if they were 30 px wide
CP4_REFERENCE_DIAMETER = 30.0

#: ``diameter`` value asking for cellpose 3's size estimation (also spelt 0)
AUTO = "auto"

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


def installed_major() -> int | None:
    """Major version of the installed cellpose, or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return _major(version("cellpose"))
    except PackageNotFoundError:
        return None


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
    size = _positive(diameter, "diameter", none_ok=False)
    z_step = _positive(anisotropy, "anisotropy") or 1.0
    if ndim not in (2, 3):
        raise InputError(f"Expected ndim 2 or 3. Got {ndim!r} instead.")
    assert size is not None
    xy = max(1, math.ceil(size))
    if ndim == 2:
        return (xy, xy)
    return (max(1, math.ceil(size / z_step)), xy, xy)


# ---------------------------------------------------------------- options: one validator each

#: how an error names an option: the keyword itself, or e.g. a command-line flag
Flag = Callable[[str], str]


def _keyword(name: str) -> str:
    return name


def _number(value: Any) -> float:
    """``value`` as a float (numbers and numeric text), NaN when it is neither."""
    if isinstance(value, bool):
        return math.nan
    try:
        return float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        return math.nan


def _positive(value: Any, label: str, none_ok: bool = True) -> float | None:
    if value is None and none_ok:
        return None
    number = _number(value)
    if not math.isfinite(number) or number <= 0:
        raise InputError(f"Expected {label} to be a number > 0{' or None' if none_ok else ''}. Got {value!r} instead.")
    return number


def _in_range(value: Any, label: str, lo: float, hi: float) -> float:
    number = _number(value)
    if not lo <= number <= hi:
        raise InputError(f"Expected {label} to be a number from {lo:g} to {hi:g}. Got {value!r} instead.")
    return number


def _integer(value: Any, label: str, lo: int, none_ok: bool = False) -> int | None:
    if value is None and none_ok:
        return None
    number = _number(value)
    if not (math.isfinite(number) and number == int(number) and number >= lo) or isinstance(value, float):
        raise InputError(f"Expected {label} to be an integer >= {lo}{' or None' if none_ok else ''}. "
                         f"Got {value!r} instead.")
    return int(number)


def _boolean(value: Any, label: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.strip().lower() in ("true", "yes", "1")
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    raise InputError(f"Expected {label} to be true or false. Got {value!r} instead.")


def _items(value: Any) -> list[Any] | None:
    """A sequence, or text of comma-separated items, as a list."""
    if isinstance(value, str):
        return [v for v in value.replace(" ", "").split(",") if v]
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    return None


def _diameter(value: Any, label: str, auto_ok: bool) -> float | str | None:
    if value is None:
        return None
    if auto_ok and (value == 0 or (isinstance(value, str) and value.strip().lower() in (AUTO, "0"))) \
            and not isinstance(value, bool):
        return AUTO
    number = _number(value)
    if not math.isfinite(number) or number <= 0:
        what = "a number > 0 (pixels), 'auto' or 0 (Cellpose's size estimation)" if auto_ok else "a number > 0"
        raise InputError(f"Expected {label} to be {what}, or None for the model's own diameter. "
                         f"Got {value!r} instead.")
    return number


def _channels(value: Any, label: str) -> tuple[int, int] | None:
    if value is None:
        return None
    pair = _items(value)
    numbers = [_number(c) for c in pair] if pair is not None else []
    if len(numbers) != 2 or not all(math.isfinite(n) and n == int(n) and n >= 0 for n in numbers) \
            or any(isinstance(c, (bool, float)) for c in pair or ()):
        raise InputError(f"Expected {label} as a pair (channel to segment, nuclear channel) of 1-based indices "
                         f"(0 = grayscale / none). Got {value!r} instead.")
    return int(numbers[0]), int(numbers[1])


def _percentile(value: Any, label: str) -> tuple[float, float] | None:
    if value is None:
        return None
    pair = _items(value)
    numbers = [_number(v) for v in pair] if pair is not None else []
    if len(numbers) != 2 or not 0 <= numbers[0] < numbers[1] <= 100:
        raise InputError(f"Expected {label} as two numbers low,high with 0 <= low < high <= 100, e.g. 1,99. "
                         f"Got {value!r} instead.")
    return numbers[0], numbers[1]


def _lowhigh(value: Any, label: str) -> tuple[tuple[float, float], ...] | None:
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        arr = None
    if arr is not None and arr.shape == (2,):
        arr = arr[None, :]  # one (low, high) pair for a single-channel image
    if arr is None or arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 1 \
            or not np.all(np.isfinite(arr)) or not np.all(arr[:, 0] < arr[:, 1]):
        raise InputError(f"Expected {label} as one (low, high) pair of finite absolute intensities per input "
                         f"channel, low < high. Got {value!r} instead.")
    return tuple((float(lo), float(hi)) for lo, hi in arr)


def _channel_axis(value: Any, label: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value == 0:
        return 0
    raise InputError(f"Expected {label} to be 0 (channel-first blocks) or None. Got {value!r} instead.")


def _optional_bool(value: Any, label: str) -> bool | None:
    return None if value is None else _boolean(value, label)


#: one validator per option: (value, label) -> the value as the adapter uses it
_VALIDATORS: dict[str, Callable[[Any, str], Any]] = {
    "diameter": lambda v, label: _diameter(v, label, auto_ok=False),
    "do_3D": _boolean,
    "anisotropy": _positive,
    "stitch_threshold": lambda v, label: _in_range(v, label, 0.0, 1.0),
    "flow_threshold": lambda v, label: _in_range(v, label, 0.0, math.inf),
    "cellprob_threshold": lambda v, label: _in_range(v, label, -6.0, 6.0),
    "min_size": lambda v, label: _integer(v, label, 0),
    "max_size_fraction": lambda v, label: _in_range(v, label, 0.0, 1.0),
    "niter": lambda v, label: _integer(v, label, 1, none_ok=True),
    "batch_size": lambda v, label: _integer(v, label, 1),
    "channels": _channels,
    "channel_axis": _channel_axis,
    "lowhigh": _lowhigh,
    "percentile": _percentile,
    "invert": _boolean,
    "use_bfloat16": _optional_bool,
}


def check_settings(flag: Flag = _keyword, *, auto_diameter: bool = False, **options: Any) -> dict[str, Any]:
    """Validate and normalise segmentation options; nothing is imported or loaded.

    Returns the given options converted to what the adapter uses (numbers from
    numeric text, pairs from ``"1,99"``...).  Errors name each option as
    ``flag(name)`` spells it.  ``auto_diameter`` also accepts ``diameter``
    ``"auto"`` or 0, returned as :data:`AUTO` (the caller then estimates it
    once, with :meth:`CellposeSegmenter.estimate_diameter`).
    """
    unknown = sorted(set(options) - set(_VALIDATORS))
    if unknown:
        raise InputError(f"Expected options among {', '.join(map(flag, sorted(_VALIDATORS)))}. "
                         f"Got {', '.join(map(flag, unknown))} instead.")
    out = {}
    for name, value in options.items():
        if name == "diameter":
            out[name] = _diameter(value, flag(name), auto_ok=auto_diameter)
        else:
            out[name] = _VALIDATORS[name](value, flag(name))
    if out.get("do_3D") and (out.get("stitch_threshold") or 0) > 0:
        raise InputError(f"Expected either {flag('do_3D')} true or {flag('stitch_threshold')} > 0 for 3-D blocks. "
                         f"Got both ({flag('stitch_threshold')} {out['stitch_threshold']:g}) instead.")
    return out


# ---------------------------------------------------------------- model files, read without torch


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """What a Cellpose weights file says about itself."""

    path: pathlib.Path
    #: 3: CPnet (cellpose 3), 4: CPSAM (cellpose 4)
    major: int
    #: the ``diam_mean`` and ``diam_labels`` entries (cellpose 3 rescales by their ratio)
    diam_mean: float | None
    diam_labels: float | None


#: torch's legacy storage class names and their element types
_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "HalfStorage": "<f2", "DoubleStorage": "<f8", "BFloat16Storage": "<u2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
    "BoolStorage": "?",
}


@dataclasses.dataclass
class _Storage:
    dtype: str
    key: str


@dataclasses.dataclass
class _Tensor:
    storage: _Storage
    offset: int
    size: tuple[int, ...]


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, *args: Any) -> _Tensor:
    return _Tensor(storage, int(offset), tuple(size))


class _StateUnpickler(pickle.Unpickler):
    """Reads the ``data.pkl`` of a torch zip archive into :class:`_Tensor` records:
    only a state dict of tensors is accepted, nothing is executed."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda data, *args: data
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a state dict of tensors")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and pid[1] in _STORAGE_DTYPES):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return _Storage(_STORAGE_DTYPES[pid[1]], str(pid[2]))


def _read_zip_state(path: pathlib.Path) -> tuple[set[str], dict[str, float]]:
    """Keys of a torch zip archive's state dict and its one-element float entries."""
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") <= 1]
        if len(pkl) != 1:
            raise pickle.UnpicklingError("no data.pkl in the archive")
        prefix = pkl[0][: -len("data.pkl")]
        state = _StateUnpickler(io.BytesIO(archive.read(pkl[0]))).load()
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"a {type(state).__name__}, not a state dict")
        scalars = {}
        for key, value in state.items():
            floating = isinstance(value, _Tensor) and value.storage.dtype[-2:] in ("f4", "f2", "f8")
            if floating and math.prod(value.size) == 1:
                dtype = np.dtype(value.storage.dtype)
                raw = archive.read(f"{prefix}data/{value.storage.key}")
                scalars[key] = float(np.frombuffer(raw, dtype, count=1, offset=value.offset * dtype.itemsize)[0])
    return {str(k) for k in state}, scalars


def _read_state_with_torch(path: pathlib.Path) -> tuple[set[str], dict[str, float]]:
    import torch

    state = None
    for mmap in (True, False):  # mmap avoids reading a 1.2 GB file; old formats need False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            break
        except Exception:  # noqa: BLE001 - the second attempt reports
            if not mmap:
                raise
    if not isinstance(state, dict):
        raise pickle.UnpicklingError(f"a {type(state).__name__}, not a state dict")
    scalars = {str(k): float(v.reshape(-1)[0]) for k, v in state.items()
               if hasattr(v, "numel") and v.numel() == 1 and v.is_floating_point()}
    return {str(k) for k in state}, scalars


def inspect_model_file(path: str | os.PathLike, label: str = "pretrained_model") -> ModelFile:
    """Check that ``path`` is a Cellpose weights file and read what it says about itself.

    Torch's zip format is read without torch (only the state dict's structure
    and its one-element entries); older formats need torch.  Errors name the
    option as ``label``.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise InputError(f"Expected {label} to be the path of a Cellpose model file. Got {path!r} instead.")
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise InputNotFoundError(f"Expected {label} to be a Cellpose model file. Got no such file: {path} instead.")
    if not path.is_file():
        raise InputError(f"Expected {label} to be a Cellpose model file. Got a directory: {path} instead.")
    try:
        keys, scalars = _read_zip_state(path)
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, KeyError, ValueError, AttributeError,
            TypeError, IndexError) as exc:
        try:
            keys, scalars = _read_state_with_torch(path)
        except ImportError:
            raise InputError(f"Expected {label} to be a Cellpose model file (torch weights). Got a file that is no "
                             f"torch zip archive, and no torch to read older formats, at {path} instead.") from exc
        except Exception as exc2:  # noqa: BLE001 - anything torch cannot read is "not a model"
            first = str(exc2).strip().splitlines()[0][:200] if str(exc2).strip() else ""
            raise InputError(f"Expected {label} to be a Cellpose model file (torch weights). Got a file torch "
                             f"cannot load ({type(exc2).__name__}: {first}) at {path} instead.") from None
    except OSError as exc:
        raise InputError(f"Expected {label} to be a readable Cellpose model file. Got {type(exc).__name__}: "
                         f"{exc.strerror or exc} at {path} instead.") from None
    bare = {k[7:] if k.startswith("module.") else k for k in keys}
    scalars = {k[7:] if k.startswith("module.") else k: v for k, v in scalars.items()}
    if "W2" in bare:
        major = 4
    elif "output.2.weight" in bare and any(k.startswith("downsample.") for k in bare):
        major = 3
    else:
        raise InputError(f"Expected {label} to be a Cellpose model file. Got torch data that holds no Cellpose "
                         f"network weights ({len(keys)} entries) at {path} instead.")
    return ModelFile(path=path.resolve(), major=major, diam_mean=scalars.get("diam_mean"),
                     diam_labels=scalars.get("diam_labels"))


def check_model(model: Any = None, pretrained_model: Any = None, flag: Flag = _keyword,
                major: int | None = None) -> tuple[str | None, ModelFile | None, int]:
    """Validate the model choice: exactly one of a built-in name and a model file.

    ``major`` is the installed cellpose major version (``None``: not installed
    here, e.g. where only the plan is made: the name or file decides).
    Returns ``(name, file, major)``.
    """
    if (model is None) == (pretrained_model is None):
        raise InputError(f"Expected exactly one of {flag('model')} (a built-in name) and "
                         f"{flag('pretrained_model')} (a file). Got {'both' if model is not None else 'neither'} "
                         "instead.")
    if pretrained_model is not None:
        file = inspect_model_file(pretrained_model, flag("pretrained_model"))
        if major is not None and file.major != major:
            raise InputError(f"Expected {flag('pretrained_model')} to be a cellpose {major} model file for the "
                             f"installed cellpose {cellpose_version()}. Got a cellpose {file.major} model at "
                             f"{file.path} instead.")
        return None, file, file.major
    if not isinstance(model, str) or not model.strip():
        raise InputError(f"Expected {flag('model')} to be a built-in Cellpose model name. Got {model!r} instead.")
    name = model.strip()
    of = [m for m in SUPPORTED_MAJORS if name in _BUILTIN_NAMES[m]]
    if major is None and of:
        return name, None, of[0]
    if major is not None and name in _BUILTIN_NAMES[major]:
        return name, None, major
    known = sorted(_BUILTIN_NAMES[major] if major is not None else set().union(*_BUILTIN_NAMES.values()))
    if of:
        raise InputError(f"Expected {flag('model')} to be a model of the installed cellpose {cellpose_version()} "
                         f"({', '.join(known)}). Got {name!r}, a cellpose {of[0]} model, instead.")
    hint = f" (for a model file, use {flag('pretrained_model')})" if ("/" in name or "." in name) else ""
    raise InputError(f"Expected {flag('model')} to be a built-in Cellpose model name: {', '.join(known)}. "
                     f"Got {name!r} instead{hint}.")


def _cellpose_model_dir() -> pathlib.Path:
    """Where cellpose keeps (and downloads) built-in weights, as cellpose 3 and 4 compute it."""
    env = os.environ.get("CELLPOSE_LOCAL_MODELS_PATH")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cellpose" / "models"


def _builtin_weights(name: str) -> pathlib.Path:
    """The file cellpose 3 loads for a built-in name (``models.model_path``)."""
    basename = f"{name}torch_0" if name in ("cyto", "cyto2", "nuclei") else name
    return _cellpose_model_dir() / basename


def model_diameter(major: int, name: str | None = None, file: ModelFile | None = None) -> tuple[float | None, str]:
    """The object diameter (pixels) cellpose segments at when it is given no diameter.

    Cellpose 3's ``CellposeModel.eval(diameter=None)`` rescales images by
    ``diam_mean / diam_labels``: objects are taken to be ``diam_labels`` pixels
    wide (the mean diameter of the training labels, stored in the model file;
    if the file has none, 30, or 17 for built-in ``nuclei``).  Cellpose 4 does not rescale: as if objects were
    30 px wide.  Returns ``(diameter, where it comes from)``; the diameter is
    None for a built-in cellpose 3 model whose weights are not downloaded yet.
    """
    if major >= 4:
        return CP4_REFERENCE_DIAMETER, "cellpose 4 without a diameter does not rescale (as for 30 px objects)"
    if file is None and name is not None:
        weights = _builtin_weights(name)
        if not weights.is_file():
            return None, (f"the diam_labels of built-in model {name!r}, whose weights are not in {weights.parent} "
                          "yet (cellpose downloads them on first use)")
        try:
            file = inspect_model_file(weights, "model")
        except InputError as exc:
            return None, f"the diam_labels of built-in model {name!r}, unreadable at plan time ({exc})"
    assert file is not None
    if file.diam_labels is None:  # cellpose keeps the value it built the network with
        fallback = 17.0 if name == "nuclei" else 30.0
        return fallback, f"{fallback:g} px: {file.path.name} holds no diam_labels (cellpose's default)"
    return file.diam_labels, f"diam_labels of {file.path.name}"


def size_model_file(name: str | None, file: ModelFile | None, major: int, flag: Flag = _keyword) -> str:
    """Where cellpose 3's size model for this model is (``flag('diameter')`` auto).

    Built-in ``cyto``, ``cyto2``, ``cyto3`` and ``nuclei`` have one (cellpose
    downloads it with the weights: the value returned is the name); a model
    file needs ``<file>_size.npy`` next to it (written by cellpose's
    ``train.train_size``).  Anything else is an error saying why.
    """
    if major >= 4:
        raise InputError(f"Expected {flag('diameter')} > 0 or omitted with cellpose 4. Got {flag('diameter')} auto "
                         "instead: cellpose 4 has no size estimation (omitted, it segments without rescaling).")
    if file is not None:
        size = pathlib.Path(f"{file.path}_size.npy")
        if not size.is_file():
            raise InputError(f"Expected a size model {size.name} next to {file.path} for {flag('diameter')} auto "
                             "(cellpose 3 estimates sizes only with a size model, from train.train_size). "
                             "Got no such file instead; give the diameter in pixels.")
        return str(size)
    if name not in _SIZE_MODEL_NAMES:
        raise InputError(f"Expected a model with a size model ({', '.join(sorted(_SIZE_MODEL_NAMES))}) for "
                         f"{flag('diameter')} auto. Got {name!r}, which cellpose 3 has no size model for, instead; "
                         "give the diameter in pixels.")
    return str(name)


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
        Typical object diameter in pixels (> 0), or None for cellpose's own
        meaning (see :func:`model_diameter`; never estimated per block).
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
        Per-block percentiles used when ``lowhigh`` is None (cellpose's
        default: 1, 99); invert intensities after normalisation (dark objects
        on a bright background).
    device, allow_cpu_fallback:
        See :func:`resolve_device`.
    use_bfloat16:
        Cellpose 4 only: bfloat16 weights; default on CUDA only.

    Every option is checked by :func:`check_settings` and
    :func:`check_model` before cellpose is imported.
    """

    def __init__(
        self,
        *,
        model: str | None = None,
        pretrained_model: str | os.PathLike | None = None,
        diameter: float | None = CELLPOSE_DEFAULTS["diameter"],
        do_3D: bool = False,
        anisotropy: float | None = None,
        stitch_threshold: float = CELLPOSE_DEFAULTS["stitch_threshold"],
        flow_threshold: float = CELLPOSE_DEFAULTS["flow_threshold"],
        cellprob_threshold: float = CELLPOSE_DEFAULTS["cellprob_threshold"],
        min_size: int = CELLPOSE_DEFAULTS["min_size"],
        max_size_fraction: float = CELLPOSE_DEFAULTS["max_size_fraction"],
        niter: int | None = CELLPOSE_DEFAULTS["niter"],
        batch_size: int = CELLPOSE_DEFAULTS["batch_size"],
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
        s = check_settings(
            diameter=diameter, do_3D=do_3D, anisotropy=anisotropy, stitch_threshold=stitch_threshold,
            flow_threshold=flow_threshold, cellprob_threshold=cellprob_threshold, min_size=min_size,
            max_size_fraction=max_size_fraction, niter=niter, batch_size=batch_size, channels=channels,
            channel_axis=channel_axis, lowhigh=lowhigh, percentile=percentile, invert=invert,
            use_bfloat16=use_bfloat16)
        self.diameter: float | None = s["diameter"]
        self.do_3D: bool = s["do_3D"]
        self.anisotropy: float | None = s["anisotropy"]
        self.stitch_threshold: float = s["stitch_threshold"]
        self.flow_threshold: float = s["flow_threshold"]
        self.cellprob_threshold: float = s["cellprob_threshold"]
        self.min_size: int = s["min_size"]
        self.max_size_fraction: float = s["max_size_fraction"]
        self.niter: int | None = s["niter"]
        self.batch_size: int = s["batch_size"]
        self.channels: tuple[int, int] | None = s["channels"]
        self.channel_axis: int | None = s["channel_axis"]
        self.lowhigh: tuple[tuple[float, float], ...] | None = s["lowhigh"]
        self.percentile: tuple[float, float] | None = s["percentile"]
        self.invert: bool = s["invert"]

        self.model_name, self.model_file, _ = check_model(model, pretrained_model, major=self.major)
        if self.model_name is not None:
            self._note_download(self.model_name)
        self.model_path: pathlib.Path | None = None if self.model_file is None else self.model_file.path

        self.device = resolve_device(device, allow_cpu_fallback)
        self.use_bfloat16 = self.device.startswith("cuda") if s["use_bfloat16"] is None else s["use_bfloat16"]
        self._model = self._build()

    # ------------------------------------------------------------ construction

    @staticmethod
    def _note_download(name: str) -> None:
        models = _import_cellpose_models()
        model_dir = pathlib.Path(getattr(models, "MODEL_DIR", _cellpose_model_dir()))
        if not any(model_dir.glob(f"{name}*")):
            logger.info("cellpose will download the weights of %r into %s", name, model_dir)

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
                    f"{getattr(models, 'MODEL_DIR', _cellpose_model_dir())} or downloadable. Got "
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
    def model_diameter(self) -> float:
        """The object diameter (pixels) the model segments at when ``diameter`` is None."""
        if self.major == 3:
            return float(self._model.diam_labels)
        return CP4_REFERENCE_DIAMETER

    def _normalize_options(self, lowhigh: np.ndarray | None) -> dict[str, Any]:
        options = {
            "lowhigh": None if lowhigh is None else lowhigh.tolist(),
            "percentile": list(self.percentile or CELLPOSE_DEFAULTS["percentile"]),
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

    def _cellpose_input(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """The channels cellpose gets and the keyword arguments that go with them."""
        selected, bounds = self._select_channels(x)
        if np.may_share_memory(selected, x):
            # cellpose 4 normalises a float32 input in place: it gets its own
            # copy, never the caller's block (often a view of a cached chunk).
            # As float32, so that cellpose need not copy it once more.
            selected = np.array(selected, dtype=np.float32, order="C", copy=True)
        x = selected
        if bounds is not None and self.major == 3 and x.shape[-1] == 1:
            # cellpose 3 appends a zero channel; (0, 1) keeps it zero
            bounds = np.vstack([bounds, [0.0, 1.0]])
        kwargs: dict[str, Any] = {"channel_axis": x.ndim - 1, "normalize": self._normalize_options(bounds)}
        if self.major == 3:
            kwargs["channels"] = [1, 2] if x.shape[-1] > 1 else [1, 0]
        return x, kwargs

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
        x, kwargs = self._cellpose_input(x)
        kwargs.update({
            "batch_size": self.batch_size,
            "z_axis": 0 if three_d else None,
            "diameter": self.diameter,
            "flow_threshold": self.flow_threshold,
            "cellprob_threshold": self.cellprob_threshold,
            "do_3D": self.do_3D and three_d,
            "anisotropy": self.anisotropy,
            "stitch_threshold": self.stitch_threshold if three_d else 0.0,
            "min_size": self.min_size,
            "max_size_fraction": self.max_size_fraction,
            "niter": self.niter,
        })
        try:
            masks = self._model.eval(x, **kwargs)[0]
        except Exception as exc:  # noqa: BLE001 - any failure inside cellpose is a segmenter failure
            raise self._failure(exc, x.shape, spatial) from exc
        return self._as_labels(np.asarray(masks), spatial)

    def _failure(self, exc: Exception, shape: tuple[int, ...], spatial: tuple[int, ...]) -> SegmenterError:
        hint = " Lower batch_size or the block size." if "out of memory" in str(exc).lower() else ""
        return SegmenterError(
            f"Expected cellpose {self.version} to segment a block of shape {shape} (spatial {spatial}) on "
            f"{self.device}. Got {type(exc).__name__}: {str(exc).strip()[:300]} instead.{hint}"
        )

    def estimate_diameter(self, image: np.ndarray) -> float:
        """Cellpose 3's size estimation on one 2-D image: the object diameter in pixels.

        The size model (see :func:`size_model_file`) predicts a diameter from
        the network's style vector, then the image is segmented at that scale
        and the median diameter of the masks is returned, as
        ``cellpose.models.Cellpose.eval`` does with ``diameter=0``.  Call it
        once per image, not per block.
        """
        label = "diameter"
        size = size_model_file(self.model_name, self.model_file, self.major, _keyword)
        x, spatial = self._channels_last(image)
        if len(spatial) != 2:
            raise InputError(f"Expected a 2-D image for {label} auto (cellpose 3 estimates sizes of 2-D images "
                             f"only). Got spatial shape {spatial} instead; give the diameter in pixels.")
        models = _import_cellpose_models()
        if self.model_file is None:
            size = models.size_model_path(size)  # downloaded with the weights, like them
        x, kwargs = self._cellpose_input(x)
        try:
            sizer = models.SizeModel(cp_model=self._model, device=self._model.device, pretrained_size=size)
            diameter, _ = sizer.eval(x, batch_size=self.batch_size, invert=False, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure inside cellpose is a segmenter failure
            raise self._failure(exc, x.shape, spatial) from exc
        return float(diameter)

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
            "percentile": list(self.percentile or CELLPOSE_DEFAULTS["percentile"]),
        }

    def close(self) -> None:
        """Drop the model (and cached GPU memory)."""
        self._model = None
        if self.device.startswith("cuda"):
            _import_torch().cuda.empty_cache()

    def __repr__(self) -> str:
        source = self.model_name or self.model_path
        return f"CellposeSegmenter(cellpose {self.version}, {source}, device={self.device}, diameter={self.diameter})"
