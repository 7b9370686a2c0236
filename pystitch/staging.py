"""The staging store and the block manifests.

Layout of ``<work_dir>/staging.zarr`` (a zarr v3 group stamped with the plan
hash):

``core``
    uint32 labels, image shape, chunks = block core: every block writes its
    core labels (local ids ``1..n``) into exactly one chunk, so blocks never
    write the same chunk.
``face-<axis>-lo`` / ``face-<axis>-hi``
    uint32, one chunk per block (shape ``grid * slab``): the block's labels on
    the slab ``2*halo`` thick across its low / high face on ``axis``, the
    frame's extent on the other axes.  These hold what the block predicted in
    its halo (ids ``n+1..m`` are objects seen only there) and are all
    ``face-pairs`` reads.

A manifest ``block-<id>.json`` is written LAST for each block, so a block
without a manifest is unfinished and is never consumed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import zarr

from ._version import __version__
from .errors import StagingError
from .io import create_group_array, read_concurrently, write_concurrently
from .plan import Plan
from .storage import atomic_write_json, check_plan_hash, read_json, step_files

STAGING_DTYPE = np.uint32
#: local ids are stored as uint32: at most this many objects per block
MAX_LOCAL_LABELS = int(np.iinfo(STAGING_DTYPE).max)
SIDES = ("lo", "hi")


def slab_name(axis: int, side: str) -> str:
    return f"face-{axis}-{side}"


def create_staging(plan: Plan) -> zarr.Group:
    group = zarr.open_group(store=plan.staging_uri, mode="w", attributes={"plan_hash": plan.hash})
    create_group_array(group, "core", plan.shape, plan.block_shape, STAGING_DTYPE)
    for axis in plan.split_axes():
        slab = plan.slab_shape(axis)
        shape = tuple(g * s for g, s in zip(plan.grid, slab))
        for side in SIDES:
            create_group_array(group, slab_name(axis, side), shape, slab, STAGING_DTYPE)
    return group


class Staging:
    """Read/write access to one plan's staging store."""

    def __init__(self, plan: Plan, mode: str = "r") -> None:
        self.plan = plan
        try:
            self.group = zarr.open_group(store=plan.staging_uri, mode="r+" if mode != "r" else "r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
            raise StagingError(f"Staging store not found: {plan.staging_uri} (run plan-blocks first).") from exc
        check_plan_hash(self.group.attrs.get("plan_hash"), plan.hash, plan.staging_uri)
        self.core = self.group["core"]
        self._slabs = {(a, side): self.group[slab_name(a, side)] for a in plan.split_axes() for side in SIDES}

    def _slab_region(self, block: int, axis: int) -> tuple[slice, ...]:
        idx = self.plan.block_index(block)
        slab = self.plan.slab_shape(axis)
        return tuple(slice(i * s, (i + 1) * s) for i, s in zip(idx, slab))

    def write_block(self, block: int, labels: np.ndarray, ext: Sequence[slice]) -> None:
        """Store a block's local labels over its extended region ``ext``."""
        plan = self.plan
        core = plan.core(block)
        inner = tuple(slice(c.start - e.start, c.stop - e.start) for c, e in zip(core, ext))
        writes = [(self.core, core, labels[inner])]
        idx = plan.block_index(block)
        for axis in plan.split_axes():
            for side in SIDES:
                if (side == "lo" and idx[axis] == 0) or (side == "hi" and idx[axis] == plan.grid[axis] - 1):
                    continue  # no neighbour on that side
                origin = plan.slab_origin(block, axis, side)
                shape = plan.slab_shape(axis)
                slab = np.zeros(shape, dtype=STAGING_DTYPE)
                src, dst = [], []
                for o, n, e in zip(origin, shape, ext):
                    lo, hi = max(o, e.start), min(o + n, e.stop)
                    src.append(slice(lo - e.start, hi - e.start))
                    dst.append(slice(lo - o, hi - o))
                slab[tuple(dst)] = labels[tuple(src)]
                writes.append((self._slabs[axis, side], self._slab_region(block, axis), slab))
        write_concurrently(writes)

    def read_slab(self, block: int, axis: int, side: str) -> np.ndarray:
        return self._slabs[axis, side][self._slab_region(block, axis)]

    def read_slabs(self, keys: Sequence[tuple[int, int, str]]) -> list[np.ndarray]:
        """Several (block, axis, side) slabs read concurrently."""
        return read_concurrently([(self._slabs[axis, side], self._slab_region(block, axis))
                                  for block, axis, side in keys])

    def read_core(self, block: int) -> np.ndarray:
        return self.core[self.plan.core(block)]


# --------------------------------------------------------------------------- manifests


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


def read_manifests(plan: Plan, source: Any = None) -> dict[int, dict]:
    """Read block manifests from a directory, files, or JSON Lines files
    (concatenated manifests).  ``source`` None means the plan's manifest dir."""
    found: dict[int, dict] = {}
    for path in step_files(source, plan.manifest_dir, "block-*.json"):
        if not path.exists():
            raise StagingError(f"Manifest not found: {path}")
        if path.suffix == ".jsonl":
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        doc = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise StagingError(f"{path}:{lineno} is not valid JSON ({exc}); corrupt manifest.") from exc
                    _add(found, _check_manifest(doc, plan, f"{path}:{lineno}"), f"{path}:{lineno}")
        else:
            _add(found, _check_manifest(read_json(path, "manifest"), plan, str(path)), str(path))
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
