"""Every parameter of pystitch, defined once.

A :class:`Param` holds a parameter's name, type, default, check and help.
From this table come:

* the command-line interfaces (:mod:`pystitch.cli` builds their parsers and
  their ``--help``),
* the Python API (:func:`bind` checks keyword arguments, fills defaults and
  suggests the closest name for a misspelt one; :func:`document` writes the
  parameter section of a docstring),
* the Nextflow pipeline (:func:`nextflow_schema` writes ``nextflow_schema.json``,
  which the pipeline validates ``params`` against and builds each process's
  arguments from).

Options of a segmentation backend carry its name (``backend="threshold"``):
they are accepted wherever the backend is chosen and passed to it.  A
default of ``None`` means "unset": the step decides (e.g. the halo and the
stitching rule depend on the backend).

This module imports nothing of pystitch but the errors.
"""

from __future__ import annotations

import difflib
import json
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from .errors import InputError

#: the commands (CLIs) of pystitch; "run" is every step on this machine
COMMANDS = ("run", "plan-blocks", "segment-block", "face-pairs", "resolve", "predict-flows", "follow-flows",
            "seed-flows", "assign-flows", "apply-lut", "finalize", "batches", "example", "convert")
#: where a parameter appears only in the pipeline, not in any command
PIPELINE = "pipeline"
PLAN_AND_RUN = ("run", "plan-blocks")
#: commands that read an input image
READERS = PLAN_AND_RUN + ("convert",)

_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


def parse_bool(value: Any, name: str) -> bool:
    """A flag from True/False or text (true/false, yes/no, 1/0, on/off).

    >>> parse_bool("yes", "overwrite"), parse_bool(False, "overwrite")
    (True, False)
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise InputError(f"Expected true or false for --{flag_name(name)}. Got {value!r} instead.")


def flag_name(name: str) -> str:
    """``block_shape`` -> ``block-shape``."""
    return name.replace("_", "-")


@dataclass(frozen=True)
class Param:
    """One parameter.

    ``kind`` says how a value is read and checked:

    ``int``, ``float``      a number (``minimum``/``maximum`` inclusive)
    ``str``                 text (``choices`` when it is one of a set)
    ``bool``                a flag (``--x``, ``--no-x``, ``--x true|false``)
    ``shape``               one integer or one per axis, ``64`` or ``64,256,256``
                            (checked against the image later); ``auto`` allowed
                            when listed in ``choices``
    ``text``                kept as given (ids, paths, JSON, per-axis numbers):
                            the step that uses it checks it
    ``paths``               one or more paths (a list from Python, or comma/space
                            separated text and globs on the command line)
    """

    name: str
    kind: str
    help: str
    default: Any = None
    commands: tuple[str, ...] = ()
    group: str = "options"
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    backend: str | None = None
    #: a parameter of the Nextflow pipeline (nextflow_schema.json)
    nextflow: bool = True
    #: positional on the command line
    positional: bool = False
    required: bool = False
    metavar: str | None = None
    #: the per-command default when it differs from ``default``
    command_defaults: dict[str, Any] = field(default_factory=dict)
    #: longer help for the pipeline's parameter documentation
    help_text: str | None = None
    #: JSON-schema ``format`` of a path parameter in the pipeline
    path_format: str | None = None
    #: accepted where old commands spelt it differently (hidden in help)
    aliases: tuple[str, ...] = ()
    #: a samplesheet column of the pipeline (given per image, not as one value for all)
    sample_column: bool = False
    #: the choices the Nextflow pipeline and the plan-blocks step accept, when fewer than ``choices``
    pipeline_choices: tuple[str, ...] = ()
    #: commands where a ``required`` parameter may be left out
    optional_in: tuple[str, ...] = ()
    #: the help of a command where the parameter means more than ``help`` says
    command_help: dict[str, str] = field(default_factory=dict)

    @property
    def flag(self) -> str:
        return "--" + flag_name(self.name)

    def default_for(self, command: str) -> Any:
        return self.command_defaults.get(command, self.default)

    def required_in(self, command: str) -> bool:
        return self.required and command not in self.optional_in

    def help_for(self, command: str) -> str:
        return self.command_help.get(command, self.help)

    def parse(self, value: Any) -> Any:
        """Check and normalise a value given from Python or the command line
        (text); ``None`` stays unset."""
        if value is None:
            return None
        kind = self.kind
        if kind == "bool":
            return parse_bool(value, self.name)
        if kind in ("int", "float"):
            if isinstance(value, str) and value.strip().lower() in self.choices:
                return value.strip().lower()
            try:
                if isinstance(value, bool):
                    raise ValueError
                number = int(value) if kind == "int" else float(value)
                if kind == "int" and float(value) != number:
                    raise ValueError
            except (TypeError, ValueError):
                what = "an integer" if kind == "int" else "a number"
                extra = f" or {' / '.join(self.choices)}" if self.choices else ""
                raise InputError(f"Expected {what}{extra} for {self.flag}. Got {value!r} instead.") from None
            if number != number or number in (float("inf"), float("-inf")):
                raise InputError(f"Expected a finite number for {self.flag}. Got {value!r} instead.")
            self._check_range(number)
            return number
        if kind == "str":
            text = str(value)
            if self.choices and text not in self.choices:
                hint = _suggest(text, self.choices)
                raise InputError(f"Expected {self.flag} among {', '.join(self.choices)}. Got {text!r} instead.{hint}")
            return text
        if kind == "shape":
            if isinstance(value, str):
                text = value.strip()
                if text.lower() in self.choices:
                    return text.lower()
                if not re.fullmatch(r"\d+([,x\s]+\d+)*", text):
                    raise InputError(f"Expected {self.flag} as one integer >= 0 or one per axis "
                                     f"({self.metavar or 'N[,N,N]'}). Got {value!r} instead.")
            return value
        if kind == "paths":
            return list(value) if isinstance(value, (list, tuple)) else value
        return value

    def _check_range(self, number: float) -> None:
        lo, hi = self.minimum, self.maximum
        if (lo is not None and number < lo) or (hi is not None and number > hi):
            bounds = (f"between {lo:g} and {hi:g}" if lo is not None and hi is not None
                      else f">= {lo:g}" if lo is not None else f"<= {hi:g}")
            raise InputError(f"Expected {self.flag} {bounds}. Got {number:g} instead.")


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


# --------------------------------------------------------------------------- the table


def _p(name: str, kind: str, help: str, **kw: Any) -> Param:
    return Param(name, kind, help, **kw)


_SHAPE = r"^\d+(\s*,\s*\d+){0,2}$"

PARAMS: tuple[Param, ...] = (
    # ---- what to read
    _p("image", "str", "input image: a zarr array, a zarr group (with --array-path), an OME-Zarr image, a TIFF "
       "file, a glob or folder of TIFF planes (quoted), an OME companion file or a vendor file (bioio)",
       commands=READERS, group="input", positional=True, required=True, nextflow=False),
    _p("array_path", "str", "array inside a zarr group", commands=READERS, group="input", sample_column=True),
    _p("level", "int", "multiscale level to segment (OME-Zarr or TIFF pyramid); 0 is full resolution",
       commands=READERS, group="input", minimum=0, sample_column=True),
    _p("channel", "text", "channel index, or several (e.g. 0,1) for segmenters that use more than one; convert: "
       "default all", commands=READERS, group="input", metavar="C[,C...]", sample_column=True),
    _p("channel_axis", "int", "channel axis of an array without axis metadata", commands=READERS,
       group="input"),
    _p("timepoint", "int", "time index, for images with a time axis", commands=READERS, group="input",
       minimum=0),
    # ---- where to write
    _p("output", "str", "the label image to write (zarr); it must not exist unless --overwrite",
       commands=PLAN_AND_RUN, group="output", positional=True, required=True, nextflow=False),
    _p("output_format", "str", "ome-zarr: a multiscale label image (inside the input image when OUTPUT is "
       "<image>/labels/<name>); zarr: one plain array", default="ome-zarr", choices=("ome-zarr", "zarr"),
       commands=PLAN_AND_RUN, group="output"),
    _p("ngff_version", "str", "OME-Zarr version of the output: 0.4 (zarr v2, read by every current viewer) or "
       "0.5 (zarr v3); default 0.4, or the input image's for labels inside it", choices=("0.4", "0.5"),
       commands=READERS, group="output"),
    _p("pyramid_levels", "int", "pyramid levels of an OME-Zarr output (default: until the largest side is "
       "<= 256)", commands=READERS, group="output", minimum=1),
    _p("label_dtype", "str", "id type of the output: auto (uint32, or uint64 when needed)", default="auto",
       choices=("auto", "uint16", "uint32", "uint64"), commands=PLAN_AND_RUN, group="output"),
    _p("overwrite", "bool", "replace an existing output (only one pystitch wrote)", default=False,
       commands=READERS + ("finalize", "example"), group="output"),
    _p("work_dir", "str", "intermediate files: plan, staging store, manifests, pairs, lut "
       "(default: <output stem>_work); an interrupted run resumes from it", commands=PLAN_AND_RUN,
       group="output", nextflow=False),
    _p("report_dir", "str", "regions table, QC pictures and summary (default: <output stem>_report)",
       commands=PLAN_AND_RUN + ("finalize",), group="output", nextflow=False),
    _p("keep_work", "bool", "keep the work directory after success", default=False, commands=("run",),
       group="output", nextflow=False),
    # ---- object storage and devices
    _p("storage_options", "text", "options of every s3:// URL (input, output, report, store dir) as a JSON "
       "object of s3fs keyword arguments, e.g. {\"endpoint_url\": \"https://minio.example.org\"}; credentials "
       "come from the AWS environment (AWS_ACCESS_KEY_ID..., AWS_PROFILE, ~/.aws); default: the JSON in "
       "PYSTITCH_STORAGE_OPTIONS", commands=("run", "plan-blocks", "segment-block", "face-pairs", "resolve",
                                             "predict-flows", "follow-flows", "seed-flows", "assign-flows",
                                             "apply-lut", "finalize"),
       group="running", metavar="JSON",
       help_text="Every step opens the URLs with them; AWS_ENDPOINT_URL names an S3-compatible endpoint as well. "
       "Keep credentials out of them (they would be in the tasks' scripts): use the AWS environment or profiles."),
    _p("store_dir", "str", "where the big stores go (staging labels, lut, the output being written): a path "
       "or an s3:// URL (default: the work directory; for an s3:// output, <output stem>_work beside it)",
       commands=PLAN_AND_RUN, group="output", nextflow=False),
    _p("devices", "text", "one worker per device, each pinned to it for its whole life (the model loaded "
       "once per worker): cuda:0,cuda:1,... or auto (every GPU torch sees); cellpose", commands=("run",),
       group="running", nextflow=False, metavar="cuda:0,cuda:1|auto"),
    # ---- blocks
    _p("block_shape", "shape", "block core in voxels, one value or one per axis (e.g. 64,256,256); also the "
       "output chunks. auto (cellpose): the largest block whose segmentation fits --memory-gb",
       commands=PLAN_AND_RUN, group="blocks", required=True, choices=("auto",), metavar="N[,N,N]|auto",
       default=None, command_defaults={PIPELINE: "64,256,256"}),
    _p("halo", "shape", "overlap read around each block, per axis (e.g. 8,16,16); smaller than the block. "
       "Default: the backend's (cellpose: one object diameter)", commands=PLAN_AND_RUN, group="blocks",
       metavar="N[,N,N]"),
    _p("memory_gb", "float", "memory of one segmentation task for --block-shape auto (default: this "
       "machine's GPU, else half of its available RAM)", commands=PLAN_AND_RUN, group="blocks", minimum=0.001),
    _p("skip_empty", "bool", "mark blocks that cannot hold objects at plan time (a pass over the image) so "
       "that they are never scheduled; run: by default they are found when segmented",
       default=True, command_defaults={"run": None}, commands=PLAN_AND_RUN, group="blocks", nextflow=False),
    _p("stats_level", "int", "scan a coarser level for block maxima and intensity samples (faster, "
       "approximate)", commands=PLAN_AND_RUN, group="blocks", minimum=0),
    # ---- segmentation and stitching
    _p("backend", "str", "segmentation backend", default="threshold", choices=("threshold", "callable", "cellpose"),
       commands=PLAN_AND_RUN, group="segmentation"),
    _p("rule", "str", "stitching rule: exact (objects sharing a voxel in the overlap are one), match (mutual "
       "best IoU: touching cells stay apart), none, or flows (cellpose only: Cellpose's "
       "dynamics followed across blocks, no seams). Default: the backend's",
       choices=("exact", "match", "none", "flows"),
       commands=PLAN_AND_RUN, group="segmentation"),
    _p("min_iou", "float", "IoU threshold of the match rule (default 0.2)", commands=PLAN_AND_RUN,
       group="segmentation", minimum=0.0, maximum=1.0),
    # ---- running
    _p("workers", "int", "parallel processes, or auto: this machine's cores, as many as its available memory "
       "holds at the backend's memory per worker for the block size (the count is logged)", default="auto",
       choices=("auto",), commands=READERS, group="running", minimum=1, nextflow=False, metavar="N|auto"),
    _p("device", "str", "where a model runs (cellpose): auto (a GPU when the task has one), cpu, cuda, "
       "cuda:N, mps", commands=("run", "segment-block", "predict-flows"), group="running", nextflow=False),
    _p("allow_cpu_fallback", "bool", "run on the CPU, with a warning, when the requested GPU is missing",
       commands=("run", "segment-block", "predict-flows"), group="running", nextflow=False),
    _p("progress", "bool", "show the progress of each step in blocks: a bar on a terminal, else a log line "
       "every PYSTITCH_PROGRESS_SECONDS (30) seconds and every tenth of the work", default=True,
       commands=("run", "convert"),
       group="running", nextflow=False),
    # ---- report
    _p("pictures", "bool", "write the QC pictures into the report", default=True, commands=("run", "finalize"),
       group="report", aliases=("nopictures",)),
    _p("grid", "bool", "draw the block grid on the QC projections", default=False, commands=("run", "finalize"),
       group="report"),
    _p("qc_faces", "int", "block faces sampled by the seam QC, or all", default=256, choices=("all",),
       commands=("finalize",), group="report", minimum=0),
    # ---- what the regions table measures
    _p("intensity_stats", "bool", "measure the image's intensity per object (mean, max and sum per channel) for the "
       "regions table; apply-lut then reads the image of its blocks", default=False, commands=PLAN_AND_RUN,
       group="output"),
    # ---- the steps' own inputs and outputs
    _p("plan", "str", "path of plan.json (or of the work directory holding it)", group="step",
       commands=("segment-block", "face-pairs", "resolve", "predict-flows", "follow-flows", "seed-flows",
                 "assign-flows", "apply-lut", "finalize",
                 "batches"), positional=True,
       required=True, nextflow=False),
    _p("blocks", "text", "block ids: one (7), a range (0-9), a list (0,3,5), a mix (0-9,12) or all", group="step",
       commands=("segment-block", "face-pairs", "predict-flows", "follow-flows", "assign-flows", "apply-lut"),
       required=True,
       nextflow=False, metavar="IDS", optional_in=("follow-flows",),
       command_help={"follow-flows": "only the trajectories of these blocks (ids as above): their end points "
                                     "into the work directory, for the follow-flows of the whole plan"}),
    _p("manifest_dir", "str", "where manifests go (default: <work_dir>/manifests)", group="step",
       commands=("segment-block",), nextflow=False),
    _p("skip_existing", "bool", "skip blocks that already have a valid manifest", default=False, group="step",
       commands=("segment-block",), nextflow=False),
    _p("manifests", "paths", "block manifests: a directory, files, globs, or a JSON Lines file of concatenated "
       "manifests (default: <work_dir>/manifests)", group="step", commands=("face-pairs", "resolve"),
       nextflow=False),
    _p("pairs", "paths", "pairs files: a directory, files or globs (default: <work_dir>/pairs)", group="step",
       commands=("resolve",), nextflow=False),
    _p("lut", "str", "lut store (default: <work_dir>/lut.zarr)", group="step", commands=("apply-lut", "finalize"),
       nextflow=False),
    _p("stats", "paths", "statistics files of apply-lut: a directory, files or globs (default: <work_dir>/stats)",
       group="step", commands=("finalize",), nextflow=False),
    _p("out", "str", "where to write: a file or a directory (default: in the work directory)", group="step",
       commands=("face-pairs", "resolve", "follow-flows", "apply-lut"), nextflow=False),
    _p("output", "str", "publish the label image here instead of at the plan's output path", group="step",
       commands=("finalize",), nextflow=False),
    _p("trace", "str", "a Nextflow trace file (-with-trace), for per-step timings in the summary", group="step",
       commands=("finalize",), nextflow=False),
    _p("published_in", "str", "the folder a workflow publishes --output and --report-dir into after this step, "
       "keeping their relative paths: the summary names them there", group="step", commands=("finalize",),
       nextflow=False, metavar="DIR"),
    _p("size", "int", "blocks per batch (one task each)", default=64, group="step", commands=("batches",),
       minimum=1, nextflow=False),
    # ---- the built-in example
    _p("path", "str", "where to write the example image", default="example.zarr", commands=("example",),
       group="example", positional=True, nextflow=False),
    _p("shape", "shape", "image shape (2 or 3 values)", default="48,160,160", commands=("example",),
       group="example", nextflow=False),
    _p("seed", "int", "random seed", default=0, commands=("example",), group="example", nextflow=False),
    # ---- input formats (plane sequences, multi-image files, metadata overrides) and convert
    _p("pattern", "str", "how the file names of a glob or folder of TIFF planes map to axes: placeholders {z}, "
       "{c}, {t} (e.g. plane_{z}_ch{c}.tif; a channel may be a name such as DAPI) or tifffile's pattern syntax "
       "(e.g. _(z)(\\d+)_(c)(\\d+)). Default: one plane per file, z in natural file order", commands=READERS,
       group="input", metavar="PATTERN"),
    _p("scene", "text", "scene, series or position of a file with several images (vendor files, OME-TIFF, TIFF "
       "series): an index or a name (default: the first)", commands=READERS, group="input", metavar="S"),
    _p("voxel_size", "text", "voxel size per spatial axis (e.g. 2,0.4,0.4 for z,y,x): for inputs without it in "
       "their metadata, or to replace the metadata's", commands=READERS, group="input", metavar="Z,Y,X"),
    _p("unit", "str", "unit of the voxel sizes (e.g. micrometer, nanometer; default: the metadata's, else "
       "micrometer)", commands=READERS, group="input"),
    _p("target", "str", "the OME-Zarr image to write (e.g. image.ome.zarr); it must not exist unless "
       "--overwrite (and then only one pystitch convert wrote is replaced)", commands=("convert",),
       group="output", positional=True, required=True, nextflow=False),
    _p("chunks", "shape", "chunks of the written image per spatial axis; auto: 32,128,128 in 3-D and 512,512 "
       "in 2-D (at most the image), so that blocks of the default shape read few chunks beyond their halo",
       default="auto", choices=("auto",), commands=("convert",), group="output", metavar="N[,N,N]|auto",
       nextflow=False),
    # ---- threshold backend
    _p("threshold", "text", "foreground above this intensity: a number, or otsu (computed ONCE for the whole "
       "image)", backend="threshold", commands=PLAN_AND_RUN, group="threshold backend", metavar="N|otsu",
       required=True, help_text="Required with the threshold backend."),
    _p("sigma", "text", "Gaussian smoothing before thresholding, one value or one per axis", backend="threshold",
       commands=PLAN_AND_RUN, group="threshold backend", metavar="S[,S,S]"),
    _p("connectivity", "text", "connectivity of objects: 1..ndim, or full (default 1)", backend="threshold",
       commands=PLAN_AND_RUN, group="threshold backend", metavar="1..3|full"),
    _p("truncate", "float", "smoothing kernel radius in sigmas (default 4)", backend="threshold",
       commands=PLAN_AND_RUN, group="threshold backend", minimum=0.001, nextflow=False),
    # ---- callable backend
    _p("function", "str", "the segmenter: module:function or file.py:function; it gets the block's image and "
       "returns integer labels of the same shape", backend="callable", commands=PLAN_AND_RUN,
       group="callable backend", metavar="MOD:FN|FILE.py:FN", required=True,
       help_text="In the pipeline, give a file by absolute path (plan-blocks runs in its task directory)."),
    _p("kwargs", "text", "keyword arguments of the function, as a JSON object", backend="callable",
       commands=PLAN_AND_RUN, group="callable backend", metavar="JSON"),
    _p("empty_below", "float", "blocks whose maximum is at or below this value are empty (skipped)",
       backend="callable", commands=PLAN_AND_RUN, group="callable backend"),
    # ---- cellpose backend
    _p("model", "str", "a built-in Cellpose model name (cyto3, nuclei, ...; cpsam with Cellpose 4); Cellpose "
       "downloads its weights when online", backend="cellpose", commands=PLAN_AND_RUN, group="cellpose backend"),
    _p("pretrained_model", "str", "a Cellpose model file", backend="cellpose", commands=PLAN_AND_RUN,
       group="cellpose backend", path_format="file-path"),
    _p("diameter", "text", "object diameter in pixels (Y/X)", backend="cellpose", commands=PLAN_AND_RUN,
       group="cellpose backend", metavar="D"),
    _p("do_3d", "bool", "3-D blocks: segment in 3-D (true) or plane by plane, planes joined at "
       "--stitch-threshold (false)", backend="cellpose", commands=PLAN_AND_RUN, group="cellpose backend"),
    _p("anisotropy", "float", "Z step / XY step (default: from the voxel sizes)", backend="cellpose",
       commands=PLAN_AND_RUN, group="cellpose backend", minimum=0.0),
    _p("stitch_threshold", "float", "IoU joining planes when --do-3d false (default 0.3)", backend="cellpose",
       commands=PLAN_AND_RUN, group="cellpose backend", minimum=0.0, maximum=1.0),
    _p("flow_threshold", "float", "Cellpose flow error threshold (2-D; default 0.4)", backend="cellpose",
       commands=PLAN_AND_RUN, group="cellpose backend", minimum=0.0),
    _p("cellprob_threshold", "float", "Cellpose cell probability threshold (default 0)", backend="cellpose",
       commands=PLAN_AND_RUN, group="cellpose backend", minimum=-6.0, maximum=6.0),
    _p("min_size", "int", "smallest object kept, in voxels (default 15)", backend="cellpose",
       commands=PLAN_AND_RUN, group="cellpose backend", minimum=0),
    _p("max_size_fraction", "float", "objects larger than this fraction of the block are removed (default 0.4)",
       backend="cellpose", commands=PLAN_AND_RUN, group="cellpose backend", minimum=0.0, maximum=1.0),
    _p("niter", "int", "iterations of the flow dynamics (default: Cellpose's)", backend="cellpose",
       commands=PLAN_AND_RUN, group="cellpose backend", minimum=1),
    _p("batch_size", "int", "tiles per network batch (default 8)", backend="cellpose", commands=PLAN_AND_RUN,
       group="cellpose backend", minimum=1),
    _p("channels", "text", "Cellpose 3 style channels: channel to segment, nuclear channel (1-based; 0 = "
       "grayscale)", backend="cellpose", commands=PLAN_AND_RUN, group="cellpose backend", metavar="C,N"),
    _p("invert", "bool", "invert intensities after normalisation (dark objects on a bright background)",
       backend="cellpose", commands=PLAN_AND_RUN, group="cellpose backend"),
    _p("normalize", "str", "global: one normalisation for all blocks (percentiles of the whole image); block: "
       "per block", backend="cellpose", commands=PLAN_AND_RUN, group="cellpose backend",
       choices=("global", "block")),
    _p("percentile", "text", "normalisation percentiles low,high (default 1,99)", backend="cellpose",
       commands=PLAN_AND_RUN, group="cellpose backend", metavar="LO,HI"),
    _p("skip_below", "float", "blocks whose maximum is at or below this intensity are empty (default: the low "
       "normalisation bound)", backend="cellpose", commands=PLAN_AND_RUN, group="cellpose backend"),
    # ---- the pipeline's own
    _p("input", "str", "an image (zarr, OME-Zarr, TIFF; zarr and OME-Zarr also at an s3:// URL), a samplesheet "
       "*.csv (columns sample,image and optionally array_path,level,channel) or example (the built-in test image)",
       commands=(PIPELINE,),
       group="input", required=True, path_format="path"),
    _p("outdir", "str", "output folder or s3:// URL: <outdir>/<sample>/labels.zarr and its report",
       default="results",
       commands=(PIPELINE,), group="output", path_format="directory-path"),
    _p("blocks_per_task", "int", "blocks segmented (with --rule flows: predicted, then followed), paired and "
       "relabelled by one task",
       default=64,
       commands=(PIPELINE,), group="running", minimum=1),
    _p("backend_args", "str", "more plan-blocks arguments, passed as they are", commands=(PIPELINE,),
       group="segmentation"),
    _p("staging_dir", "str", "shared folder or s3:// URL for the big intermediate stores (default: "
       "pystitch-staging/ in the work directory)", commands=(PIPELINE,), group="running",
       path_format="directory-path"),
    _p("publish_dir_mode", "str", "how results are published from the work directory to --outdir",
       default="link", choices=("link", "copy", "copyNoFollow", "symlink", "rellink", "move"),
       commands=(PIPELINE,), group="output",
       help_text="link: hard links, file by file (no data copied; the results outlive the work directory; "
       "--outdir on the work directory's filesystem). copy: another filesystem. symlink, rellink: links into "
       "the work directory. move: breaks -resume. An s3:// --outdir is written by the finalize step itself "
       "(Nextflow would need its nf-amazon plugin): this mode is then not used."),
    _p("trace_report_suffix", "str", "suffix of the run reports in <outdir>/pipeline_info (default: the start "
       "time)", commands=(PIPELINE,), group="output"),
    _p("help", "bool", "show the parameters and exit", default=False, commands=(PIPELINE,), group="running"),
    _p("example_shape", "shape", "shape of the image made by --input example", default="24,96,96",
       commands=(PIPELINE,), group="example"),
    _p("container_cpu", "str", "container image of every step but GPU segmentation", default="pystitch-cpu:0.1.0",
       commands=(PIPELINE,), group="containers"),
    _p("container_gpu", "str", "container image of the segmentation step under -profile gpu",
       default="pystitch-gpu:0.1.0", commands=(PIPELINE,), group="containers"),
)

BY_NAME: dict[tuple[str, str], Param] = {}
for _param in PARAMS:
    for _command in _param.commands:
        key = (_command, _param.name)
        assert key not in BY_NAME, f"parameter {_param.name} defined twice for {_command}"
        BY_NAME[key] = _param

#: the backends whose options are in the table
BACKENDS = tuple(dict.fromkeys(p.backend for p in PARAMS if p.backend))


def for_command(command: str) -> list[Param]:
    """The parameters of one command, in table order."""
    if command not in COMMANDS and command != PIPELINE:
        raise InputError(f"Expected a command among {', '.join(COMMANDS)}. Got {command!r} instead.")
    return [p for p in PARAMS if command in p.commands]


def backend_options(backend: str) -> list[Param]:
    return [p for p in PARAMS if p.backend == backend]


# --------------------------------------------------------------------------- the Python API


def bind(command: str, options: dict[str, Any], *, fill: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check keyword arguments of ``command``: ``(core, backend_options)``.

    Unknown names are an error that suggests the closest known one; values
    are normalised by :meth:`Param.parse`; with ``fill``, core parameters
    left out get their default (backend options left out stay out: the
    backend decides).  Options of a backend other than the chosen one are
    an error.
    """
    known = {p.name: p for p in for_command(command)}
    core: dict[str, Any] = {}
    backend: dict[str, Any] = {}
    for given, value in options.items():
        name = given if given in known else given.lower()  # do_3D and do_3d alike
        param = known.get(name)
        if param is None:
            hint = _suggest(name, known)
            listing = "" if hint else (" Expected one of: "
                                       f"{', '.join(sorted(n for n, p in known.items() if not p.positional))}.")
            raise InputError(f"Unknown option {given!r} for {command}.{hint}{listing}")
        if param.backend:
            if value is not None:
                backend[name] = param.parse(value)
        else:
            core[name] = param.parse(value)
    if fill:
        for name, param in known.items():
            if not param.backend and name not in core and not param.positional:
                core[name] = param.default_for(command)
    chosen = core.get("backend")
    if chosen is not None:
        foreign = sorted(n for n in backend if known[n].backend != chosen)
        if foreign:
            owner = known[foreign[0]].backend
            raise InputError(
                f"Option {known[foreign[0]].flag} belongs to the {owner} backend, not to --backend {chosen}. "
                f"Expected some of: {', '.join(p.flag for p in backend_options(chosen))}."
            )
    return core, backend


def document(command: str, intro: str) -> str:
    """A numpydoc docstring for the Python function of ``command``."""
    lines = [intro.rstrip(), "", "Parameters", "----------"]
    for p in for_command(command):
        default = p.default_for(command)
        kind = {"int": "int", "float": "float", "bool": "bool", "str": "str", "shape": "int or sequence of int",
                "paths": "path or list of paths", "text": "str"}[p.kind]
        suffix = f", default {default!r}" if default is not None else ", optional"
        owner = f" ({p.backend} backend)" if p.backend else ""
        lines.append(f"{p.name} : {kind}{'' if p.required_in(command) else suffix}")
        text = p.help_for(command)[0].upper() + p.help_for(command)[1:] + owner + "."
        lines += textwrap.wrap(text, 76, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the pipeline

SCHEMA_ID = "https://raw.githubusercontent.com/pystitch/pystitch/main/nextflow_schema.json"
_SCHEMA_GROUPS = {
    "input": ("Input", "Which image, which part of it."),
    "output": ("Output", "Where and how the label images are written."),
    "blocks": ("Blocks", "How the image is cut into blocks."),
    "segmentation": ("Segmentation and stitching", "The segmenter and how its per-block labels are joined."),
    "threshold backend": ("Threshold backend", "Options of --backend threshold."),
    "callable backend": ("Callable backend", "Options of --backend callable."),
    "cellpose backend": ("Cellpose backend", "Options of --backend cellpose."),
    "running": ("Running", "How the work is split into tasks."),
    "report": ("Report", "The seam QC and its pictures."),
    "containers": ("Containers", "Images of the container profiles."),
    "example": ("Example", "The built-in test image."),
}
#: which steps of the pipeline receive a parameter given to the pipeline
_PIPELINE_STEPS = {step: step for step in ("plan-blocks", "segment-block", "face-pairs", "resolve", "predict-flows",
                                           "follow-flows", "seed-flows", "assign-flows", "apply-lut", "finalize")}


def _schema_type(p: Param) -> dict[str, Any]:
    if p.kind == "bool":
        return {"type": "boolean"}
    if p.kind == "int" and not p.choices:
        return {"type": "integer"}
    if p.kind == "float" and not p.choices:
        return {"type": "number"}
    return {"type": "string"}


def nextflow_schema() -> dict[str, Any]:
    """``nextflow_schema.json``: the pipeline's parameters (nf-schema, JSON Schema
    draft 2020-12).  Each property that a step receives carries the annotation
    ``x-pystitch: {steps, flag}``; the others are the pipeline's own."""
    defs: dict[str, Any] = {}
    for p in PARAMS:
        if not p.nextflow or p.positional:
            continue
        group = p.group
        title, description = _SCHEMA_GROUPS[group]
        key = re.sub(r"\W+", "_", group) + "_options"
        entry = defs.setdefault(key, {"title": title, "type": "object", "description": description,
                                      "required": [], "properties": {}})
        prop: dict[str, Any] = _schema_type(p)
        prop["description"] = p.help[0].upper() + p.help[1:] + "."
        if p.help_text:
            prop["help_text"] = p.help_text
        default = p.default_for(PIPELINE)
        if default is not None:
            prop["default"] = default
        if p.kind == "str" and p.choices:
            prop["enum"] = list(p.pipeline_choices or p.choices)
        if p.kind == "shape":
            prop["pattern"] = _SHAPE if not p.choices else rf"^(\d+(\s*,\s*\d+){{0,2}}|{'|'.join(p.choices)})$"
        if p.kind in ("int", "float") and p.choices:  # a number or a word: a string of either
            number = r"\d+" if p.kind == "int" else r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?"
            prop["pattern"] = rf"^({number}|{'|'.join(p.choices)})$"
            if "default" in prop:
                prop["default"] = str(prop["default"])
        if p.kind in ("int", "float") and not p.choices:
            if p.minimum is not None:
                prop["minimum"] = p.minimum if p.kind == "float" else int(p.minimum)
            if p.maximum is not None:
                prop["maximum"] = p.maximum if p.kind == "float" else int(p.maximum)
        if p.path_format:
            prop["format"] = p.path_format
        steps = [s for s in p.commands if s in _PIPELINE_STEPS]
        if steps:
            prop["x-pystitch"] = {"steps": steps, "flag": p.flag, **({"backend": p.backend} if p.backend else {}),
                                  **({"sample_column": True} if p.sample_column else {})}
        if p.required and (PIPELINE in p.commands or default is None) and p.name in ("input",):
            entry["required"].append(p.name)
        entry["properties"][p.name] = prop
    for entry in defs.values():
        if not entry["required"]:
            del entry["required"]
    # options required with their backend: {if: backend is X, then: required [...]}
    rules = [{"if": {"properties": {"backend": {"const": b}}, "required": ["backend"]},
              "then": {"required": [p.name for p in backend_options(b) if p.required and p.nextflow]}}
             for b in BACKENDS if any(p.required and p.nextflow for p in backend_options(b))]
    # the flows rule follows Cellpose's flows (plan-blocks says the same, later)
    rules.append({"if": {"properties": {"rule": {"const": "flows"}}, "required": ["rule"]},
                  "then": {"properties": {"backend": {"const": "cellpose"}}, "required": ["backend"]}})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "pystitch pipeline parameters",
        "description": "Segment images larger than memory block by block and stitch the labels into one image.",
        "type": "object",
        "$defs": defs,
        "allOf": [{"$ref": f"#/$defs/{key}"} for key in defs] + rules,
    }


def nextflow_schema_text() -> str:
    return json.dumps(nextflow_schema(), indent=4, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pystitch.params > nextflow_schema.json``"""
    import sys

    sys.stdout.write(nextflow_schema_text())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
