"""Kill at any moment, run again, get the same result.

A clean run of ``pystitch run`` (2 worker processes) is timed; then, in
seeded trials spread over its whole duration, the same command is killed
with SIGKILL (its process group: the runner, its workers and the fork
server) and run again to the end.  Every rerun must give a byte-identical
label image, regions.csv and regions.parquet, the same summary (minus
timings), no temporary file inside the published store and no work
directory left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import save
from pystitch.example import blobs

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent
TRIALS = 12
SEED = 20261202
#: summary fields that measure time, say where files are, or describe the machine at that moment: not compared
VOLATILE = {"timings_seconds", "finalize_seconds", "output", "report_dir", "trace_timings", "environment",
            "workers_reason"}


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def summary_without_timings(report: Path) -> dict:
    doc = json.loads((report / "summary.json").read_text())
    return {k: v for k, v in doc.items() if k not in VOLATILE}


def command(image: str, out: Path) -> list[str]:
    return [str(VENV_BIN / "pystitch"), "run", image, str(out), "--block-shape", "8,16,16", "--halo", "1,2,2",
            "--threshold", "500", "--connectivity", "full", "--workers", "2"]


def stage_of(log: str) -> str:
    """The last stage a (killed) run had begun, from the runner's log."""
    reached = "plan"
    for line in log.splitlines():
        if "stage " in line:
            reached = line.split("stage ", 1)[1].split(":")[0].strip()
        if "wrote " in line and " objects to " in line:
            reached = "published"
    return reached


def stage_windows(log: str, start: float, duration: float) -> list[tuple[float, float]]:
    """Time windows (seconds after the start) of the parts of a run: start-up and
    planning, each stage the runner announces, and the end (publishing)."""
    import datetime

    marks = [0.0]
    for line in log.splitlines():
        if " stage " in line or (" wrote " in line and " objects to " in line):
            stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            marks.append(stamp - start)
    marks.append(duration)
    bounds = sorted(set(round(m, 3) for m in marks))
    windows = [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
    # resolve is short: merge windows until there are six
    while len(windows) > TRIALS // 2:
        i = min(range(len(windows) - 1), key=lambda k: windows[k + 1][1] - windows[k][0])
        windows[i:i + 2] = [(windows[i][0], windows[i + 1][1])]
    return windows


def test_sigkill_at_any_moment_then_rerun_gives_the_same_tree(tmp_path):
    image = save(tmp_path / "img.zarr", blobs((32, 96, 96), seed=11, sigma=2.5, fraction=0.25), chunks=(16, 32, 32))
    clean_out = tmp_path / "clean" / "labels.zarr"
    t0 = time.time()
    res = subprocess.run(command(image, clean_out), check=True, capture_output=True, text=True, timeout=600)
    duration = time.time() - t0
    windows = stage_windows(res.stderr, t0, duration)
    clean_tree = tree(clean_out)
    clean_report = clean_out.parent / "labels_report"
    clean_summary = summary_without_timings(clean_report)
    assert clean_summary["objects"] > 20

    rng = np.random.default_rng(SEED)
    landed = []
    for trial in range(TRIALS):
        out = tmp_path / f"trial{trial}" / "labels.zarr"
        lo, hi = windows[trial % len(windows)]        # two trials in each part of the run
        at = lo + rng.uniform() * (hi - lo)
        proc = subprocess.Popen(command(image, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            proc.wait(timeout=at)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        landed.append((round(at, 2), proc.returncode, stage_of(err)))
        again = subprocess.run(command(image, out), capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, f"trial {trial} (killed at {at:.2f} s): {again.stderr[-3000:]}"
        report = out.parent / "labels_report"
        assert tree(out) == clean_tree, f"trial {trial}: the label image differs"
        for name in ("regions.csv", "regions.parquet"):
            assert (report / name).read_bytes() == (clean_report / name).read_bytes(), (trial, name)
        assert summary_without_timings(report) == clean_summary, trial
        assert not list(out.rglob("*.partial")), trial
        assert not (out.parent / "labels_work").exists(), trial
    print("\nkilled at (s, exit status, stage reached):", landed)
    # the trials were spread over the whole run: from planning to publishing
    stages = {stage for _, _, stage in landed}
    assert len(stages) >= 4 and {"plan", "segment", "finalize"} <= stages, landed
