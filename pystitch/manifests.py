"""Block manifests: what each block's segmentation produced.

``segment-block`` writes ``block-<id>.json`` for every block AFTER its labels
are in the staging store, so a block without a manifest is unfinished and is
never consumed.  Later steps take manifests from a directory, files, or JSON
Lines files of concatenated manifests (what a workflow engine gathers).

A manifest records what the block wrote to the staging store: for each
piece (``core``, ``face-<axis>-<side>``) its foreground voxels and a CRC32 of
its labels.  Readers check what they read against it, and its
:func:`digest` stamps every result computed from the block (pairs, lut), so
a block segmented again later is never silently mixed with results of its
earlier segmentation.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from pathlib import Path
from typing import Any, Iterable

from ._version import __version__
from .errors import StagingError
from .plan import Plan
from .storage.files import atomic_write_json, check_plan_hash, read_json, step_files
from .storage.staging import MAX_LOCAL_LABELS


def manifest_name(block: int) -> str:
    return f"block-{block:06d}.json"


def write_manifest(directory: str | os.PathLike, plan: Plan, block: int, **fields: Any) -> Path:
    doc = {"plan_hash": plan.hash, "block": int(block), "pystitch": __version__, **fields}
    # one line per manifest: several concatenate into valid JSON Lines
    return atomic_write_json(Path(directory) / manifest_name(block), doc, indent=None)


def _check_manifest(doc: Any, plan: Plan, where: str) -> dict:
    if not isinstance(doc, dict) or "block" not in doc or "n_labels" not in doc:
        raise StagingError(f"{where} is not a block manifest (expected fields block and n_labels).")
    check_plan_hash(doc.get("plan_hash"), plan.hash, where)
    block, n = doc["block"], doc["n_labels"]
    if not isinstance(block, int) or not 0 <= block < plan.n_blocks:
        raise StagingError(f"{where} names block {block!r}; the plan has blocks 0..{plan.n_blocks - 1}.")
    if not isinstance(n, int) or not 0 <= n <= MAX_LOCAL_LABELS:
        raise StagingError(f"{where}: n_labels {n!r} is not a label count.")
    return doc


#: where a block id can stand in a manifest line (json.dumps' separators, or any spacing)
_BLOCK_FIELD = re.compile(rb'"block"\s*:\s*(\d+)')
_MANIFEST_FILE = re.compile(r"block-(\d+)\.json")


def read_manifests(plan: Plan, source: Any = None, blocks: Iterable[int] | None = None) -> dict[int, dict]:
    """Read block manifests from a directory, files, or JSON Lines files
    (concatenated manifests).  ``source`` None means the plan's manifest dir.

    ``blocks``: keep only the manifests of these blocks.  A JSON Lines file is
    then streamed and a line is parsed only when a ``"block": <id>`` in it
    names one of them, so a task that needs a few blocks of a large image
    neither parses nor holds the manifests of every other block (their lines
    are checked by the steps that read them)."""
    wanted = None if blocks is None else {int(b) for b in blocks}
    found: dict[int, dict] = {}
    for path in step_files(source, plan.manifest_dir, "block-*.json"):
        if not path.exists():
            raise StagingError(f"Manifest not found: {path}")
        if path.suffix == ".jsonl":
            with open(path, "rb") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    if wanted is not None and not any(int(m) in wanted for m in _BLOCK_FIELD.findall(line)):
                        continue
                    try:
                        doc = json.loads(line)
                    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                        raise StagingError(f"{path}:{lineno} is not valid JSON ({exc}); corrupt manifest.") from exc
                    doc = _check_manifest(doc, plan, f"{path}:{lineno}")
                    if wanted is None or doc["block"] in wanted:
                        _add(found, doc, f"{path}:{lineno}")
        else:
            named = _MANIFEST_FILE.fullmatch(path.name)
            if wanted is not None and named and int(named.group(1)) not in wanted:
                continue
            doc = _check_manifest(read_json(path, "manifest"), plan, str(path))
            if wanted is None or doc["block"] in wanted:
                _add(found, doc, str(path))
    return found


def _add(found: dict[int, dict], doc: dict, where: str) -> None:
    block = doc["block"]
    if block in found and found[block]["n_labels"] != doc["n_labels"]:
        raise StagingError(f"Two different manifests for block {block} (one in {where}).")
    found[block] = doc


def require_manifests(plan: Plan, manifests: dict[int, dict], blocks: Iterable[int], step: str) -> None:
    """Every listed non-empty block must have a manifest (finished segmentation)."""
    missing = [b for b in blocks if b not in manifests and b not in plan.empty_set]
    if missing:
        shown = ", ".join(str(b) for b in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise StagingError(
            f"{step} needs the segmentation of {len(missing)} block(s) that have no manifest: {shown}. "
            "Run segment-block for them first (a block without a manifest is unfinished)."
        )


def block_label_count(plan: Plan, manifests: dict[int, dict], block: int) -> int:
    if block in plan.empty_set and block not in manifests:
        return 0
    return int(manifests[block]["n_labels"])


def local_manifest_valid(plan: Plan, directory: str | os.PathLike, block: int) -> bool:
    path = Path(directory) / manifest_name(block)
    if not path.exists():
        return False
    try:
        _check_manifest(read_json(path, "manifest"), plan, str(path))
    except Exception:
        return False
    return True


def digest(doc: dict) -> int:
    """A number that changes whenever what the block wrote changes."""
    key = {k: doc.get(k) for k in ("block", "n_labels", "n_halo_labels", "pieces")}
    return zlib.crc32(json.dumps(key, sort_keys=True).encode())


def piece(manifests: dict[int, dict], block: int, name: str) -> dict | None:
    """The manifest's record of one piece of a block (None: not recorded)."""
    doc = manifests.get(block)
    return None if doc is None else (doc.get("pieces") or {}).get(name)


def check_digests(plan: Plan, manifests: dict[int, dict], recorded: Any, where: str, redo: str) -> None:
    """``recorded`` ((k, 2) block, digest) must match the current manifests."""
    for block, value in (recorded if recorded is not None else []):
        block = int(block)
        if block in manifests and digest(manifests[block]) != int(value):
            raise StagingError(
                f"{where} was computed from an earlier segmentation of block {block}, which has been segmented "
                f"again since. Run {redo} again for it."
            )
