"""The Nextflow pipeline (main.nf) run for real on the local executor.

Covers: the test profile against ``pystitch run`` and the scipy oracle, -resume
(every task cached), a task killed once (SIGKILL, retried), a failing segmenter
(exit 1, not retried), a stub run of the whole workflow, the static syntax gate,
several images in one run (each resolved on its own), every profile parsing,
and parameter validation before any task runs.

Nextflow comes from scripts/install-nextflow.sh (pinned version, no plugins);
the tests need Java 11+ and are skipped only when there is none. Tasks run the
bin/ launchers with the ``python3`` of this interpreter's environment first on
PATH. Images are tiny (8 blocks, 3 batches), so each run takes well under a
minute on 2 cores, most of it JVM start-up and Python imports.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from scipy import ndimage

from helpers import assert_partition_equivalent, assert_sequential, load, save
from pystitch.example import write_example

pytestmark = [pytest.mark.nextflow, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
MAIN = REPO / "main.nf"
VENV_BIN = Path(sys.executable).parent
SEGMENTERS = REPO / "tests" / "segmenters.py"
# what -profile test sets (conf/test.config), for the reference runs
TEST_SETTINGS = ["--block-shape", "16,64,64", "--halo", "2,4,4"]
PIPELINE_STEPS = ["EXAMPLE_IMAGE", "PLAN_BLOCKS", "SEGMENT_BLOCK", "GATHER_MANIFESTS", "FACE_PAIRS", "RESOLVE",
                  "APPLY_LUT", "FINALIZE"]


# --------------------------------------------------------------------------- helpers


class Nextflow:
    """A pinned Nextflow with an environment in which tasks find pystitch."""

    def __init__(self, executable: str, home: Path) -> None:
        self.executable = executable
        self.env = dict(
            os.environ,
            PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            NXF_ANSI_LOG="false",
            NXF_HOME=str(home),
            NXF_OFFLINE="true",
            NXF_DISABLE_CHECK_LATEST="true",
        )
        self.env.pop("NXF_WORK", None)

    def run(self, launch_dir: Path, *args, timeout: int = 600) -> subprocess.CompletedProcess:
        """``nextflow run main.nf ARGS`` from ``launch_dir`` (which holds .nextflow/ and work/)."""
        launch_dir.mkdir(parents=True, exist_ok=True)
        cmd = [self.executable, "run", str(MAIN), *[str(a) for a in args]]
        return subprocess.run(cmd, cwd=launch_dir, env=self.env, capture_output=True, text=True, timeout=timeout)

    def __call__(self, launch_dir: Path, *args, **kw) -> subprocess.CompletedProcess:
        return self.run(launch_dir, *args, **kw)


def ok(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    if res.returncode != 0:
        raise AssertionError(f"nextflow failed ({res.returncode}):\n{res.stdout[-6000:]}\n{res.stderr[-3000:]}")
    return res


def trace_rows(path: Path) -> list[dict]:
    """The trace file as dicts (name, status, exit...), one per task attempt."""
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def step(row: dict) -> str:
    return row["name"].split(" ")[0].split(":")[-1]


def pystitch(*args, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{REPO / 'bin'}{os.pathsep}{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    res = subprocess.run([str(VENV_BIN / "pystitch"), *[str(a) for a in args]], cwd=cwd, env=env,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise AssertionError(f"pystitch {args} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def reference_run(image, output: Path, *extra) -> None:
    """``pystitch run`` on the same image with the test profile's settings
    (threshold 500 unless ``extra`` names another backend).  Like the
    pipeline's plan-blocks, it marks empty blocks at plan time (the local
    runner's own default finds them while segmenting), so the plans and
    therefore every byte of the outputs are the same."""
    backend = [] if "--backend" in extra else ["--threshold", "500"]
    pystitch("run", image, output, *TEST_SETTINGS, *backend, "--workers", "2", "--skip-empty", "true", "--quiet",
             *extra)


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def assert_same_labels(pipeline_output: Path, reference_output: Path) -> np.ndarray:
    """Byte-identical label images (every file of the store: metadata, every
    chunk of every level) and regions tables; returns the labels (level 0)."""
    got, ref = tree(pipeline_output), tree(reference_output)
    assert sorted(got) == sorted(ref), "the two label stores hold different files"
    differ = [name for name in got if got[name] != ref[name]]
    assert not differ, f"pipeline output differs from `pystitch run` in {differ[:10]}"
    report, ref_report = (Path(str(p).removesuffix(".zarr") + "_report") for p in (pipeline_output, reference_output))
    assert (report / "regions.csv").read_bytes() == (ref_report / "regions.csv").read_bytes()
    labels = load(pipeline_output)
    np.testing.assert_array_equal(labels, load(reference_output))
    return labels


def summary_of(outdir: Path, sample: str) -> dict:
    return json.loads((outdir / sample / "labels_report" / "summary.json").read_text())


def example_image_data(path: str) -> np.ndarray:
    return zarr.open_group(path, mode="r")["0"][:]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def nextflow(tmp_path_factory) -> Nextflow:
    """The pinned Nextflow from scripts/install-nextflow.sh (idempotent, instant once installed)."""
    if not (shutil.which("java") or os.environ.get("JAVA_HOME") or os.environ.get("NXF_JAVA_HOME")):
        pytest.skip("Nextflow needs Java 11+; none found (no java on PATH, no JAVA_HOME)")
    res = subprocess.run([str(REPO / "scripts" / "install-nextflow.sh")], capture_output=True, text=True,
                         timeout=1800)
    if res.returncode != 0:
        pytest.fail(f"scripts/install-nextflow.sh failed ({res.returncode}):\n{res.stderr[-4000:]}")
    executable = res.stdout.strip().splitlines()[-1]
    assert os.access(executable, os.X_OK), executable
    return Nextflow(executable, tmp_path_factory.mktemp("nxf_home"))


@pytest.fixture(scope="module")
def test_profile_run(nextflow, tmp_path_factory) -> dict:
    """One real ``-profile test`` run, shared by the tests that inspect or resume it."""
    launch = tmp_path_factory.mktemp("nf_test_profile")
    outdir = launch / "results"
    t0 = time.perf_counter()
    res = ok(nextflow(launch, "-profile", "test", "--outdir", outdir, "-with-trace", launch / "trace.txt",
                      "-with-report", launch / "report.html", "-with-timeline", launch / "timeline.html"))
    return {"launch": launch, "outdir": outdir, "result": res, "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------- the test profile


def test_test_profile_equals_local_runner_and_oracle(test_profile_run, tmp_path):
    outdir = test_profile_run["outdir"]
    output = outdir / "example" / "labels.zarr"
    assert output.is_dir() and (outdir / "example" / "labels_report" / "regions.csv").is_file()
    summary = summary_of(outdir, "example")
    assert summary["output"] == str(output)
    assert summary["blocks"] == 8 and summary["objects"] > 0

    # every step ran, batched: 8 blocks in batches of 3 -> 3 tasks per batch step
    rows = trace_rows(test_profile_run["launch"] / "trace.txt")
    assert {r["status"] for r in rows} == {"COMPLETED"}
    counts = {s: sum(step(r) == s for r in rows) for s in PIPELINE_STEPS}
    assert counts == {"EXAMPLE_IMAGE": 1, "PLAN_BLOCKS": 1, "SEGMENT_BLOCK": 3, "GATHER_MANIFESTS": 1,
                      "FACE_PAIRS": 3, "RESOLVE": 1, "APPLY_LUT": 3, "FINALIZE": 1}
    launch = test_profile_run["launch"]
    assert (launch / "report.html").is_file() and (launch / "timeline.html").is_file()
    versions = (outdir / "pipeline_info" / "software_versions.yml").read_text()
    assert "PYSTITCH:SEGMENT_BLOCK" in versions and "pystitch:" in versions

    # the same image through the local runner: byte-identical labels and regions table
    image = summary["image"]
    reference_run(image, tmp_path / "run.zarr")
    labels = assert_same_labels(output, tmp_path / "run.zarr")
    assert_sequential(labels)
    # and the whole-image oracle
    reference = ndimage.label(example_image_data(image) > 500)[0]
    assert_partition_equivalent(labels, reference)
    # a failed or finished run leaves no partial output next to the output
    assert sorted(p.name for p in (outdir / "example").iterdir()) == ["labels.zarr", "labels_report"]
    assert not any(p.name.endswith((".partial", ".incoming", ".incomplete")) for p in outdir.rglob("*"))


def test_resume_caches_every_task(test_profile_run, nextflow):
    launch, outdir = test_profile_run["launch"], test_profile_run["outdir"]
    output = outdir / "example" / "labels.zarr"
    before = load(output)
    ok(nextflow(launch, "-profile", "test", "--outdir", outdir, "-resume", "-with-trace", launch / "trace-resume.txt"))
    rows = trace_rows(launch / "trace-resume.txt")
    assert len(rows) == 14
    assert {r["status"] for r in rows} == {"CACHED"}, [(r["name"], r["status"]) for r in rows]
    np.testing.assert_array_equal(load(output), before)


# --------------------------------------------------------------------------- failures


def test_killed_task_is_retried_with_the_same_result(nextflow, tmp_path):
    """A segmentation task killed by SIGKILL (exit 137) runs again and the run
    succeeds with the labels of a run that was never interrupted. The big
    stores go to --staging_dir here (the other runs keep them in the plan task)."""
    marker = tmp_path / "killed.marker"
    backend_args = f"--function {SEGMENTERS}:killed_once --kwargs '{{\"marker\": \"{marker}\"}}'"
    launch, outdir = tmp_path / "launch", tmp_path / "results"
    ok(nextflow(launch, "-profile", "test", "--outdir", outdir, "--backend", "callable",
                f"--backend_args={backend_args}", "--staging_dir", tmp_path / "stores",
                "-with-trace", launch / "trace.txt"))
    assert marker.exists()
    rows = trace_rows(launch / "trace.txt")
    failed = [r for r in rows if r["status"] == "FAILED"]
    assert len(failed) == 1 and step(failed[0]) == "SEGMENT_BLOCK" and failed[0]["exit"] == "137", failed
    retried = [r for r in rows if r["name"] == failed[0]["name"] and r["status"] == "COMPLETED"]
    assert len(retried) == 1
    assert (tmp_path / "stores" / "example" / "plan.json").is_file()

    # the same segmenter, marker present: never killed
    image = summary_of(outdir, "example")["image"]
    reference_run(image, tmp_path / "run.zarr", "--backend", "callable", "--function", f"{SEGMENTERS}:killed_once",
                  "--kwargs", json.dumps({"marker": str(marker)}))
    labels = assert_same_labels(outdir / "example" / "labels.zarr", tmp_path / "run.zarr")
    assert labels.max() > 0


def test_bad_input_fails_once_without_retry(nextflow, tmp_path):
    """A segmenter error is pystitch's exit 1: the run stops with its message, no
    retry, and nothing appears at the output path."""
    launch, outdir = tmp_path / "launch", tmp_path / "results"
    res = nextflow(launch, "-profile", "test", "--outdir", outdir, "--backend", "callable",
                   f"--backend_args=--function {SEGMENTERS}:fail", "-with-trace", launch / "trace.txt")
    assert res.returncode != 0
    assert "model exploded" in res.stdout + res.stderr
    rows = trace_rows(launch / "trace.txt")
    failed = [r for r in rows if r["status"] == "FAILED" and r["exit"] == "1"]
    assert failed and all(step(r) == "SEGMENT_BLOCK" for r in failed), rows
    assert not any(r["exit"] == "137" for r in rows)
    attempts = [r["name"] for r in rows if step(r) == "SEGMENT_BLOCK"]
    assert len(attempts) == len(set(attempts)), "a task that exited 1 was retried"
    assert not (outdir / "example" / "labels.zarr").exists()


# --------------------------------------------------------------------------- stub run, static gate, profiles


def test_stub_run_of_the_whole_workflow(nextflow, tmp_path):
    launch = tmp_path / "launch"
    ok(nextflow(launch, "-profile", "test,gpu", "-stub-run", "--outdir", tmp_path / "results",
                "-with-trace", launch / "trace.txt"))
    rows = trace_rows(launch / "trace.txt")
    assert {step(r) for r in rows} == set(PIPELINE_STEPS)
    assert {r["status"] for r in rows} == {"COMPLETED"}
    assert not (tmp_path / "results" / "example" / "labels.zarr").exists()


def test_static_gate_passes_and_catches_a_syntax_error(tmp_path):
    if not shutil.which("java"):
        pytest.skip("scripts/nf-lint.sh needs a JDK")
    gate = REPO / "scripts" / "nf-lint.sh"
    res = subprocess.run([str(gate)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    checked = sorted(str(p.relative_to(REPO)) for p in
                     [REPO / "main.nf", REPO / "nextflow.config", *REPO.glob("conf/**/*.config"),
                      *REPO.glob("modules/**/*.nf"), *REPO.glob("workflows/**/*.nf"), *REPO.glob("subworkflows/**/*.nf")])
    assert f"{len(checked)} file(s) OK" in res.stderr, res.stderr

    broken = tmp_path / "pystitch.nf"
    text = (REPO / "workflows" / "pystitch.nf").read_text()
    broken.write_text(text.replace("main:\n", "main:\n    ch_oops = Channel.of(1,\n", 1))
    t0 = time.perf_counter()
    res = subprocess.run([str(gate), str(broken)], cwd=REPO, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - t0
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"{broken}:" in res.stdout + res.stderr and "error" in res.stdout + res.stderr
    assert elapsed < 60, f"the gate took {elapsed:.0f}s"


def test_every_profile_parses_and_no_plugin_is_declared(nextflow, tmp_path):
    profiles = "local,slurm,lsf,awsbatch,docker,podman,singularity,apptainer,gpu,test"
    res = subprocess.run([nextflow.executable, "config", "-flat", "-profile", profiles, str(REPO)], cwd=tmp_path,
                         env=nextflow.env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    flat = res.stdout
    assert "process.executor = 'awsbatch'" in flat              # the last executor profile wins
    assert "apptainer.enabled = true" in flat and "docker.enabled = false" in flat
    assert "accelerator = 1" in flat and "--gres=gpu:1" in flat and "-gpu num=1" in flat and "--nv" in flat
    assert "plugins" not in flat
    for path in [REPO / "nextflow.config", *REPO.glob("conf/*.config")]:
        assert "plugins {" not in path.read_text() and "plugins{" not in path.read_text(), path


# --------------------------------------------------------------------------- several images


def test_samplesheet_images_are_resolved_independently(nextflow, tmp_path):
    """Three images in one run: each output equals the single-image local run of
    that image. The third (a plain zarr array) has no foreground at all: every
    block is planned empty, and it still gets its (empty) output."""
    images = tmp_path / "images"
    a = write_example(images / "a.zarr", (24, 96, 96), seed=1)
    b = write_example(images / "b.zarr", (20, 70, 50), seed=2)
    blank = save(images / "blank.zarr", np.full((18, 40, 40), 100, np.uint16))
    sheet = tmp_path / "samples.csv"
    sheet.write_text(f"sample,image,level\nalpha,{a},0\nbeta,{b},\nblank,{blank},\n")
    launch, outdir = tmp_path / "launch", tmp_path / "results"
    ok(nextflow(launch, "-profile", "test", "--input", sheet, "--outdir", outdir, "-with-trace", launch / "trace.txt"))

    rows = trace_rows(launch / "trace.txt")
    for name in ("alpha", "beta", "blank"):
        assert sum(step(r) == "RESOLVE" and f"({name})" in r["name"] for r in rows) == 1
    for name, image in (("alpha", a), ("beta", b)):
        reference_run(image, tmp_path / f"{name}.zarr", *(["--level", "0"] if name == "alpha" else []))
        labels = assert_same_labels(outdir / name / "labels.zarr", tmp_path / f"{name}.zarr")
        assert labels.max() > 0
        assert_sequential(labels)
        assert_partition_equivalent(labels, ndimage.label(example_image_data(str(image)) > 500)[0])
    # no block to segment: one trivial batch still carries it to an empty output
    assert load(outdir / "blank" / "labels.zarr").shape == (18, 40, 40)
    assert not load(outdir / "blank" / "labels.zarr").any()
    assert summary_of(outdir, "blank")["objects"] == 0
    assert not any(step(r) == "EXAMPLE_IMAGE" for r in rows)


# --------------------------------------------------------------------------- parameter validation


@pytest.mark.parametrize("args, messages", [
    ([], ["Missing --input"]),
    # every problem is reported at once
    (["-profile", "test", "--block_shape", "a,b", "--blocks_per_task", "0"],
     ["--block_shape expects", "Got 'a,b'", "--blocks_per_task expects an integer >= 1"]),
    (["-profile", "test", "--backend", "nonsense"], ["Unknown --backend 'nonsense'"]),
], ids=["missing-input", "bad-block-shape", "unknown-backend"])
def test_bad_parameters_stop_before_any_task(nextflow, tmp_path, args, messages):
    launch = tmp_path / "launch"
    res = nextflow(launch, *args, "--outdir", tmp_path / "results", "-with-trace", launch / "trace.txt")
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert all(m in out for m in messages), out
    assert "Invalid parameters" in out
    assert trace_rows(launch / "trace.txt") == []
    work = launch / "work"
    assert not work.exists() or not any(work.iterdir()), list(work.iterdir())
