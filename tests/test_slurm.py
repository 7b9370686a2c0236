"""The pipeline on a real SLURM cluster: `-profile slurm,test`.

scripts/slurm-local.sh starts a one-node cluster on this machine from
Debian's packages (slurmctld, slurmd, munge; one declared GPU) for this
module and stops it afterwards (a cluster that was already running is left
running). Every task goes through sbatch; the tests check with SLURM itself
(`scontrol show job`) that each task was a job with the memory and time the
pipeline asked for, compare the output with `pystitch run` byte for byte,
resume the run (every task cached, no new job), cancel a job with scancel
mid-run and see it retried, let SLURM kill a job that uses more memory than
it asked for and see it retried with more, and check the gpu profile's
request with `sbatch --test-only`.

Needs root to install and start the cluster; skipped only when that is not
possible and no cluster is running.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from nf_support import (REPO, SEGMENTERS, TRACE_FIELDS, assert_same_labels, nextflow, ok,  # noqa: F401
                        reference_run, step, summary_of, trace_rows)

pytestmark = [pytest.mark.nextflow, pytest.mark.slurm, pytest.mark.slow]

SCRIPT = REPO / "scripts" / "slurm-local.sh"


@pytest.fixture(scope="module")
def slurm():
    """A running one-node cluster with one (declared) GPU."""
    running = subprocess.run([str(SCRIPT), "status"], capture_output=True, text=True).returncode == 0
    if os.geteuid() != 0:
        if not running:
            pytest.skip("no SLURM cluster is running, and starting one (scripts/slurm-local.sh start) needs root")
    else:
        res = subprocess.run([str(SCRIPT), "start", "--gpus", "1"], capture_output=True, text=True, timeout=1800)
        if res.returncode != 0:
            pytest.fail(f"scripts/slurm-local.sh start failed ({res.returncode}):\n{res.stdout}\n{res.stderr[-4000:]}")
    yield
    if not running and os.geteuid() == 0:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, text=True, timeout=300)


def cluster_config(path: Path) -> Path:
    """The trace fields read here, and a short wait for the exit status of a
    job that SLURM killed outright (it leaves none; Nextflow waits 270 s by default)."""
    path.write_text(f"trace.fields = '{TRACE_FIELDS}'\nexecutor {{ exitReadTimeout = '20 sec' }}\n")
    return path


def job(native_id: str) -> dict[str, str]:
    """`scontrol show job ID` as a dict (the cluster keeps finished jobs for an hour)."""
    res = subprocess.run(["scontrol", "show", "job", "-o", native_id], capture_output=True, text=True, check=True)
    return dict(re.findall(r"(\w+)=(\S*)", res.stdout))


def all_jobs() -> set[str]:
    res = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i"], capture_output=True, text=True, check=True)
    return set(res.stdout.split())


@pytest.fixture(scope="module")
def slurm_run(slurm, nextflow, tmp_path_factory) -> dict:
    launch = tmp_path_factory.mktemp("nf_slurm")
    outdir = launch / "results"
    config = cluster_config(launch / "cluster.config")
    res = ok(nextflow(launch, "-profile", "slurm,test", "-c", config, "--outdir", outdir,
                      "-with-trace", launch / "trace.txt"))
    return {"launch": launch, "outdir": outdir, "config": config, "result": res}


def test_every_task_is_a_slurm_job_with_the_requested_resources(slurm_run, tmp_path):
    rows = trace_rows(slurm_run["launch"] / "trace.txt")
    assert len(rows) == 14 and {r["status"] for r in rows} == {"COMPLETED"}
    log = (slurm_run["launch"] / ".nextflow.log").read_text()
    assert "executor > slurm" in log and "executor > local" not in log
    for row in rows:
        assert row["native_id"].isdigit(), row
        info = job(row["native_id"])
        # the job SLURM ran is this task: its directory, its name, its request
        assert info["WorkDir"] == row["workdir"] and info["JobState"] == "COMPLETED", (row["name"], info)
        assert info["JobName"].startswith("nf-"), info["JobName"]
        assert "#SBATCH -o " in (Path(row["workdir"]) / ".command.run").read_text()
        memory_mb = int(re.match(r"([\d.]+) (MB|GB)", row["memory"]).group(1).split(".")[0]) * (
            1024 if row["memory"].endswith("GB") else 1)
        assert info["MinMemoryNode"] == (f"{memory_mb}M" if memory_mb % 1024 else f"{memory_mb // 1024}G"), info
    # the batch steps ask for what the plan estimated (256 MB, 10 min for these tiny blocks), not a flat 16 GB
    for row in rows:
        if step(row) in ("SEGMENT_BLOCK", "FACE_PAIRS", "APPLY_LUT"):
            assert row["memory"] == "256 MB" and job(row["native_id"])["TimeLimit"] == "00:10:00", row

    outdir = slurm_run["outdir"]
    image = summary_of(outdir, "example")["image"]
    reference_run(image, tmp_path / "run.zarr")
    assert_same_labels(outdir / "example" / "labels.zarr", tmp_path / "run.zarr")


def test_resume_on_slurm_submits_nothing(slurm_run, nextflow):
    launch = slurm_run["launch"]
    before = all_jobs()
    ok(nextflow(launch, "-profile", "slurm,test", "-c", slurm_run["config"], "--outdir", slurm_run["outdir"],
                "-resume", "-with-trace", launch / "trace-resume.txt"))
    rows = trace_rows(launch / "trace-resume.txt")
    assert len(rows) == 14 and {r["status"] for r in rows} == {"CACHED"}, [(r["name"], r["status"]) for r in rows]
    # slurmctld forgets finished jobs after MinJobAge: jobs may leave the list, none may join it
    submitted = all_jobs() - before
    assert not submitted, f"a resumed run submitted jobs {sorted(submitted)}"


def wait_for(predicate, timeout: float, what: str):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_job_cancelled_with_scancel_is_retried(slurm, nextflow, tmp_path):
    """The first segmentation call sleeps (its job id goes into the marker);
    scancel ends that job mid-run; SLURM signals the job, the task fails
    with a signal's exit status and runs again as a new job."""
    marker = tmp_path / "slow.marker"
    launch, outdir = tmp_path / "launch", tmp_path / "results"
    launch.mkdir()
    config = cluster_config(tmp_path / "cluster.config")
    kwargs = json.dumps({"marker": str(marker), "seconds": 600})
    proc = subprocess.Popen(nextflow.command("-profile", "slurm,test", "-c", config, "--outdir", outdir,
                                             "--backend", "callable", "--function", f"{SEGMENTERS}:slow_once",
                                             "--kwargs", kwargs, "-with-trace", launch / "trace.txt"),
                            cwd=launch, env=nextflow.environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        job_id = wait_for(lambda: marker.exists() and marker.read_text().strip(), 300, "the slow segmentation job")
        assert job(job_id)["JobState"] == "RUNNING"
        subprocess.run(["scancel", job_id], check=True)
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-6000:]
    rows = trace_rows(launch / "trace.txt")
    (cancelled,) = [r for r in rows if r["native_id"] == job_id]
    assert step(cancelled) == "SEGMENT_BLOCK" and cancelled["status"] == "FAILED", cancelled
    assert cancelled["exit"] == "143", cancelled   # SIGTERM from scancel
    (retried,) = [r for r in rows if r["name"] == cancelled["name"] and r["status"] == "COMPLETED"]
    assert retried["attempt"] == "2" and retried["native_id"] != job_id
    assert job(job_id)["JobState"] == "CANCELLED"

    image = summary_of(outdir, "example")["image"]
    reference_run(image, tmp_path / "run.zarr", "--backend", "callable", "--function", f"{SEGMENTERS}:slow_once",
                  "--kwargs", kwargs)
    assert_same_labels(outdir / "example" / "labels.zarr", tmp_path / "run.zarr")


def test_a_job_killed_by_slurm_for_memory_is_retried_with_more(slurm, nextflow, tmp_path):
    """The first segmentation call holds 1 GB while its task asked for what the
    plan estimated for a callable backend (384 MB for these blocks): SLURM
    (jobacct_gather + OverMemoryKill, no cgroups here) kills the job: either
    outright, leaving no exit status, or the job step only, when the wrapper
    lives on to record 137 (which of the two is a race inside slurmstepd); both
    are retried, with twice the memory."""
    marker = tmp_path / "hog.marker"
    launch, outdir = tmp_path / "launch", tmp_path / "results"
    config = cluster_config(tmp_path / "cluster.config")
    res = ok(nextflow(launch, "-profile", "slurm,test", "-c", config, "--outdir", outdir,
                      "--backend", "callable", "--function", f"{SEGMENTERS}:memory_hog_once",
                      "--kwargs", json.dumps({"marker": str(marker), "megabytes": 1024}),
                      "-with-trace", launch / "trace.txt", timeout=900))
    rows = trace_rows(launch / "trace.txt")
    job_id = marker.read_text().strip()
    (killed,) = [r for r in rows if r["native_id"] == job_id]
    assert step(killed) == "SEGMENT_BLOCK" and killed["status"] == "FAILED" and killed["memory"] == "384 MB", killed
    assert killed["exit"] in ("-", "137"), killed   # no exit status, or SIGKILL's
    assert "exceeded memory limit" in (Path(killed["workdir"]) / ".command.log").read_text()
    assert job(job_id)["JobState"] in ("OUT_OF_MEMORY", "FAILED", "CANCELLED"), job(job_id)
    (retried,) = [r for r in rows if r["name"] == killed["name"] and r["status"] == "COMPLETED"]
    assert retried["attempt"] == "2" and retried["memory"] == "768 MB", retried
    assert job(retried["native_id"])["MinMemoryNode"] == "768M"
    assert "exceeded memory limit" not in res.stdout


def test_gpu_profile_requests_a_gpu_that_sbatch_accepts(slurm, nextflow, tmp_path):
    """-profile slurm,gpu with a backend that can use a GPU: each segmentation
    job asks for `--gres=gpu:1` (and runs, on the node's declared GPU);
    `sbatch --test-only` accepts the job script as it is and refuses it with
    two GPUs, which the node does not have. No other task asks for a GPU."""
    launch = tmp_path / "launch"
    config = cluster_config(tmp_path / "cluster.config")
    ok(nextflow(launch, "-profile", "slurm,gpu,test", "-c", config, "-stub-run", "--outdir", tmp_path / "results",
                "--backend", "callable", "--function", f"{SEGMENTERS}:identity", "-with-trace", launch / "trace.txt"))
    rows = trace_rows(launch / "trace.txt")
    assert {r["status"] for r in rows} == {"COMPLETED"}
    segment = [r for r in rows if step(r) == "SEGMENT_BLOCK"]
    assert segment
    for row in rows:
        script = Path(row["workdir"]) / ".command.run"
        gres = "#SBATCH --gres=gpu:1" in script.read_text()
        assert gres == (step(row) == "SEGMENT_BLOCK"), row["name"]
        if gres:
            assert job(row["native_id"]).get("TresPerNode", job(row["native_id"]).get("TRES", "")).find("gpu") >= 0
    script = Path(segment[0]["workdir"]) / ".command.run"
    res = subprocess.run(["sbatch", "--test-only", str(script)], cwd=script.parent, capture_output=True, text=True)
    assert res.returncode == 0 and "to start at" in res.stderr, res.stderr
    res = subprocess.run(["sbatch", "--test-only", "--gres=gpu:2", str(script)], cwd=script.parent,
                         capture_output=True, text=True)
    assert res.returncode != 0 and "not available" in res.stderr, res.stderr
