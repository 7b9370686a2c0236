"""Memory, time and cores of one workflow task, from the plan.

A task of a batch step (segment-block, face-pairs, apply-lut) handles its
blocks one after the other, so its memory follows the size of ONE block with
its halo, never the image or the batch: ``base + bytes_per_voxel x voxels``.
Its time follows the voxels of the whole batch.  The flows rule's predict-flows
batches and its follow-flows (one task per image) are bounded by the image's
voxels (:func:`flows_estimate`; seed-flows, once per image too, as
follow-flows); its trajectories, ``follow-flows --blocks`` (``follow-blocks``
here), and its assignment, ``assign-flows --blocks`` (``assign-blocks``),
hold one block's window at a time (:func:`follow_blocks_estimate`).  A workflow engine asks for
this much per task (the Nextflow pipeline does, on every executor), so that a
cluster can pack many small tasks instead of reserving a flat 16 GB each.

The figures were measured with ``benchmarks/task_memory.py`` (peak RSS of the
step commands on batches of interior blocks at two block sizes, uint16 input,
threshold backend; results in benchmarks/results/task_memory.json) and, for
Cellpose, with ``benchmarks/cellpose_memory.py`` (the model behind
``--block-shape auto``).  Requests add a margin: memory x 1.25 with a 256 MB
floor, time x 10 with a 10-minute floor (clusters differ in speed and load; a task that runs
out of either is retried with twice, then three times as much).

    python -m pystitch.resources PLAN [BLOCKS_PER_TASK]     # prints the estimates as JSON
"""

from __future__ import annotations

import json
import math
import os
import sys

from .backends.cellpose_backend import BASE_BYTES as CELLPOSE_BASE_BYTES
from .backends.cellpose_backend import BYTES_PER_VOXEL as CELLPOSE_BYTES_PER_VOXEL
from .plan import Plan

MIB = 2 ** 20
#: measured: (base bytes, bytes per voxel of one block with its halo, seconds per voxel)
MEASURED = {
    "segment-block": (57 * MIB, 100.0, 0.34e-6),
    "face-pairs": (101 * MIB, 11.2, 0.13e-6),
    "apply-lut": (71 * MIB, 30.1, 0.13e-6),
}
#: Cellpose on a CPU, planes stitched in 3-D (benchmarks/results/cellpose-memory-*-cpu.md); a GPU is faster
CELLPOSE_SECONDS_PER_VOXEL = 10e-6
#: a callable backend runs unknown code: this many times the threshold backend's figures
CALLABLE_FACTOR = 4.0
MEMORY_MARGIN = 1.25
MIN_MB = 256  # below the fitted range: a step's process alone holds ~80 MB (imports)
TIME_FACTOR = 10.0
MIN_MINUTES = 10
STEPS = tuple(MEASURED)
#: the flows rule's per-image steps: bytes held per image voxel (at the network's scale 1) above the
#: process itself. predict, from what it holds (pystitch.steps.flows_rule): tile outputs, 3 float32 per
#: voxel and orientation; every tile is 62 bytes per voxel in 3-D, 36.8 held at once at 512^3 with 256^3
#: blocks, 8.9 at 2048^3 (benchmarks/results/flows-predict-held-2026-12-03.md); small images, whose forward
#: batches span whole planes, hold every tile. follow, measured
#: (benchmarks/results/flows-follow-memory-2026-12-03.md): about 4 at
#: 38 % foreground with its end points and seed labels in files, scaled to an image all foreground (the
#: histogram, seeds and statistics grow with the foreground); 2-D taken as 3-D
FLOWS_BYTES_PER_VOXEL = {"predict-flows": {2: 16.0, 3: 48.0}, "follow-flows": {2: 10.0, 3: 10.0}}
#: seconds per image voxel on a CPU: the network as segment-block's Cellpose figure, once per orientation;
#: the dynamics (200 steps of every foreground voxel)
FLOWS_SECONDS_PER_VOXEL = {"predict-flows": CELLPOSE_SECONDS_PER_VOXEL, "follow-flows": 5e-6}


#: follow-flows --blocks: bytes held per voxel of one block's window (core + halo), measured
#: (benchmarks/results/flows-follow-memory-2026-12-03.md): 115 at 38 % foreground above a 57 MB process,
#: about 47 for the flows and step field of the window and 350 per foreground voxel of the core; scaled
#: to a block all foreground (51 % of a 160^3 window), 225
FOLLOW_BLOCK_BYTES_PER_VOXEL = 230.0


def block_voxels(plan: Plan) -> int:
    """Voxels of the largest block with its halo (what one task holds at once)."""
    return math.prod(min(n, b + 2 * h) for n, b, h in zip(plan.shape, plan.block_shape, plan.halo))


def estimate(plan: Plan, step: str, blocks: int) -> dict:
    """``{"memory_mb", "minutes", "cpus"}`` to request for one task of ``step``
    that handles ``blocks`` blocks of ``plan``."""
    voxels = block_voxels(plan)
    base, per_voxel, seconds_per_voxel = MEASURED[step]
    cpus = 1 if step == "face-pairs" else 2
    backend = plan.backend["name"]
    if step == "segment-block":
        cpus = 1
        if backend == "cellpose":
            mode = "2-D" if len(plan.shape) == 2 else ("do_3D" if plan.backend.get("do_3D") else "planes")
            base, per_voxel = CELLPOSE_BASE_BYTES, CELLPOSE_BYTES_PER_VOXEL[mode]
            seconds_per_voxel, cpus = CELLPOSE_SECONDS_PER_VOXEL, 4
        elif backend != "threshold":
            base, per_voxel = base * CALLABLE_FACTOR, per_voxel * CALLABLE_FACTOR
            seconds_per_voxel *= CALLABLE_FACTOR
    memory = (base + per_voxel * voxels) * MEMORY_MARGIN
    seconds = seconds_per_voxel * voxels * max(1, int(blocks))
    return {
        "memory_mb": max(MIN_MB, int(math.ceil(memory / MIB / 64) * 64)),
        "minutes": int(max(MIN_MINUTES, math.ceil(seconds * TIME_FACTOR / 60))),
        "cpus": cpus,
    }


def flows_estimate(plan: Plan, step: str) -> dict:
    """``{"memory_mb", "minutes", "cpus"}`` of the one task of ``step``
    (predict-flows or follow-flows) for the whole image of ``plan``."""
    ndim = len(plan.shape)
    voxels = math.prod(plan.shape)
    orientations = 3 if ndim == 3 and step == "predict-flows" else 1
    memory = (CELLPOSE_BASE_BYTES + FLOWS_BYTES_PER_VOXEL[step][ndim] * voxels) * MEMORY_MARGIN
    seconds = FLOWS_SECONDS_PER_VOXEL[step] * voxels * orientations
    return {
        "memory_mb": max(MIN_MB, int(math.ceil(memory / MIB / 64) * 64)),
        "minutes": int(max(MIN_MINUTES, math.ceil(seconds * TIME_FACTOR / 60))),
        "cpus": 4 if step == "predict-flows" else 2,
    }


def follow_blocks_estimate(plan: Plan, blocks: int) -> dict:
    """``{"memory_mb", "minutes", "cpus"}`` of one ``follow-flows --blocks``
    task of ``blocks`` blocks: one block's window at a time."""
    memory = (CELLPOSE_BASE_BYTES + FOLLOW_BLOCK_BYTES_PER_VOXEL * block_voxels(plan)) * MEMORY_MARGIN
    seconds = FLOWS_SECONDS_PER_VOXEL["follow-flows"] * math.prod(plan.block_shape) * max(1, int(blocks))
    return {
        "memory_mb": max(MIN_MB, int(math.ceil(memory / MIB / 64) * 64)),
        "minutes": int(max(MIN_MINUTES, math.ceil(seconds * TIME_FACTOR / 60))),
        "cpus": 1,
    }


def resources(plan: Plan | str | os.PathLike, blocks_per_task: int) -> dict:
    """The estimate of every batch step for tasks of ``blocks_per_task`` blocks
    (and of the flows rule's per-image steps for a plan of that rule)."""
    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    blocks = min(int(blocks_per_task), max(1, len(plan.work_blocks())))
    flows = {}
    if plan.rule == "flows":
        flows = {**{step: flows_estimate(plan, step) for step in FLOWS_BYTES_PER_VOXEL},
                 # seed-flows holds the histogram pieces of every block (and follows a block no task did):
                 # bounded as follow-flows; assign-flows one block's end points and labels, within a window
                 "seed-flows": flows_estimate(plan, "follow-flows"),
                 "follow-blocks": follow_blocks_estimate(plan, blocks),
                 "assign-blocks": follow_blocks_estimate(plan, blocks)}
    return {"block_voxels": block_voxels(plan), "blocks_per_task": blocks,
            **{step: estimate(plan, step, blocks) for step in STEPS}, **flows}


def main(argv: list[str] | None = None) -> int:
    """``python -m pystitch.resources PLAN [BLOCKS_PER_TASK]``: the estimates as JSON on stdout."""
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2 or not (len(args) == 1 or args[1].isdigit() and int(args[1]) >= 1):
        print("usage: python -m pystitch.resources PLAN [BLOCKS_PER_TASK (>= 1, default 64)]", file=sys.stderr)
        return 2
    print(json.dumps(resources(args[0], int(args[1]) if len(args) == 2 else 64), indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
