"""The command-line interfaces: thin shells over the step functions.

Every command's options come from :mod:`pystitch.params` (one definition of
each parameter): the parser, ``--help`` and the checks.  A command parses
its arguments, configures logging, calls one library function and exits.

* Flags are kebab-case (``--block-shape``); the snake_case spelling is
  accepted too.  Flags of on/off settings take an optional value:
  ``--overwrite``, ``--overwrite false``, ``--no-overwrite``.
* ``--help`` prints to stdout and exits 0; a misspelt flag is named with the
  closest known one (``did you mean --workers?``), exit status 2.
* Errors a user can cause are one line on stderr, exit status 1; set
  ``PYSTITCH_DEBUG=1`` for the traceback.

Global flags (any command): ``-q/--quiet`` (warnings only), ``-v/--verbose``
(per-block messages), ``--log-level LEVEL``, ``--version``, ``-h/--help``.
"""

from __future__ import annotations

import argparse
import errno
import glob
import json
import logging
import os
import re
import shutil
import sys
import textwrap
from typing import Any, Callable, Sequence

from . import params as P
from ._version import __version__
from .errors import PystitchError

log = logging.getLogger("pystitch")

SUMMARIES = {
    "run": "Run every step on this machine (parallel processes, resumable) and print the output path.",
    "plan-blocks": "Check the input, cut it into blocks, scan it once, write plan.json (its path is printed).",
    "segment-block": "Segment blocks of a plan and write their labels to the staging store "
                     "(one manifest per block, written last).",
    "face-pairs": "Find the objects of neighbouring blocks that are one object (compares each block with its "
                  "neighbours of larger id with the plan's rule).",
    "resolve": "Join all pairs into final ids (union-find) and write the lut store; create the output array.",
    "predict-flows": "The flows rule's first step: Cellpose's network over the whole image, block by block, into "
                     "the plan's flow store (the only step of the rule that wants a GPU).",
    "follow-flows": "The flows rule's second step: Cellpose's dynamics on the flow store (trajectories, global "
                    "seeds, mask filters); write the staging labels and the lut store; create the output array. "
                    "With --blocks, only the trajectories of those blocks (a batch task before the whole step).",
    "seed-flows": "The flows rule, between follow-flows --blocks and assign-flows: the seeds of the whole image "
                  "from every block's end points, grown into the region map that assign-flows labels blocks from.",
    "assign-flows": "The flows rule, between seed-flows and follow-flows: label blocks by the seed region their end "
                    "points fall in (their staging labels and per-object stats; follow-flows then filters whole "
                    "objects).",
    "apply-lut": "Write the final ids of blocks into the output and their region statistics.",
    "finalize": "Regions table, seam QC, pictures and summary; publish the output (its path and the report's "
                "are printed).",
    "batches": "Print the blocks that need work as batches, one per line (e.g. 0-63), for a workflow to fan out.",
    "example": "Write the built-in synthetic example image (OME-Zarr) and print its path.",
    "convert": "Convert an image (TIFF planes, OME-TIFF, a vendor file, zarr) to OME-Zarr with a pyramid, block by "
               "block in parallel, resumable; print its path.",
}


class UsageError(Exception):
    """A command line that cannot be parsed (exit status 2)."""


# --------------------------------------------------------------------------- parsing


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print usage and exit
        raise UsageError(message)


def _bool_like(token: str) -> bool:
    return token.strip().lower() in P._TRUE + P._FALSE


def normalise_argv(argv: Sequence[str], params: Sequence[P.Param]) -> list[str]:
    """Spellings the parser does not know by itself: ``--block_shape`` ->
    ``--block-shape``; on/off flags as ``--x=true|false`` (``--x``, ``--x
    false``, ``--no-x`` and ``--nox`` alike)."""
    flags = {p.flag: p for p in params}
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("--") or token == "--":
            out.append(token)
            continue
        name, eq, value = token.partition("=")
        name = "--" + name[2:].replace("_", "-")
        param = flags.get(name)
        if param is None and name.startswith("--no"):
            negated = flags.get("--" + name[len("--no"):].lstrip("-"))
            if negated is not None and negated.kind == "bool" and not eq:
                out.append(f"{negated.flag}=false")
                continue
        if param is not None and param.kind == "bool" and not eq:
            if i < len(argv) and _bool_like(argv[i]):
                value, i = argv[i], i + 1
            else:
                value = "true"
            out.append(f"{name}={value}")
            continue
        out.append(name + eq + value)
    return out


def build_parser(command: str, params: Sequence[P.Param]) -> _Parser:
    parser = _Parser(prog=command, add_help=False, allow_abbrev=False)
    for p in params:
        if p.positional:
            parser.add_argument(p.name, nargs=None if p.required else "?", default=argparse.SUPPRESS)
        else:
            parser.add_argument(p.flag, dest=p.name, default=argparse.SUPPRESS)
    return parser


def parse(command: str, argv: Sequence[str]) -> dict[str, Any]:
    """The options given on the command line (unparsed text values)."""
    params = P.for_command(command)
    args = normalise_argv(argv, params)
    try:
        ns = build_parser(command, params).parse_args(args)
    except UsageError as exc:
        raise UsageError(_explain(str(exc), params)) from None
    return vars(ns)


def _explain(message: str, params: Sequence[P.Param]) -> str:
    """argparse's message, with the closest known flag for an unknown one."""
    m = re.match(r"unrecognized arguments: (.*)", message)
    if m:
        first = m.group(1).split()[0]
        if first.startswith("-"):
            name = first.split("=")[0]
            flags = [p.flag for p in params if not p.positional]
            close = P.difflib.get_close_matches(name.replace("_", "-"), flags, n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]}?" if close else ""
            return f"unknown option {name}.{hint}"
        return f"unexpected argument {first!r} (every argument after the positional ones is --name value)."
    m = re.match(r"the following arguments are required: (.*)", message)
    if m:
        return f"missing {m.group(1).upper()}."
    m = re.match(r"argument (--[\w-]+): expected one argument", message)
    if m:
        return f"{m.group(1)} needs a value."
    return message


# --------------------------------------------------------------------------- help


def help_text(command: str, prog: str) -> str:
    params = P.for_command(command)
    width = min(100, max(60, shutil.get_terminal_size((100, 24)).columns))
    positional = [p for p in params if p.positional]
    usage = " ".join([prog] + [p.name.upper() if p.required else f"[{p.name.upper()}]" for p in positional]
                     + ["[options]"])
    lines = [f"usage: {usage}", "", *textwrap.wrap(SUMMARIES[command], width), ""]
    if positional:
        lines.append("arguments:")
        for p in positional:
            lines += _entry(p.name.upper(), p.help, width)
        lines.append("")
    groups: dict[str, list[P.Param]] = {}
    for p in params:
        if not p.positional:
            groups.setdefault(p.group, []).append(p)
    for group, members in groups.items():
        lines.append(f"{group} options:" if not group.endswith("backend") else f"{group} options "
                     f"(with --backend {members[0].backend}):")
        for p in members:
            lines += _entry(_usage(p), _help_with_default(p, command), width)
        lines.append("")
    lines.append("global options:")
    for flag, text in (("-h, --help", "show this help and exit"), ("--version", "print the version and exit"),
                       ("-q, --quiet", "log warnings and errors only"),
                       ("-v, --verbose", "log a line per block and more details"),
                       ("--log-level LEVEL", "DEBUG, INFO (default), WARNING or ERROR")):
        lines += _entry(flag, text, width)
    return "\n".join(lines) + "\n"


def _usage(p: P.Param) -> str:
    if p.kind == "bool":
        return f"{p.flag}, --no-{p.flag[2:]}"
    metavar = p.metavar or ("|".join(p.choices) if p.kind == "str" and p.choices else
                            {"int": "N", "float": "X", "paths": "PATHS"}.get(p.kind, p.name.upper()))
    return f"{p.flag} {metavar}"


def _help_with_default(p: P.Param, command: str) -> str:
    default = p.default_for(command)
    text = p.help_for(command)
    if p.kind == "bool" and default is not None:
        return f"{text} (default: {'on' if default else 'off'})"
    if default is not None and p.kind != "bool":
        return f"{text} (default: {default})"
    return text + (" (required)" if p.required_in(command) else "")


def _entry(head: str, text: str, width: int) -> list[str]:
    indent = 28
    body = textwrap.wrap(text, width - indent) or [""]
    if len(head) + 4 > indent:
        return ["  " + head] + [" " * indent + line for line in body]
    return ["  " + head.ljust(indent - 2) + body[0]] + [" " * indent + line for line in body[1:]]


# --------------------------------------------------------------------------- coercion


def _paths(value: Any) -> list[str] | None:
    """Paths from one path, a list, or text with comma/space separated paths or globs."""
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    out: list[str] = []
    for item in items:
        text = str(item)
        if os.path.exists(text):
            out.append(text)
            continue
        for part in (p for p in re.split(r"[,\s]+", text) if p):
            matches = sorted(glob.glob(part))
            out.extend(matches or [part])
    return out


def _require(options: dict, name: str, what: str) -> Any:
    if options.get(name) is None:
        raise PystitchError(f"Expected --{P.flag_name(name)}: {what}.")
    return options[name]


# --------------------------------------------------------------------------- commands


def _step_progress(step: str, plan: Any, blocks: Any) -> Any:
    """The progress of a step CLI over ``blocks`` of ``plan``: a bar on a
    terminal, else log records (a workflow engine's task log keeps stderr)."""
    from .grid import parse_block_ids
    from .plan import Plan
    from .progress import Progress, stderr_is_terminal

    plan = Plan.load(plan)
    return Progress(step, len(parse_block_ids(blocks, plan.n_blocks)), bar=stderr_is_terminal())


def _with_progress(step: str, plan: Any, blocks: Any, fn: Callable[[], Any]) -> Any:
    from .progress import reporting

    with _step_progress(step, plan, blocks) as progress, reporting(progress.add):
        result = fn()
        progress.task_done(progress.total)  # every block is done (the last record, off a terminal)
        if not progress.records:
            log.info("%s", progress.line())
    return result


def cmd_plan_blocks(o: dict) -> None:
    from .runner import Scheduler, usable_cores
    from .steps.plan_blocks import plan_blocks

    from .storage.images import ImageSpec

    core, backend = P.bind("plan-blocks", o)
    image, output = ImageSpec.from_options(core.pop("image"), core), core.pop("output")
    workers = core.pop("workers")
    with Scheduler(usable_cores() if workers == "auto" else workers, progress=True) as scheduler:
        plan = plan_blocks(image, output, **core, backend_options=backend, map_tasks=scheduler.map_tasks("scan"))
    print(plan.plan_path)


def cmd_segment_block(o: dict) -> None:
    from .steps.segment_block import segment_blocks

    core, _ = P.bind("segment-block", o)
    blocks = _require(core, "blocks", "one id (7), a range (0-9), a list (0,3,5) or all")
    _with_progress("segment", core["plan"], blocks, lambda: segment_blocks(
        core["plan"], blocks, manifest_dir=core["manifest_dir"], skip_existing=core["skip_existing"],
        device=core["device"], allow_cpu_fallback=core["allow_cpu_fallback"]))


def cmd_face_pairs(o: dict) -> None:
    from .steps.face_pairs import face_pairs

    core, _ = P.bind("face-pairs", o)
    blocks = _require(core, "blocks", "one id (7), a range (0-9), a list (0,3,5) or all")
    _with_progress("face-pairs", core["plan"], blocks, lambda: face_pairs(
        core["plan"], blocks, manifests=_paths(core["manifests"]), out=core["out"]))


def cmd_resolve(o: dict) -> None:
    from .steps.resolve import resolve

    core, _ = P.bind("resolve", o)
    resolve(core["plan"], manifests=_paths(core["manifests"]), pairs=_paths(core["pairs"]), out=core["out"])


def cmd_predict_flows(o: dict) -> None:
    from .steps.flows_rule import predict_step

    core, _ = P.bind("predict-flows", o)
    blocks = _require(core, "blocks", "one id (7), a range (0-9), a list (0,3,5) or all")
    summary = predict_step(core["plan"], blocks, device=core["device"], allow_cpu_fallback=core["allow_cpu_fallback"])
    print(json.dumps(summary))


def cmd_follow_flows(o: dict) -> None:
    from .steps.flows_rule import follow_step

    core, _ = P.bind("follow-flows", o)
    summary = follow_step(core["plan"], core["blocks"], out=core["out"])
    if core["blocks"] is not None:  # a task of some blocks: what it did, for the workflow
        print(json.dumps(summary))


def cmd_seed_flows(o: dict) -> None:
    from .steps.flows_rule import seed_step

    core, _ = P.bind("seed-flows", o)
    print(json.dumps(seed_step(core["plan"])))


def cmd_assign_flows(o: dict) -> None:
    from .steps.flows_rule import assign_step

    core, _ = P.bind("assign-flows", o)
    blocks = _require(core, "blocks", "one id (7), a range (0-9), a list (0,3,5) or all")
    print(json.dumps(assign_step(core["plan"], blocks)))


def cmd_apply_lut(o: dict) -> None:
    from .steps.apply_lut import apply_lut

    core, _ = P.bind("apply-lut", o)
    blocks = _require(core, "blocks", "one id (7), a range (0-9), a list (0,3,5) or all")
    _with_progress("apply-lut", core["plan"], blocks, lambda: apply_lut(
        core["plan"], blocks, lut=core["lut"], out=core["out"]))


def cmd_finalize(o: dict) -> None:
    from .steps.finalize import finalize

    core, _ = P.bind("finalize", o)
    faces = None if core["qc_faces"] == "all" else core["qc_faces"]
    summary = finalize(core["plan"], lut=core["lut"], stats=_paths(core["stats"]), overwrite=core["overwrite"],
                       trace=core["trace"], qc_faces=faces, pictures=core["pictures"], grid=core["grid"],
                       output=core["output"], report_dir=core["report_dir"], published_in=core["published_in"])
    print(summary["output"])
    print(summary["report_dir"])


def cmd_run(o: dict) -> None:
    from .runner import run

    core, backend = P.bind("run", o)
    summary = run(core.pop("image"), core.pop("output"), **core, **backend)
    print(summary["output"])


def cmd_batches(o: dict) -> None:
    from .grid import batches, format_block_ids
    from .plan import Plan

    core, _ = P.bind("batches", o)
    plan = Plan.load(core["plan"])
    for group in batches(plan.work_blocks(), core["size"]):
        print(format_block_ids(group))


def cmd_example(o: dict) -> None:
    from .example import write_example
    from .grid import parse_shape

    core, _ = P.bind("example", o)
    text = str(core["shape"]) if not isinstance(core["shape"], (list, tuple)) else ",".join(map(str, core["shape"]))
    ndim = len([t for t in re.split(r"[,x\s]+", text) if t])
    print(write_example(core["path"], parse_shape(text, ndim, "--shape"), seed=core["seed"],
                        overwrite=core["overwrite"]))


def cmd_convert(o: dict) -> None:
    from .conversion import convert

    core, _ = P.bind("convert", o)
    print(convert(core.pop("image"), core.pop("target"), **core)["output"])


COMMANDS: dict[str, Callable[[dict], None]] = {
    "run": cmd_run,
    "plan-blocks": cmd_plan_blocks,
    "segment-block": cmd_segment_block,
    "face-pairs": cmd_face_pairs,
    "resolve": cmd_resolve,
    "predict-flows": cmd_predict_flows,
    "follow-flows": cmd_follow_flows,
    "seed-flows": cmd_seed_flows,
    "assign-flows": cmd_assign_flows,
    "apply-lut": cmd_apply_lut,
    "finalize": cmd_finalize,
    "batches": cmd_batches,
    "example": cmd_example,
    "convert": cmd_convert,
}


# --------------------------------------------------------------------------- entry points


def _global_flags(argv: list[str]) -> tuple[list[str], str, bool, bool]:
    """Strip the global flags: ``(rest, log level, help, version)``."""
    level = os.environ.get("PYSTITCH_LOG_LEVEL", "INFO").upper()
    rest: list[str] = []
    want_help = want_version = False
    it = iter(argv)
    for arg in it:
        if arg in ("--quiet", "-q"):
            level = "WARNING"
        elif arg in ("--verbose", "-v"):
            level = "VERBOSE"
        elif arg == "--log-level":
            level = next(it, "INFO").upper()
        elif arg.startswith("--log-level="):
            level = arg.split("=", 1)[1].upper()
        elif arg in ("--help", "-h"):
            want_help = True
        elif arg == "--version":
            want_version = True
        else:
            rest.append(arg)
    return rest, level, want_help, want_version


def _setup_logging(level: str) -> None:
    """``--verbose``: pystitch's own DEBUG lines (a line per block, also from
    worker processes), other libraries at INFO; ``--log-level DEBUG``: everything."""
    verbose = level == "VERBOSE"
    if verbose:
        level = "INFO"
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise UsageError(f"--log-level expects DEBUG, INFO, WARNING or ERROR. Got {level!r} instead.")
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose:
        logging.getLogger("pystitch").setLevel(logging.DEBUG)
    if level != "DEBUG":  # "Found credentials in environment variables", at every URL opened
        for name in ("botocore.credentials", "aiobotocore.credentials"):
            logging.getLogger(name).setLevel(logging.WARNING)


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error: what failed, where, and why."""
    name = errno.errorcode.get(exc.errno or 0, "")
    where = f" {exc.filename}" if exc.filename else ""
    reason = exc.strerror or str(exc)
    return f"Could not access{where}: {reason}" + (f" ({name})" if name else "") + "."


def _dispatch(command: str, argv: list[str], prog: str) -> int:
    try:
        rest, level, want_help, want_version = _global_flags(argv)
        if want_version:
            print(__version__)
            return 0
        if want_help:
            sys.stdout.write(help_text(command, prog))
            return 0
        _setup_logging(level)
        options = parse(command, rest)
    except UsageError as exc:
        print(f"{prog}: {exc} See {prog} --help.", file=sys.stderr)
        return 2
    try:
        from .storage import remote
        from .storage.zarrs import set_codec_threads

        set_codec_threads()   # the cores of this task, not the node's (a cluster job, a container)
        with remote.using(options.get("storage_options")):  # every URL a step opens
            COMMANDS[command](options)
    except PystitchError as exc:
        if os.environ.get("PYSTITCH_DEBUG"):
            raise
        log.error("%s", exc)
        return 1
    except OSError as exc:
        if os.environ.get("PYSTITCH_DEBUG"):
            raise
        log.error("%s", describe_os_error(exc))
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; run the same command again to continue where it stopped.")
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    """``pystitch <command> ...``: every step plus ``run``, ``batches`` and ``example``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        lines = ["usage: pystitch COMMAND [arguments] [options]", "",
                 "Segment images larger than memory block by block and stitch the labels into one image.", "",
                 "commands:"]
        for name in COMMANDS:
            lines += _entry(name, SUMMARIES[name], 100)
        lines += ["", "pystitch COMMAND --help shows the options of a command; pystitch --version the version."]
        print("\n".join(lines))
        return 0 if args else 2
    if args[0] == "--version":
        print(__version__)
        return 0
    command = args[0]
    if command not in COMMANDS:
        close = P.difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        print(f"pystitch: unknown command {command!r}.{hint} Commands: {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    return _dispatch(command, args[1:], f"pystitch {command}")


def _single(name: str) -> Callable[[list[str] | None], int]:
    def entry(argv: list[str] | None = None) -> int:
        return _dispatch(name, list(sys.argv[1:] if argv is None else argv), name)
    entry.__name__ = name.replace("-", "_") + "_main"
    return entry


plan_blocks_main = _single("plan-blocks")
segment_block_main = _single("segment-block")
face_pairs_main = _single("face-pairs")
resolve_main = _single("resolve")
predict_flows_main = _single("predict-flows")
follow_flows_main = _single("follow-flows")
seed_flows_main = _single("seed-flows")
assign_flows_main = _single("assign-flows")
apply_lut_main = _single("apply-lut")
finalize_main = _single("finalize")
