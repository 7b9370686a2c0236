"""Vendor formats (Zeiss CZI, Nikon ND2, Leica LIF, ...) through bioio.

bioio and its reader plugins are an optional extra (``pip install
"pystitch[formats]"``).  A file is read lazily through the reader's dask
array, chunked by plane (one chunk per YX plane where the reader lets us
choose), and the :class:`DaskArray` adapter gives it the zarr-like interface
an :class:`~pystitch.storage.images.ImageSource` reads from: the image's
chunk cache then decodes each plane chunk once per task.  Scenes (series,
positions) are chosen by index or name.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
from typing import Any

import numpy as np

from ..errors import InputError
from .planes import select_scene

log = logging.getLogger(__name__)

#: extension -> (bioio plugin module, its PyPI package)
VENDOR_READERS: dict[str, tuple[str, str]] = {
    ".czi": ("bioio_czi", "bioio-czi"),
    ".nd2": ("bioio_nd2", "bioio-nd2"),
    ".lif": ("bioio_lif", "bioio-lif"),
    ".dv": ("bioio_dv", "bioio-dv"),
    ".r3d": ("bioio_dv", "bioio-dv"),
    ".sldy": ("bioio_sldy", "bioio-sldy"),
    ".vsi": ("bioio_vsi", "bioio-vsi"),
}
#: bioio's dimension letters -> pystitch's axes (S: RGB samples, read as channels)
_DIMS = {"T": "t", "C": "c", "Z": "z", "Y": "y", "X": "x", "S": "c"}


def vendor_suffix(path: str) -> str | None:
    lower = path.lower()
    return next((s for s in VENDOR_READERS if lower.endswith(s)), None)


def reader_class(path: str) -> Any:
    """The bioio Reader class for ``path``, or an error naming the package to install."""
    suffix = vendor_suffix(path)
    assert suffix is not None
    module, package = VENDOR_READERS[suffix]
    missing = [name for name, mod in (("bioio", "bioio"), (package, module)) if importlib.util.find_spec(mod) is None]
    if missing:
        raise InputError(
            f"Reading {suffix} files ({path}) needs the package{'s' if len(missing) > 1 else ''} "
            f"{' and '.join(missing)}: pip install {' '.join(missing)} (or pip install \"pystitch[formats]\")."
        )
    return importlib.import_module(module).Reader


class DaskArray:
    """A dask array with the zarr-like interface of an input image: shape,
    dtype, regular ``chunks``, and ``[...]`` / ``oindex[...]`` returning numpy."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape = tuple(int(s) for s in array.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(array.dtype)
        self.chunks = tuple(int(c[0]) if c else 1 for c in array.chunks)

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        is_list = [isinstance(ix, (list, tuple, np.ndarray)) for ix in index]
        data = self.array[tuple(slice(None) if li else ix for ix, li in zip(index, is_list))]
        # lists one axis at a time: dask would index lists on several axes jointly, not orthogonally
        for a, ix in enumerate(index):
            if is_list[a]:
                pos = sum(1 for b in range(a) if isinstance(index[b], slice) or is_list[b])
                data = data[(slice(None),) * pos + (list(ix),)]
        return np.asarray(data.compute(scheduler="synchronous"))

    @property
    def oindex(self) -> "DaskArray":
        return self


def open_vendor(path: str, scene: Any) -> tuple[Any, DaskArray, str, dict]:
    """Open a vendor file with bioio.  Returns ``(bioimage, array, axes, info)``."""
    reader = reader_class(path)
    import bioio

    kwargs: dict[str, Any] = {}
    params = inspect.signature(reader.__init__).parameters
    if "chunk_dims" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs["chunk_dims"] = ["Y", "X"]  # one chunk per plane: blocks read only the planes they need
    try:
        image = bioio.BioImage(path, reader=reader, **kwargs)
        scenes = list(image.scenes)
    except Exception as exc:
        raise InputError(f"Could not read {path} with {reader.__module__.split('.')[0]} "
                         f"({type(exc).__name__}: {exc}).") from exc
    k = select_scene(scenes, scene, path)
    if k:
        image.set_scene(k)
    dims = image.dims.order
    data = image.dask_data
    axes = "".join(_DIMS.get(d, "?") for d in dims)
    if axes.count("c") > 1:  # channels and RGB samples: only one of them may vary
        sizes = dict(zip(dims, data.shape))
        if sizes.get("C", 1) > 1 and sizes.get("S", 1) > 1:
            raise InputError(f"{path} has {sizes['C']} channels of RGB samples. Expected channels or samples, "
                             "not both.")
        drop = "S" if sizes.get("S", 1) == 1 else "C"
        data = data[tuple(0 if d == drop else slice(None) for d in dims)]
        dims = dims.replace(drop, "")
        axes = "".join(_DIMS.get(d, "?") for d in dims)
    if "z" in axes and data.shape[axes.index("z")] == 1:  # a 2-D image
        data = data[tuple(0 if a == "z" else slice(None) for a in axes)]
        axes = axes.replace("z", "")
    info: dict[str, Any] = {"voxel_size": None, "unit": None, "channel_names": None}
    try:
        pps = image.physical_pixel_sizes
        sizes = {"z": pps.Z, "y": pps.Y, "x": pps.X}
        spatial = [a for a in axes if a in "zyx"]
        if all(sizes[a] for a in spatial):
            info["voxel_size"] = tuple(float(sizes[a]) for a in spatial)
            info["unit"] = "micrometer"  # bioio reports physical sizes in microns
        names = [str(n) for n in image.channel_names or []]
        if "c" in axes and len(names) == data.shape[axes.index("c")]:
            info["channel_names"] = names
    except Exception as exc:  # metadata is optional: never fail a run on it
        log.warning("could not read the metadata of %s: %s", path, exc)
    return image, DaskArray(data), axes, info
