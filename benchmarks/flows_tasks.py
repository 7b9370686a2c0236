"""The flows rule's dynamics as the pipeline runs them: time and memory of each task.

The dynamics of ``--rule flows`` run as four steps: the trajectories
(``follow-flows --blocks``, batch tasks), the seeds (``seed-flows``, once per
image), the assignment (``assign-flows --blocks``, batch tasks) and the
filters with the lut (``follow-flows``, once per image).  This script runs,
on one flow store, side by side:

* ``one task``: ``follow-flows PLAN`` alone, which does every step itself;
* ``tasks``: the four steps as separate processes, the batch steps in
  ``--batches`` batches one after the other (as a one-core queue would run
  them),

then ``apply-lut`` and ``finalize`` for both, and checks that both give the
same labels.  Each step runs in a fresh process that samples its
``/proc/self/status`` every 10 ms: peak ``RssAnon`` (its own memory) and peak
``VmRSS`` (with the file pages it maps).  The flows are synthetic (no
network; ``flows_follow_memory.synthetic_flows``: touching balls), the plan
is made with the cached test model (trained on first use, about 3 minutes).

    python benchmarks/flows_tasks.py [--shape 128,256,256] [--block 64] [--batches 4] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "support"))
sys.path.insert(0, str(HERE.parent / "tests"))

CHILD = r"""
import json, sys, threading, time
peaks = {"RssAnon": 0, "VmRSS": 0}
stop = threading.Event()
def sample():
    while not stop.is_set():
        with open("/proc/self/status") as fh:
            for line in fh:
                key = line.split(":")[0]
                if key in peaks:
                    peaks[key] = max(peaks[key], int(line.split()[1]) * 1024)
        time.sleep(0.01)
thread = threading.Thread(target=sample, daemon=True)
thread.start()
t = time.perf_counter()
from pystitch.cli import main
rc = main(sys.argv[1:])
seconds = time.perf_counter() - t
stop.set(); thread.join()
print("@@" + json.dumps(dict(rc=rc, seconds=round(seconds, 3), peak_rss_anon=peaks["RssAnon"],
                             peak_vm_rss=peaks["VmRSS"])))
"""


def step(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("@@")]
    if out.returncode or not lines or json.loads(lines[-1][2:])["rc"]:
        raise SystemExit(f"{' '.join(args[:2])} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return {"step": " ".join(a for a in args[:3] if not a.startswith("/")), **json.loads(lines[-1][2:])}


def make_plan(tmp: Path, name: str, dP: np.ndarray, cellprob: np.ndarray, block: tuple[int, ...], model: str):
    import pystitch
    from helpers import save
    from pystitch.storage.flowstore import FlowStore

    image = save(tmp / f"{name}-img.zarr", ((cellprob > 0) * 900 + 100).astype(np.uint16), chunks=block)
    plan = pystitch.plan_blocks(image, tmp / f"{name}.zarr", block_shape=block, halo=(16,) * cellprob.ndim,
                                backend="cellpose", rule="flows", work_dir=tmp / f"{name}-work", skip_empty=False,
                                backend_options={"pretrained_model": model, "diameter": 18.0})
    store = FlowStore.create(plan.flows_uri, plan.shape, plan.block_shape, plan.hash)
    for b in range(plan.n_blocks):
        core = plan.grid.core(b)
        store.write(core, dP[(slice(None), *core)], cellprob[core], block=b)
    store.mark_complete(niter=200)
    return plan


def ranges(n: int, parts: int) -> list[str]:
    cuts = np.linspace(0, n, min(parts, n) + 1).round().astype(int)
    return [f"{a}-{b - 1}" for a, b in zip(cuts[:-1], cuts[1:])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="128,256,256")
    ap.add_argument("--block", default="64")
    ap.add_argument("--radius", type=float, default=8.0)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--out", default=str(HERE / "results" / f"flows-tasks-{dt.date.today()}"))
    a = ap.parse_args()
    import tiny_cellpose
    from flows_follow_memory import synthetic_flows
    from helpers import load

    shape = tuple(int(s) for s in a.shape.split(","))
    block = tuple(int(s) for s in a.block.split(","))
    block = block * len(shape) if len(block) == 1 else block
    model = str(tiny_cellpose.tiny_model_path())
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp_name:
        tmp = Path(tmp_name)
        dP, cellprob = synthetic_flows(shape, a.radius)
        plans = {name: make_plan(tmp, name, dP, cellprob, block, model) for name in ("one task", "tasks")}
        n = plans["tasks"].n_blocks
        del dP, cellprob
        one = str(plans["one task"].plan_path)
        rows["one task"] = [step("follow-flows", one)]
        many = str(plans["tasks"].plan_path)
        rows["tasks"] = [step("follow-flows", many, "--blocks", r) for r in ranges(n, a.batches)]
        rows["tasks"].append(step("seed-flows", many))
        rows["tasks"] += [step("assign-flows", many, "--blocks", r) for r in ranges(n, a.batches)]
        rows["tasks"].append(step("follow-flows", many))
        for name, plan in plans.items():
            for r in ranges(n, a.batches):
                step("apply-lut", str(plan.plan_path), "--blocks", r)
            step("finalize", str(plan.plan_path), "--nopictures")
        labels = {name: load(tmp / f"{name}.zarr") for name in plans}
        if not np.array_equal(labels["one task"], labels["tasks"]):
            raise SystemExit("the two ways gave different labels")
        objects = int(labels["tasks"].max())
        resolved = json.loads((tmp / "tasks-work" / "resolve.json").read_text())["flows"]
    machine = f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    result = {"date": str(dt.date.today()), "machine": machine, "shape": list(shape), "block": list(block),
              "blocks": n, "batches": a.batches, "radius": a.radius, "objects": objects,
              "foreground_voxels": resolved["foreground_voxels"], "seeds": resolved["seeds"], "rows": rows}
    Path(a.out + ".json").write_text(json.dumps(result, indent=1) + "\n")
    mib = 2 ** 20
    lines = [f"# The flows rule's dynamics, one task against the pipeline's tasks -- {result['date']}", "",
             f"{machine}; synthetic flows (touching balls, radius {a.radius:g}) of {'x'.join(map(str, shape))} "
             f"voxels, blocks {'x'.join(map(str, block))} ({n}), halo 16, the batch steps in {a.batches} "
             f"batches run one after the other; {objects} objects from {result['seeds']} seeds, "
             f"{result['foreground_voxels']} foreground voxels. Both ways give the same labels.", "",
             "| way | step | s | peak RssAnon MiB | peak VmRSS MiB |", "|---|---|---|---|---|"]
    for name, steps in rows.items():
        for r in steps:
            lines.append(f"| {name} | `{r['step']}` | {r['seconds']:.2f} | {r['peak_rss_anon'] / mib:.0f} | "
                         f"{r['peak_vm_rss'] / mib:.0f} |")
        total = sum(r["seconds"] for r in steps)
        lines.append(f"| {name} | total | {total:.2f} | {max(r['peak_rss_anon'] for r in steps) / mib:.0f} | "
                     f"{max(r['peak_vm_rss'] for r in steps) / mib:.0f} |")
    Path(a.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"-> {a.out}.md")


if __name__ == "__main__":
    main()
