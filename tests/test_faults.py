"""Kill at any moment, run again, get the same result.

A clean run of ``pystitch run`` (2 worker processes) is timed stage by
stage; then, in seeded trials aimed in turn at every stage from start-up to
publishing, the same command is killed with SIGKILL (its process group: the
runner, its workers and the fork server) at a random moment after its log
announces that stage, and run again to the end.  Every rerun must give a byte-identical
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
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import save
from pystitch.example import blobs

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent
TRIALS = 14  # two per stage
#: the parts of a run in the order its log announces them
STAGES = ("plan", "segment", "face-pairs", "resolve", "apply-lut", "finalize", "published")
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


def stage_marks(log: str, start: float) -> dict[str, float]:
    """When (seconds after ``start``) each stage of a run began, from its log:
    the stages the runner announces, and "published" when the output was written."""
    import datetime

    marks = {"plan": 0.0}
    for line in log.splitlines():
        if " stage " in line:
            name = line.split("stage ", 1)[1].split(":")[0].strip()
        elif " wrote " in line and " objects to " in line:
            name = "published"
        else:
            continue
        marks.setdefault(name, datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp() - start)
    return marks


def run_and_kill(cmd: list[str], stage: str, delay: float) -> tuple[int, str]:
    """Start ``cmd``; ``delay`` seconds after its log announces ``stage`` ("plan":
    after the start), SIGKILL its process group.  The kill follows the run's own
    progress, not a clock calibrated on another run, so a loaded machine moves
    it with the run.  Returns the exit status and the log."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines: list[str] = []
    announced = threading.Event()
    if stage == "plan":
        announced.set()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if stage_of(line) == stage or (stage != "published" and f"stage {stage}" in line):
                announced.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.time() + 600
    while not announced.wait(0.005):
        if proc.poll() is not None or time.time() > deadline:
            break
    if proc.poll() is None:
        time.sleep(delay)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=600)
    reader.join(timeout=60)
    proc.stderr.close()
    return proc.returncode, "".join(lines)


def test_sigkill_at_any_moment_then_rerun_gives_the_same_tree(tmp_path):
    image = save(tmp_path / "img.zarr", blobs((32, 96, 96), seed=11, sigma=2.5, fraction=0.25), chunks=(16, 32, 32))
    clean_out = tmp_path / "clean" / "labels.zarr"
    t0 = time.time()
    res = subprocess.run(command(image, clean_out), check=True, capture_output=True, text=True, timeout=600)
    marks = stage_marks(res.stderr, t0)
    assert list(marks) == list(STAGES), marks
    # how long each stage lasted in the clean run: a kill lands at a random moment inside it
    ends = list(marks.values())[1:] + [time.time() - t0]
    lasted = {name: max(0.0, end - begin) for (name, begin), end in zip(marks.items(), ends)}
    clean_tree = tree(clean_out)
    clean_report = clean_out.parent / "labels_report"
    clean_summary = summary_without_timings(clean_report)
    assert clean_summary["objects"] > 20

    rng = np.random.default_rng(SEED)
    landed = []
    for trial in range(TRIALS):
        out = tmp_path / f"trial{trial}" / "labels.zarr"
        stage = STAGES[trial % len(STAGES)]            # every part of the run, from start-up to publishing
        at = float(rng.uniform()) * 0.8 * lasted[stage]
        returncode, err = run_and_kill(command(image, out), stage, at)
        landed.append((stage, round(at, 2), returncode, stage_of(err)))
        again = subprocess.run(command(image, out), capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, f"trial {trial} (killed {at:.2f} s into {stage}): {again.stderr[-3000:]}"
        report = out.parent / "labels_report"
        assert tree(out) == clean_tree, f"trial {trial}: the label image differs"
        for name in ("regions.csv", "regions.parquet"):
            assert (report / name).read_bytes() == (clean_report / name).read_bytes(), (trial, name)
        assert summary_without_timings(report) == clean_summary, trial
        assert not list(out.rglob("*.partial")), trial
        assert not (out.parent / "labels_work").exists(), trial
    print("\nkilled (aimed at stage, s into it, exit status, stage reached):", landed)
    # the kills landed all over the run, from planning to publishing
    stages = {reached for _, _, status, reached in landed if status == -signal.SIGKILL}
    assert len(stages) >= 4 and {"plan", "segment"} <= stages and stages & {"finalize", "published"}, landed
