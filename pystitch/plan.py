"""The plan: one record of everything a run computes and where it writes.

``plan-blocks`` (:mod:`pystitch.steps.plan_blocks`) writes plan.json once;
every later step loads it, checks its hash, and stamps that hash on what it
writes, so outputs of different plans are never mixed.  The hash covers every
setting that changes a result, not where files go.

This module holds the record, its (de)serialisation, and the layout of the
work directory.  It imports no step and no scheduler.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from ._version import __version__
from .backends import Backend, get_backend
from .errors import InputError, PlanMismatchError
from .grid import BlockGrid
from .storage.files import LOCK_NAME, atomic_write_json, read_json, remove_path, stray_temp_files
from .storage.images import ImageSpec
from .storage.labels import NGFF_VERSIONS, OUTPUT_FORMATS, LabelLayout
from .storage.remote import is_remote, is_url, join, name, parent

PLAN_FORMAT = 1
RULES = ("exact", "match", "none", "flows")
LABEL_DTYPES = ("auto", "uint16", "uint32", "uint64")
#: IoU threshold of the match rule.  Mutual best matching is what keeps
#: touching cells apart; the threshold only refuses slivers.  Measured on
#: touching synthetic cells whose predictions disagree by 1-2 voxels near
#: block edges: no false join at any threshold from 0.05 to 0.5, and cells
#: left split from 0.3 up (tests/test_match.py).
DEFAULT_MIN_IOU = 0.2
#: plan fields that say where files go, not what is computed (not hashed)
LOCATION_FIELDS = ("work_dir", "output", "report_dir", "store_dir")


@dataclass(frozen=True)
class Plan:
    """Everything the later steps need; stored as plan.json."""

    image: ImageSpec | None  # None: labels provided by the caller (merge)
    shape: tuple[int, ...]
    dtype: str
    axes: str
    block_shape: tuple[int, ...]
    halo: tuple[int, ...]
    backend: dict
    rule: str
    work_dir: str
    output: str
    report_dir: str
    min_iou: float = DEFAULT_MIN_IOU
    label_dtype: str = "auto"
    voxel_size: tuple[float, ...] | None = None
    unit: str | None = None
    output_format: str = "ome-zarr"
    ngff_version: str = "0.4"
    pyramid: tuple[tuple[int, ...], ...] = ()
    label_name: str | None = None  # set when the labels go inside the input OME-Zarr image
    empty_blocks: tuple[int, ...] = ()
    stats: dict = field(default_factory=dict)
    format: int = PLAN_FORMAT
    #: physical position of voxel 0 (the input's OME-Zarr translation), carried to the labels and the regions
    translation: tuple[float, ...] | None = None
    #: apply-lut also measures the image's intensity per object (regions table)
    intensity_stats: bool = False
    #: where the big stores go (staging labels, lut, the output being written): a path or an s3:// URL;
    #: None: the work directory
    store_dir: str | None = None

    # ---- validation and (de)serialisation

    def __post_init__(self) -> None:
        nd = len(self.shape)
        _ = self.grid  # checks the geometry (BlockGrid)
        if self.rule not in RULES:
            raise InputError(f"Expected a stitch rule among {', '.join(RULES)}. Got {self.rule!r} instead.")
        if self.rule == "flows":
            _check_flows(self.backend, nd)
        if not 0.0 < self.min_iou <= 1.0:
            raise InputError(f"Expected min_iou in (0, 1]. Got {self.min_iou} instead.")
        if self.label_dtype not in LABEL_DTYPES:
            raise InputError(f"Expected label_dtype among {', '.join(LABEL_DTYPES)}. Got {self.label_dtype!r} instead.")
        if self.output_format not in OUTPUT_FORMATS:
            raise InputError(f"Expected an output format among {', '.join(OUTPUT_FORMATS)}. "
                             f"Got {self.output_format!r} instead.")
        if self.ngff_version not in NGFF_VERSIONS:
            raise InputError(f"Expected an NGFF version among {', '.join(NGFF_VERSIONS)}. "
                             f"Got {self.ngff_version!r} instead.")
        if not self.pyramid:
            object.__setattr__(self, "pyramid", ((1,) * nd,))
        for f in self.pyramid:
            if len(f) != nd or any(b % x for b, x in zip(self.block_shape, f)):
                raise InputError(f"Expected pyramid strides that divide the block shape {self.block_shape}. "
                                 f"Got {f} instead.")

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "image": self.image.to_dict() if self.image else None,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "axes": self.axes,
            "voxel_size": list(self.voxel_size) if self.voxel_size else None,
            "unit": self.unit,
            "block_shape": list(self.block_shape),
            "halo": list(self.halo),
            "backend": self.backend,
            "rule": self.rule,
            "min_iou": self.min_iou,
            "label_dtype": self.label_dtype,
            "work_dir": self.work_dir,
            "output": self.output,
            "report_dir": self.report_dir,
            "output_format": self.output_format,
            "ngff_version": self.ngff_version,
            "pyramid": [list(f) for f in self.pyramid],
            "label_name": self.label_name,
            "empty_blocks": list(self.empty_blocks),
            "stats": self.stats,
            # only when set, so that plans without them keep their hash
            **({"translation": list(self.translation)} if self.translation else {}),
            **({"intensity_stats": True} if self.intensity_stats else {}),
            **({"store_dir": self.store_dir} if self.store_dir else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        d = dict(d)
        d.pop("hash", None)
        d.pop("grid", None)
        d.pop("n_blocks", None)
        d.pop("created_by", None)
        if d.get("format") != PLAN_FORMAT:
            raise PlanMismatchError(f"Expected plan format {PLAN_FORMAT}. Got {d.get('format')!r} instead.")
        d["image"] = ImageSpec.from_dict(d["image"]) if d.get("image") else None
        for key in ("shape", "block_shape", "halo", "empty_blocks"):
            d[key] = tuple(int(v) for v in d[key])
        d["pyramid"] = tuple(tuple(int(v) for v in f) for f in d.get("pyramid", ()))
        if d.get("voxel_size"):
            d["voxel_size"] = tuple(float(v) for v in d["voxel_size"])
        if d.get("translation"):
            d["translation"] = tuple(float(v) for v in d["translation"])
        return cls(**d)

    def requested(self) -> tuple[dict, dict | None]:
        """The plan as it was requested, before the image scan resolved it (what
        two runs with the same command and image have in common)."""
        request = self.stats.get("requested")
        if not request:
            return self.to_dict(), None
        draft = replace(self, backend=request["backend"], empty_blocks=(), stats={})
        return draft.to_dict(), request

    @cached_property
    def request_digest(self) -> str:
        """Digest of :meth:`requested`, without the paths."""
        doc, request = self.requested()
        doc = {k: v for k, v in doc.items() if k not in LOCATION_FIELDS}
        return hashlib.sha256(json.dumps([doc, request], sort_keys=True).encode()).hexdigest()

    @cached_property
    def hash(self) -> str:
        """Identity of the computation: every setting that changes a result,
        not where files go (the same run in another directory has the same
        hash, and its outputs are byte-identical)."""
        doc = {k: v for k, v in self.to_dict().items() if k not in LOCATION_FIELDS}
        canon = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(canon.encode()).hexdigest()

    def save(self, path: str | os.PathLike | None = None) -> Path:
        doc = self.to_dict()
        doc.update(hash=self.hash, grid=list(self.grid.counts), n_blocks=self.n_blocks,
                   created_by=f"pystitch {__version__}")
        return atomic_write_json(path or self.plan_path, doc)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        path = Path(path)
        if path.is_dir():
            path = path / "plan.json"
        doc = read_json(path, "plan")
        if not isinstance(doc, dict) or "hash" not in doc:
            raise PlanMismatchError(f"{path} is not a pystitch plan (no hash).")
        try:
            plan = cls.from_dict(doc)
        except (KeyError, TypeError) as exc:
            raise PlanMismatchError(f"{path} is not a valid pystitch plan: {exc}") from exc
        if plan.hash != doc["hash"]:
            raise PlanMismatchError(
                f"{path} was edited after plan-blocks wrote it (its hash no longer matches); "
                "run plan-blocks again instead of editing the plan."
            )
        return plan

    # ---- layout of the work directory

    @property
    def plan_path(self) -> Path:
        return Path(self.work_dir) / "plan.json"

    @property
    def stores(self) -> str:
        """Where the big stores are: ``store_dir``, else the work directory."""
        return self.store_dir or self.work_dir

    @property
    def staging_uri(self) -> str:
        return join(self.stores, "staging.zarr")

    @property
    def manifest_dir(self) -> Path:
        return Path(self.work_dir) / "manifests"

    @property
    def pairs_dir(self) -> Path:
        return Path(self.work_dir) / "pairs"

    @property
    def lut_uri(self) -> str:
        return join(self.stores, "lut.zarr")

    @property
    def stats_dir(self) -> Path:
        return Path(self.work_dir) / "stats"

    @property
    def partial_output(self) -> str:
        return join(self.stores, "output.partial.zarr")

    @property
    def report_staging(self) -> Path:
        return Path(self.work_dir) / "report.partial"

    @property
    def output_id_path(self) -> Path:
        """Which partial output resolve created last (apply-lut records it)."""
        return Path(self.work_dir) / "output-id.json"

    def require_block_rule(self, step: str) -> None:
        """Refuse a flows plan in the steps of the per-block rules (they would segment blocks on their own)."""
        if self.rule == "flows":
            raise InputError(f"Expected a plan of rule exact, match or none for {step}. Got a plan of rule flows "
                             f"({self.plan_path}), whose steps are predict-flows and follow-flows.")

    def require_flows_rule(self, step: str) -> None:
        """Refuse a plan of a per-block rule in the flows rule's steps."""
        if self.rule != "flows":
            raise InputError(f"Expected a plan of rule flows for {step}. Got a plan of rule {self.rule} "
                             f"({self.plan_path}), whose steps are segment-block, face-pairs and resolve.")

    @property
    def flows_uri(self) -> str:
        """The flow store of the flows rule (network output for the whole image),
        with the other big stores (a path or an s3:// URL)."""
        return join(self.stores, "flows.zarr")

    @property
    def flows_scratch(self) -> Path:
        """Where follow-flows keeps, out of its memory, the image's seed labels
        (``seedlabels.npy``, memory-mapped) while it runs: a directory in the
        work directory (always a local filesystem), removed when it is done."""
        return Path(self.work_dir) / "flows-scratch"

    @property
    def flows_ends(self) -> Path:
        """Each block's end points (:class:`pystitch.flows.blockwise.EndPointFiles`):
        written by ``follow-flows --blocks`` tasks or by follow-flows itself,
        read by follow-flows, removed when it has written the lut."""
        return Path(self.work_dir) / "flows-ends"

    def flows_settings(self) -> dict:
        """What the flows rule's dynamics use (all of it in the hashed backend settings)."""
        b = self.backend
        return {"niter": b.get("niter"), "cellprob_threshold": b["cellprob_threshold"],
                "flow_threshold": b["flow_threshold"], "min_size": b["min_size"],
                "max_size_fraction": b["max_size_fraction"], "do_3D": self.ndim == 3}

    @property
    def staged_input(self) -> Path:
        """Where the local runner copies an in-memory image for its worker processes."""
        return Path(self.work_dir) / "input.zarr"

    def owned_paths(self) -> list[Path]:
        """Everything pystitch writes into the work directory."""
        return owned_paths(self.work_dir)

    def clean_work_dir(self, finished: bool = False) -> None:
        """Remove what pystitch wrote into the work directory and the store
        directory (see :func:`clean_work_dir`)."""
        clean_work_dir(self.work_dir, finished, store_dir=self.store_dir)

    # ---- geometry

    @cached_property
    def grid(self) -> BlockGrid:
        """The block geometry (:class:`~pystitch.grid.BlockGrid`)."""
        return BlockGrid(self.shape, self.block_shape, self.halo, self.axes)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def n_blocks(self) -> int:
        return self.grid.n_blocks

    @cached_property
    def empty_set(self) -> frozenset[int]:
        return frozenset(self.empty_blocks)

    def work_blocks(self) -> list[int]:
        """Blocks that need work: all but those planned empty; all of them under
        the flows rule (objects followed from other blocks may end in any)."""
        if self.rule == "flows":
            return list(range(self.n_blocks))
        return [b for b in range(self.n_blocks) if b not in self.empty_set]

    def label_layout(self) -> LabelLayout:
        """What the output label image looks like."""
        return LabelLayout(shape=self.shape, block=self.block_shape, axes=self.axes, pyramid=self.pyramid,
                           voxel_size=self.voxel_size, unit=self.unit, output_format=self.output_format,
                           ngff_version=self.ngff_version, label_name=self.label_name, translation=self.translation)

    def make_backend(self) -> Backend:
        return get_backend(self.backend["name"]).from_params(
            {k: v for k, v in self.backend.items() if k != "name"})


def check_rule(rule: str | None, backend: str) -> None:
    """A rule the backend can run (checked before anything else is planned)."""
    if rule == "flows" and backend != "cellpose":
        raise InputError(f"Expected --backend cellpose for --rule flows (it follows Cellpose's flows). "
                         f"Got --backend {backend} instead.")


def _check_flows(backend: dict, ndim: int) -> None:
    """The flows rule follows Cellpose's own flows: one clear line for what it cannot run."""
    check_rule("flows", str(backend.get("name")))
    if backend.get("normalize", "global") != "global":
        raise InputError(f"Expected --normalize global for --rule flows (every tile normalised as in the whole "
                         f"image). Got --normalize {backend.get('normalize')} instead.")
    if ndim == 3 and not backend.get("do_3D", True):
        raise InputError("Expected --do-3d true for --rule flows on a 3-D image (flows in 3-D). "
                         "Got --do-3d false (planes stitched by stitch_threshold) instead.")


# --------------------------------------------------------------------------- the work directory


def owned_paths(work_dir: str | os.PathLike) -> list[Path]:
    """Everything pystitch writes into a work directory (the layout of :class:`Plan`)."""
    wd = Path(work_dir)
    return [wd / "plan.json", wd / "staging.zarr", wd / "manifests", wd / "pairs", wd / "lut.zarr",
            wd / "lut.zarr.incomplete", wd / "resolve.json", wd / "stats", wd / "output.partial.zarr",
            wd / "output-id.json", wd / "report.partial", wd / "input.zarr", wd / "flows.zarr",
            wd / "flows-scratch", wd / "flows-ends"]


#: the big stores pystitch writes into a store directory
STORE_NAMES = ("staging.zarr", "lut.zarr", "lut.zarr.incomplete", "output.partial.zarr", "flows.zarr")


def clean_work_dir(work_dir: str | os.PathLike, finished: bool = False, store_dir: str | None = None) -> None:
    """Remove what pystitch wrote into the work directory (and into
    ``store_dir``, when the big stores live elsewhere).  When the run is
    ``finished``, also its lock file and the directory itself when nothing
    else is in it (a run in progress keeps its lock file: removing a locked
    file would let a second run lock a new one)."""
    for path in owned_paths(work_dir):
        remove_path(path)
        for tmp in stray_temp_files(path):   # a step killed while writing it
            tmp.unlink(missing_ok=True)
    if store_dir and store_dir != os.fspath(work_dir):
        for store in STORE_NAMES:
            remove_path(join(store_dir, store))
        if finished and not is_url(store_dir):
            try:
                Path(store_dir).rmdir()
            except OSError:
                pass
    if finished:
        (Path(work_dir) / LOCK_NAME).unlink(missing_ok=True)
        try:
            Path(work_dir).rmdir()
        except OSError:
            pass


# --------------------------------------------------------------------------- default paths


def output_stem(path: str) -> str:
    """``/data/labels.ome.zarr`` -> ``/data/labels``: the base of the report and work dir names."""
    return re.sub(r"\.(ome\.)?zarr$", "", path.rstrip("/"))


def run_stem(image: str, output: str) -> str:
    """The stem the default work and report directories are named after: the
    output's, or for labels inside an OME-Zarr image (``<image>/labels/<name>``)
    ``<image stem>_<name>``, next to the image rather than inside it."""
    if name(parent(output)) == "labels" and parent(parent(output)) == image.rstrip("/"):
        return f"{output_stem(image)}_{name(output)}"
    return output


def default_report_dir(output: str) -> str:
    return f"{output_stem(output)}_report"


def default_work_dir(output: str) -> str:
    """``<output stem>_work`` beside the output; for an output at a URL, in the
    current directory (the work directory's small files stay on a filesystem)."""
    if is_url(output):
        return str(Path.cwd() / f"{name(output_stem(output))}_work")
    return f"{output_stem(output)}_work"


def default_store_dir(output: str) -> str | None:
    """Where the big stores go by default: the work directory, or for an output
    at a URL ``<output stem>_work`` beside it (one object store: publishing is
    a copy by the server)."""
    return f"{output_stem(output)}_work" if is_remote(output) else None
