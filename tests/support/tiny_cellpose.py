"""A small, real Cellpose model made offline for the test suite.

Cellpose ships no weights in its wheels and downloads its built-in models at
run time, which the tests must never do.  This module trains a real model from
random initialisation on synthetic images of blurred, noisy disks (some of them
touching) and caches the result so that it is trained once per machine:

* cellpose 3.x: the standard CPnet (the network size is fixed by
  ``CellposeModel``, so the file loads with the stock loader), and on demand
  its size model (``<model>_size.npy``, cellpose's ``train.train_size``).
* cellpose 4.x: CPSAM with its ViT-L image encoder replaced by a tiny ViT.
  CPSAM builds its encoder from ``segment_anything.sam_model_registry["vit_l"]``
  both when training and when loading a file, so the same substitution must be
  active while a model is constructed from such a file: wrap the construction
  in :func:`model_loading_context`.

Training is deterministic, so that tests comparing Cellpose results rest on
the same model on every machine: it runs in a fresh process with fixed seeds
(torch, numpy, random; cellpose seeds numpy per epoch itself),
``torch.use_deterministic_algorithms(True)``, one thread, oneDNN off and MKL
and torch's kernels held to one code path (:data:`TRAINING_ENV`), and the file
is written so that the same tensors give the same bytes.  Three builds from
empty caches on an Intel Xeon (AVX-512) gave the same SHA-256
(:data:`REFERENCE_SHA256`); an AMD EPYC (AVX-512) builds another model, the
same bytes on every try, whether OpenBLAS, numba or OpenCV's IPP are pinned
or not (:data:`OTHER_BUILDS`); tests/test_cellpose_adapter.py checks that a
build is one of these, on which the tests' bounds hold.  Without oneDNN,
training costs about 3.5x the CPU time (cellpose 3: ~55 s -> ~210 s; cellpose
4: ~320 s; size model: see :data:`SIZE_EPOCHS`).

The cache directory is ``$PYSTITCH_TEST_CACHE`` or
``~/.cache/pystitch/test-models``; a model file is keyed by a hash of the
training parameters, the cellpose major version and :data:`FORMAT_REVISION`,
and written atomically (temporary file, then rename), so an interrupted
training never leaves a partial model behind.  A JSON file next to it records
the parameters, the training environment, the time taken and the SHA-256.

Usage::

    path = tiny_model_path()                 # trains on first use
    python tests/support/tiny_cellpose.py [--cache-dir D] [--seed N] [--size-model] [--force]

Quality of the defaults, AP = tp / (tp + fp + fn) on four new 256x256
synthetic images (measured before training was made deterministic; the
tests' bounds are measured on the deterministic build):

* cellpose 3.1: 16 images of 192x192, 40 epochs, 48x48 crops, batch 8
  (80 steps): AP@0.5 = 1.0, AP@0.9 = 0.97; 13 MB file (fp16).
  25 epochs reached AP@0.5 = 1.0 but AP@0.9 = 0.01 (boundaries a pixel off).
* cellpose 4.2: the same images, six of them 48 px tall strips (without them
  CPSAM never sees zero padding in training and ``do_3D`` falls apart into
  fragments on thin Z-planes), 2-layer 64-wide ViT, 256x256 crops, learning
  rate 3e-3: see :data:`PER_MAJOR_DEFAULTS` for the epochs; 2 MB file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

logger = logging.getLogger("pystitch.tests.tiny_cellpose")

#: bump when the synthetic data or the training code changes: old files are
#: then no longer found under the new key
FORMAT_REVISION = 2

#: SHA-256 of the default model file per cellpose major version, built with the
#: pinned versions of requirements/constraints*.txt (cellpose 3.1.1.3 / 4.2.1.1,
#: torch 2.14.1, numpy 2.0.2): the build the tests' bounds were measured on.
#: A change of the training code, the synthetic data or a pin changes it: then
#: train again, measure the bounds again and update it.
REFERENCE_SHA256 = {
    3: "70bbafb4fe7d062c4ad1297b42e18841ed2d0226f2da0460bd0035c7e7b1bad8",
    4: "33b874172fc6a3dde3c38fc277a90c8674c15f4919ecca6ab81b2b442b92a81e",
}

#: builds of the same recipe on other CPUs, each the same bytes on every try
#: there, on which the whole test suite passes (its bounds allow for them)
OTHER_BUILDS = {
    3: {"6fd8e5a974e4bb965b5186fbc10cffd40a61bebac3b9df5150e3ea68f371c601": "AMD EPYC, AVX-512, 2026-12-03"},
    4: {"c794201cd72cb0e7027fb4c4f7d7570c4b66d26da4613c6563c9ed79e44b89ff": "AMD EPYC, AVX-512, 2026-12-03"},
}

CACHE_ENV = "PYSTITCH_TEST_CACHE"
DEFAULT_CACHE = pathlib.Path.home() / ".cache" / "pystitch" / "test-models"


@dataclasses.dataclass(frozen=True)
class TrainingParams:
    """Everything that determines a tiny model file (part of its cache key).

    Fields left at ``None`` take the value measured to suit the installed
    cellpose major version (see :data:`PER_MAJOR_DEFAULTS`).
    """

    #: number of synthetic training images and their (square) side in pixels
    n_images: int = 16
    image_size: int = 192
    #: object diameters are drawn uniformly from this range (pixels)
    diameter_min: float = 14.0
    diameter_max: float = 22.0
    #: fraction of objects placed touching an earlier object
    touching: float = 0.3
    #: how many of the training images are strips a quarter as tall: their
    #: crops are zero-padded, as thin blocks and Z-planes are at inference
    strips: int | None = None
    #: passes over the training set, images per step, learning rate
    n_epochs: int | None = None
    batch_size: int = 8
    learning_rate: float | None = None
    #: side of the square training crops (CPSAM, cellpose 4, requires 256)
    bsize: int | None = None
    #: tiny CPSAM encoder (cellpose 4 only)
    vit_dim: int = 64
    vit_depth: int = 2
    vit_heads: int = 2
    #: store weights as float16 (half the file, identical masks in practice)
    half_precision: bool = True
    seed: int = 0

    @property
    def diameter(self) -> float:
        """Mean object diameter of the training images."""
        return 0.5 * (self.diameter_min + self.diameter_max)

    def resolved(self, major: int) -> TrainingParams:
        """These parameters with the per-version defaults filled in."""
        defaults = PER_MAJOR_DEFAULTS[4 if major >= 4 else 3]
        return dataclasses.replace(
            self, **{k: v for k, v in defaults.items() if getattr(self, k) is None}
        )


#: measured on 2 CPU cores (see the module docstring): the cheapest settings
#: that reach AP@0.5 >= 0.9 on new synthetic images
PER_MAJOR_DEFAULTS: dict[int, dict[str, Any]] = {
    3: {"n_epochs": 40, "learning_rate": 0.005, "bsize": 48, "strips": 0},
    4: {"n_epochs": 100, "learning_rate": 0.003, "bsize": 256, "strips": 6},
}


# ---------------------------------------------------------------- synthetic data


def synthetic_blobs(
    shape: Sequence[int],
    *,
    diameter_range: tuple[float, float] = (14.0, 22.0),
    fill: float = 0.3,
    touching: float = 0.3,
    blur: float = 1.0,
    noise: float = 0.04,
    background: float = 0.1,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Blurred, noisy disks (2-D) or balls (3-D) and their true labels.

    Objects get a random diameter in ``diameter_range`` and a random brightness
    in [0.6, 1]; a fraction ``touching`` of them is placed in contact with an
    earlier object, the others apart from all.  Where two touching objects
    overlap by a pixel, each pixel belongs to the relatively closer centre.
    Placement stops when about ``fill`` of the image is covered or no more
    objects fit.

    Returns ``(image float32, labels int32)``, labels 1..n in placement order.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"Expected a 2-D or 3-D shape. Got {shape} instead.")
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    lo, hi = diameter_range
    mean_r = 0.25 * (lo + hi)
    ball = np.pi * mean_r**2 if ndim == 2 else 4.0 / 3.0 * np.pi * mean_r**3
    target = max(1, int(round(fill * float(np.prod(shape)) / ball)))

    centres: list[np.ndarray] = []
    radii: list[float] = []
    attempts = 0
    while len(centres) < target and attempts < 200 * target:
        attempts += 1
        r = 0.5 * rng.uniform(lo, hi)
        if centres and rng.random() < touching:
            j = int(rng.integers(len(centres)))
            direction = rng.normal(size=ndim)
            direction /= np.linalg.norm(direction) + 1e-12
            c = centres[j] + direction * (radii[j] + r - 0.5)
            contact = j
        else:
            c = np.array([rng.uniform(r, s - r) if s > 2 * r else s / 2 for s in shape])
            contact = -1
        if np.any(c - r < 0) or np.any(c + r > np.array(shape) - 1):
            continue
        ok = True
        for k, (ck, rk) in enumerate(zip(centres, radii)):
            d = float(np.linalg.norm(c - ck))
            gap = -1.0 if k == contact else 2.0  # touching partner may overlap by <=1 px
            if d < r + rk + gap:
                ok = False
                break
        if ok:
            centres.append(c)
            radii.append(r)

    labels = np.zeros(shape, np.int32)
    best = np.full(shape, np.inf, np.float32)  # relative distance of the owner
    signal = np.zeros(shape, np.float32)
    for i, (c, r) in enumerate(zip(centres, radii), start=1):
        lo_i = [max(0, int(np.floor(ci - r - 1))) for ci in c]
        hi_i = [min(s, int(np.ceil(ci + r + 2))) for ci, s in zip(c, shape)]
        box = tuple(slice(a, b) for a, b in zip(lo_i, hi_i))
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo_i, hi_i)], indexing="ij")
        rel = np.sqrt(sum((g - ci) ** 2 for g, ci in zip(grids, c))).astype(np.float32) / r
        inside = (rel <= 1.0) & (rel < best[box])
        labels[box][inside] = i
        best[box][inside] = rel[inside]
        signal[box][inside] = rng.uniform(0.6, 1.0)
    image = ndimage.gaussian_filter(signal, blur) if blur > 0 else signal
    image = image + background + noise * rng.standard_normal(shape).astype(np.float32)
    return image.astype(np.float32), labels


def training_set(params: TrainingParams) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The deterministic synthetic training images and labels for ``params``."""
    images, labels = [], []
    n_strips = params.strips or 0
    for i in range(params.n_images):
        height = params.image_size // 4 if i >= params.n_images - n_strips else params.image_size
        img, lbl = synthetic_blobs(
            (height, params.image_size),
            diameter_range=(params.diameter_min, params.diameter_max),
            touching=params.touching,
            seed=params.seed * 100_003 + i,
        )
        images.append(img)
        labels.append(lbl)
    return images, labels


# ---------------------------------------------------------------- quality


def match_counts(true: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> tuple[int, int, int]:
    """One-to-one matching of label images at an IoU threshold.

    Returns ``(true positives, false positives, false negatives)``.  A
    threshold of at least 0.5 makes any match unique, so greedy pairing by IoU
    is exact.
    """
    if true.shape != pred.shape:
        raise ValueError(f"Expected label images of one shape. Got {true.shape} and {pred.shape} instead.")
    t = true.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    t_ids, t_inv = np.unique(t, return_inverse=True)
    p_ids, p_inv = np.unique(p, return_inverse=True)
    n_true = int(np.count_nonzero(t_ids))
    n_pred = int(np.count_nonzero(p_ids))
    if n_true == 0 or n_pred == 0:
        return 0, n_pred, n_true
    pair, counts = np.unique(t_inv * len(p_ids) + p_inv, return_counts=True)
    ti, pi = np.divmod(pair, len(p_ids))
    t_size = np.bincount(t_inv, minlength=len(t_ids))
    p_size = np.bincount(p_inv, minlength=len(p_ids))
    keep = (t_ids[ti] != 0) & (p_ids[pi] != 0)
    ti, pi, inter = ti[keep], pi[keep], counts[keep]
    iou = inter / (t_size[ti] + p_size[pi] - inter)
    order = np.argsort(-iou, kind="stable")
    used_t: set[int] = set()
    used_p: set[int] = set()
    tp = 0
    for k in order:
        if iou[k] < iou_threshold:
            break
        if ti[k] in used_t or pi[k] in used_p:
            continue
        used_t.add(int(ti[k]))
        used_p.add(int(pi[k]))
        tp += 1
    return tp, n_pred - tp, n_true - tp


def average_precision(true: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> float:
    """Cellpose-style average precision ``tp / (tp + fp + fn)`` at one IoU."""
    tp, fp, fn = match_counts(true, pred, iou_threshold)
    total = tp + fp + fn
    return 1.0 if total == 0 else tp / total


# ---------------------------------------------------------------- versions


def cellpose_major() -> int:
    """Major version of the installed cellpose (without importing it)."""
    from importlib.metadata import version

    return int(version("cellpose").split(".")[0])


def cache_key(params: TrainingParams, major: int) -> str:
    """Stable hash of what determines the model file."""
    fields = dataclasses.asdict(params.resolved(major))
    if major < 4:  # the tiny encoder does not exist for cellpose 3
        for name in ("vit_dim", "vit_depth", "vit_heads"):
            fields.pop(name)
    blob = json.dumps(
        {"params": fields, "cellpose_major": major, "format": FORMAT_REVISION}, sort_keys=True
    ).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------- tiny CPSAM encoder


def _tiny_sam_builder(dim: int, depth: int, heads: int):
    """A stand-in for ``sam_model_registry["vit_l"]`` that builds a tiny ViT.

    CPSAM only uses ``.image_encoder`` of what the registry returns: it swaps
    the patch embedding for an 8x8 one, subsamples the position embedding to
    32x32 tokens, sets global attention and reads ``neck[-2]`` for its width.
    """
    from functools import partial
    from types import SimpleNamespace

    import torch
    from segment_anything.modeling.image_encoder import ImageEncoderViT

    def build(checkpoint: Any = None) -> SimpleNamespace:
        encoder = ImageEncoderViT(
            img_size=1024,
            patch_size=16,
            in_chans=3,
            embed_dim=dim,
            depth=depth,
            num_heads=heads,
            mlp_ratio=4.0,
            out_chans=dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_abs_pos=True,
            use_rel_pos=False,
            window_size=0,
            global_attn_indexes=(),
        )
        return SimpleNamespace(image_encoder=encoder)

    return build


@contextlib.contextmanager
def model_loading_context(params: TrainingParams | None = None) -> Iterator[None]:
    """Make a tiny model file loadable by the stock cellpose constructor.

    A no-op for cellpose 3.  For cellpose 4 the SAM registry entry that CPSAM
    builds its encoder from is replaced by the tiny encoder for the duration
    of the block, then restored.
    """
    if cellpose_major() < 4:
        yield
        return
    params = params or TrainingParams()
    from segment_anything import sam_model_registry

    saved = sam_model_registry["vit_l"]
    sam_model_registry["vit_l"] = _tiny_sam_builder(params.vit_dim, params.vit_depth, params.vit_heads)
    try:
        yield
    finally:
        sam_model_registry["vit_l"] = saved


# ---------------------------------------------------------------- training

#: the environment of the training process.  One thread, and every library
#: that picks its CPU code at run time held to one choice, so that the model is
#: the same bytes on every x86-64 machine with AVX2.  Measured on an AVX-512
#: machine by moving each library to other code paths in turn: oneDNN's, MKL's
#: and (below AVX2) OpenCV's choices changed the model; torch's own kernels at
#: AVX2 instead of AVX-512, OpenCV's and NumPy's at AVX2 instead of AVX-512
#: did not.  oneDNN, whose kernels also depend on the cache sizes, is switched
#: off in the process itself (see _pin).
TRAINING_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_CBWR": "COMPATIBLE,STRICT",  # MKL's one code path for every x86 CPU, any alignment
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own kernels: the AVX2 ones, even on AVX-512 machines
    "OPENCV_CPU_DISABLE": "AVX512-SKX",  # OpenCV (cellpose's augmentation): at most AVX2
    "NPY_DISABLE_CPU_FEATURES": "AVX512F,AVX512CD,AVX512_KNL,AVX512_KNM,AVX512_SKX,AVX512_CLX,AVX512_CNL,AVX512_ICL",
    "CUDA_VISIBLE_DEVICES": "",  # always on the CPU
    "PYTHONHASHSEED": "0",
}


def _pin(seed: int) -> None:
    """Seeds and deterministic algorithms for the training process (see :data:`TRAINING_ENV`)."""
    import random

    import torch

    torch.backends.mkldnn.enabled = False
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _normalize_options() -> dict[str, Any]:
    # a full dict: a bare bool makes cellpose mutate its module-level defaults
    return {"normalize": True, "norm3D": True, "invert": False, "lowhigh": None, "percentile": None}


def _train_state_dict(params: TrainingParams, workdir: pathlib.Path) -> dict:
    """Train from random initialisation; return the trained state dict."""
    import torch
    from cellpose import models, train

    major = cellpose_major()
    params = params.resolved(major)
    _pin(params.seed)
    images, labels = training_set(params)
    common = dict(
        train_data=images,
        train_labels=labels,
        normalize=_normalize_options(),
        n_epochs=params.n_epochs,
        batch_size=params.batch_size,
        learning_rate=params.learning_rate,
        min_train_masks=1,
        save_path=str(workdir),
        model_name="tiny",
        save_every=10**9,
    )
    if major < 4:
        model = models.CellposeModel(
            gpu=False, pretrained_model=False, model_type=None, nchan=2, diam_mean=params.diameter, mkldnn=False
        )
        path = train.train_seg(model.net, channels=[0, 0], bsize=params.bsize, rescale=True, **common)[0]
    else:
        from cellpose.vit import CPSAM

        with model_loading_context(params):
            net = CPSAM(dtype=torch.float32)
        # cellpose 4 trains at the scale of the images; 30 px is what
        # CellposeModel.eval rescales objects to when given a diameter
        net.diam_mean.data[:] = 30.0
        if params.bsize != 256:
            raise ValueError(f"Expected bsize 256 for CPSAM (cellpose 4). Got {params.bsize} instead.")
        path = train.train_seg(net, bsize=params.bsize, rescale=True, **common)[0]
    return torch.load(path, map_location="cpu", weights_only=True)


def _serialise(state: dict, half: bool) -> bytes:
    """The model file's bytes: the same bytes for the same tensors (torch names
    the archive after the file it writes to, so it is written to memory)."""
    import io

    import torch

    if half:
        state = {
            k: (v.half() if v.is_floating_point() and v.numel() > 1 else v) for k, v in state.items()
        }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


#: size model (cellpose 3 only): crop side and passes over the training images
SIZE_BSIZE = 224
SIZE_EPOCHS = 5


def _train_size_model(params: TrainingParams, model: pathlib.Path, workdir: pathlib.Path) -> bytes:
    """Cellpose 3's size model for the tiny model: the bytes of ``<model>_size.npy``."""
    import shutil

    from cellpose import models, train

    params = params.resolved(3)
    _pin(params.seed)
    copy = workdir / "tiny"
    shutil.copyfile(model, copy)
    cp = models.CellposeModel(gpu=False, pretrained_model=str(copy), mkldnn=False)
    images, labels = training_set(params)
    train.train_size(cp.net, str(copy), train_data=images, train_labels=labels, channels=[0, 0],
                     normalize=_normalize_options(), min_train_masks=1, bsize=SIZE_BSIZE, n_epochs=SIZE_EPOCHS)
    return pathlib.Path(f"{copy}_size.npy").read_bytes()


def _train_child(what: str, params: TrainingParams, out: pathlib.Path, model: pathlib.Path | None) -> None:
    """In the training process: write the model (or size model) bytes to ``out``."""
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".work-") as work:
        if what == "model":
            data = _serialise(_train_state_dict(params, pathlib.Path(work)), params.half_precision)
        else:
            assert model is not None
            data = _train_size_model(params, model, pathlib.Path(work))
    out.write_bytes(data)


def _train_in_subprocess(what: str, params: TrainingParams, out: pathlib.Path,
                         model: pathlib.Path | None = None) -> None:
    """Train in a fresh process with :data:`TRAINING_ENV` (libraries read it when they start)."""
    import subprocess

    command = [sys.executable, str(pathlib.Path(__file__).resolve()), "--train-child", what,
               "--params", json.dumps(dataclasses.asdict(params)), "--out", str(out)]
    if model is not None:
        command += ["--model", str(model)]
    env = {**os.environ, **TRAINING_ENV}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0 or not out.is_file():
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-20:])
        raise RuntimeError(f"Expected the tiny cellpose {what} to be trained. Got exit code {result.returncode} "
                           f"instead:\n{tail}")


def _write_atomically(data: bytes, target: pathlib.Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".partial", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache may be shared
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in ("cellpose", "torch", "numpy", "scipy", "opencv-python-headless", "segment-anything"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


@contextlib.contextmanager
def _exclusive(lock_path: pathlib.Path) -> Iterator[None]:
    """Serialise training of one key across processes (pytest-xdist, CI)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: rely on the atomic rename alone
        yield
        return
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_leftovers(directory: pathlib.Path, name: str) -> None:
    """Delete what a killed training of ``name`` left behind (call holding its lock)."""
    import shutil

    for path in directory.glob(f".train-{name}-*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in directory.glob(f"{name}.*.partial"):
        path.unlink(missing_ok=True)


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """``cache_dir``, else ``$PYSTITCH_TEST_CACHE``, else the user cache."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    return pathlib.Path(cache_dir).expanduser()


def _build(what: str, params: TrainingParams, target: pathlib.Path, force: bool,
           model: pathlib.Path | None = None) -> pathlib.Path:
    """``target``, trained into the cache (once, under a lock) unless it is there."""
    if target.is_file() and not force:
        return target
    directory = target.parent
    with _exclusive(directory / (target.name + ".lock")):
        if target.is_file() and not force:  # trained by another process meanwhile
            return target
        _remove_leftovers(directory, target.name)
        logger.info("training tiny cellpose %s %s with %s", what, target.name, params)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=directory, prefix=f".train-{target.name}-") as work:
            out = pathlib.Path(work) / "out"
            _train_in_subprocess(what, params, out, model)
            _write_atomically(out.read_bytes(), target)
        seconds = time.perf_counter() - start
        digest = sha256(target)
        meta = {"params": dataclasses.asdict(params), "cellpose_major": cellpose_major(),
                "format": FORMAT_REVISION, "sha256": digest, "train_seconds": round(seconds, 1),
                "training_env": TRAINING_ENV, "versions": _versions()}
        (directory / (target.name + ".json")).write_text(json.dumps(meta, indent=2) + "\n")
        logger.info("trained %s in %.1f s, sha256 %s", target.name, seconds, digest)
    return target


def tiny_model_path(
    cache_dir: str | os.PathLike | None = None, *, force: bool = False, **overrides: Any
) -> pathlib.Path:
    """Path of the tiny model for the installed cellpose, training it if missing.

    ``overrides`` change fields of :class:`TrainingParams` (and so the key).
    ``force`` retrains even when the file exists.
    """
    major = cellpose_major()
    params = dataclasses.replace(TrainingParams(), **overrides).resolved(major)
    directory = resolve_cache_dir(cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"tiny-cp{major}-{cache_key(params, major)}.pth"
    return _build("model", params, target, force)


def tiny_size_model_path(
    cache_dir: str | os.PathLike | None = None, *, force: bool = False, **overrides: Any
) -> pathlib.Path:
    """Cellpose 3's size model of the tiny model, ``<model>_size.npy`` (where
    cellpose looks for it), training both if missing."""
    major = cellpose_major()
    if major >= 4:
        raise RuntimeError("Expected cellpose 3 for a size model. Got cellpose 4, which has none, instead.")
    model = tiny_model_path(cache_dir, force=force, **overrides)
    params = dataclasses.replace(TrainingParams(), **overrides).resolved(major)
    return _build("size model", params, pathlib.Path(f"{model}_size.npy"), force, model)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train (once) and print the path of the tiny Cellpose test model.")
    parser.add_argument("--cache-dir", default=None, help=f"default: ${CACHE_ENV} or {DEFAULT_CACHE}")
    parser.add_argument("--force", action="store_true", help="retrain even if the model file exists")
    parser.add_argument("--size-model", action="store_true", help="also the size model (cellpose 3)")
    parser.add_argument("--seed", type=int, default=None, help="training seed (default: TrainingParams.seed)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log training progress")
    # the training process itself (see _train_in_subprocess)
    parser.add_argument("--train-child", choices=("model", "size model"), help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    if args.train_child:
        params = TrainingParams(**json.loads(args.params))
        _train_child(args.train_child, params, pathlib.Path(args.out),
                     None if args.model is None else pathlib.Path(args.model))
        return 0
    overrides = {} if args.seed is None else {"seed": args.seed}
    path = (tiny_size_model_path if args.size_model else tiny_model_path)(args.cache_dir, force=args.force,
                                                                            **overrides)
    print(path)
    print(sha256(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
