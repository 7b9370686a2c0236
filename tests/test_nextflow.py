"""The Nextflow pipeline (main.nf) run for real on the local executor.

Covers: the test profile under the strict syntax parser (NXF_SYNTAX_PARSER=v2)
against ``pystitch run`` and the scipy oracle, the results published as hard
links and the big stores outside every task directory, -resume (every task
cached, a deleted result published again), a task killed once (SIGKILL,
retried), a failing segmenter (exit 1, not retried), a stub run of the whole
workflow under the classic parser, the static gate (Nextflow's own strict
parser), several images in one run (each resolved on its own), every profile
parsing, the parameters checked against nextflow_schema.json before any task
runs, and the schema, the config and `--help` agreeing.

Images are tiny (8 blocks, 3 batches), so each run takes well under a
minute on 2 cores, most of it JVM start-up and Python imports.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from scipy import ndimage

from helpers import assert_partition_equivalent, assert_sequential, load, save
from nf_support import (MAIN, PIPELINE_STEPS, REPO, SEGMENTERS, TEST_SETTINGS, assert_same_labels,  # noqa: F401
                        nextflow, ok, reference_run, step, summary_of, trace_rows)
from pystitch.example import write_example

pytestmark = [pytest.mark.nextflow, pytest.mark.slow]


def example_image_data(path: str) -> np.ndarray:
    return zarr.open_group(path, mode="r")["0"][:]


def task_dirs(launch: Path, process: str) -> list[Path]:
    """The work directories of the tasks of one process (from .command.run)."""
    found = []
    for run in sorted(launch.glob("work/*/*/.command.run")):
        if re.search(rf"^### name: '\S*{process} ", run.read_text(), re.M):
            found.append(run.parent)
    return found


# --------------------------------------------------------------------------- the test profile


@pytest.fixture(scope="module")
def test_profile_run(nextflow, tmp_path_factory) -> dict:
    """One real ``-profile test`` run under the strict syntax parser, shared by
    the tests that inspect or resume it."""
    launch = tmp_path_factory.mktemp("nf_test_profile")
    outdir = launch / "results"
    t0 = time.perf_counter()
    res = ok(nextflow(launch, "-profile", "test", "--outdir", outdir, "-with-trace", launch / "trace.txt",
                      "-with-report", launch / "report.html", "-with-timeline", launch / "timeline.html",
                      parser="v2"))
    return {"launch": launch, "outdir": outdir, "result": res, "seconds": time.perf_counter() - t0}


def test_test_profile_under_the_strict_parser_equals_local_runner_and_oracle(test_profile_run, tmp_path):
    outdir = test_profile_run["outdir"]
    output = outdir / "example" / "labels.zarr"
    assert output.is_dir() and (outdir / "example" / "labels_report" / "regions.csv").is_file()
    summary = summary_of(outdir, "example")
    assert summary["blocks"] == 8 and summary["objects"] > 0
    # the summary names the published paths, not the finalize task's directory
    assert summary["output"] == str(output) and summary["report_dir"] == str(outdir / "example" / "labels_report")

    # every step ran, batched: 8 blocks in batches of 3 -> 3 tasks per batch step
    rows = trace_rows(test_profile_run["launch"] / "trace.txt")
    assert {r["status"] for r in rows} == {"COMPLETED"}
    counts = {s: sum(step(r) == s for r in rows) for s in PIPELINE_STEPS}
    assert counts == {"EXAMPLE_IMAGE": 1, "PLAN_BLOCKS": 1, "SEGMENT_BLOCK": 3, "GATHER_MANIFESTS": 1,
                      "FACE_PAIRS": 3, "RESOLVE": 1, "APPLY_LUT": 3, "FINALIZE": 1}
    launch = test_profile_run["launch"]
    assert (launch / "report.html").is_file() and (launch / "timeline.html").is_file()
    # versions through the `versions` topic, one entry per process
    versions = (outdir / "pipeline_info" / "software_versions.yml").read_text()
    assert "PYSTITCH:SEGMENT_BLOCK:\n    pystitch: " in versions and "Nextflow: 25.04" in versions
    assert "coreutils:" in versions

    # the same image through the local runner: byte-identical labels and regions table
    image = summary["image"]
    reference_run(image, tmp_path / "run.zarr")
    labels = assert_same_labels(output, tmp_path / "run.zarr")
    assert_sequential(labels)
    # and the whole-image oracle
    reference = ndimage.label(example_image_data(image) > 500)[0]
    assert_partition_equivalent(labels, reference)
    # nothing else next to the results
    assert sorted(p.name for p in (outdir / "example").iterdir()) == ["labels.zarr", "labels_report"]
    assert not any(p.name.endswith((".partial", ".incoming", ".incomplete")) for p in outdir.rglob("*"))


def test_results_are_published_as_hard_links_of_the_finalize_task(test_profile_run):
    """publishDir mode `link`: every file of the published label image is the
    file FINALIZE wrote (same inode), so nothing was copied, and it outlives
    the work directory. A task that moved its output to --outdir itself
    would leave one link."""
    outdir, launch = test_profile_run["outdir"], test_profile_run["launch"]
    (finalize,) = task_dirs(launch, "FINALIZE")
    published = sorted(p for p in (outdir / "example").rglob("*") if p.is_file())
    assert len(published) > 10
    for path in published:
        source = finalize / path.relative_to(outdir)
        assert source.is_file(), source
        assert os.stat(path).st_ino == os.stat(source).st_ino and os.stat(path).st_nlink >= 2, path


def test_big_stores_live_outside_every_task_directory(test_profile_run):
    """The staging store and the output being written go to the run's staging
    directory (work/pystitch-staging/<sample>-<key>/), not into the plan task's
    directory; later tasks write there, never into a finished task's
    directory: the plan task holds only its small outputs."""
    launch = test_profile_run["launch"]
    (plan_task,) = task_dirs(launch, "PLAN_BLOCKS")
    assert sorted(p.name for p in plan_task.iterdir() if not p.name.startswith(".")) == [
        "batches.txt", "example.zarr", "plan.json", "resources.json"]
    plan = json.loads((plan_task / "plan.json").read_text())
    staging = Path(plan["work_dir"])
    assert staging.parent == launch / "work" / "pystitch-staging" and staging.name.startswith("example-")
    assert (staging / "staging.zarr").is_dir()
    # resources: the plan's estimate for each batch step, in the requests of its tasks
    estimate = json.loads((plan_task / "resources.json").read_text())
    assert estimate["block_voxels"] == 20 * 72 * 72
    for process, key in (("SEGMENT_BLOCK", "segment-block"), ("APPLY_LUT", "apply-lut")):
        for task in task_dirs(launch, process):
            assert "nxf_trace" in (task / ".command.run").read_text()
        assert estimate[key]["memory_mb"] >= 256


def test_resume_caches_every_task_and_republishes_a_deleted_result(test_profile_run, nextflow, tmp_path):
    launch, outdir = test_profile_run["launch"], test_profile_run["outdir"]
    output = outdir / "example" / "labels.zarr"
    before = load(output)
    # a user removed the published report: -resume publishes it again, running nothing
    report = outdir / "example" / "labels_report"
    regions = (report / "regions.csv").read_bytes()
    for path in sorted(report.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    report.rmdir()
    ok(nextflow(launch, "-profile", "test", "--outdir", outdir, "-resume", "-with-trace", launch / "trace-resume.txt",
                parser="v2"))
    rows = trace_rows(launch / "trace-resume.txt")
    assert len(rows) == 14
    assert {r["status"] for r in rows} == {"CACHED"}, [(r["name"], r["status"]) for r in rows]
    np.testing.assert_array_equal(load(output), before)
    assert (report / "regions.csv").read_bytes() == regions


def test_existing_results_stop_a_new_run_before_any_task(test_profile_run, nextflow, tmp_path):
    """A run without -resume into an --outdir that holds the sample's labels
    stops at once (no task), unless --overwrite true."""
    launch = tmp_path / "launch"
    res = nextflow(launch, "-profile", "test", "--outdir", test_profile_run["outdir"],
                   "-with-trace", launch / "trace.txt")
    assert res.returncode != 0
    assert "labels.zarr exists" in res.stdout + res.stderr and "--overwrite true" in res.stdout + res.stderr
    assert trace_rows(launch / "trace.txt") == []


def test_task_logs_show_progress_in_blocks(test_profile_run):
    """Each block step's task log (.command.err, no terminal) holds its progress
    records, ending with all of the task's blocks."""
    import re

    launch = test_profile_run["launch"]
    names = {"SEGMENT_BLOCK": "segment", "FACE_PAIRS": "face-pairs", "APPLY_LUT": "apply-lut"}
    seen = 0
    for row in trace_rows(launch / "trace.txt"):
        if step(row) not in names:
            continue
        workdir = next((launch / "work").glob(row["hash"] + "*"))
        log = (workdir / ".command.err").read_text()
        last = re.findall(rf"pystitch\.progress: {names[step(row)]}: (\d+)/(\d+) blocks", log)
        assert last and last[-1][0] == last[-1][1] and int(last[-1][1]) >= 1, log[-2000:]
        seen += 1
    assert seen == 9


# --------------------------------------------------------------------------- failures


def test_killed_task_is_retried_with_the_same_result(nextflow, tmp_path):
    """A segmentation task killed by SIGKILL (exit 137) runs again and the run
    succeeds with the labels of a run that was never interrupted. The big
    stores go to --staging_dir here."""
    marker = tmp_path / "killed.marker"
    launch, outdir = tmp_path / "launch", tmp_path / "results"
    ok(nextflow(launch, "-profile", "test", "--outdir", outdir, "--backend", "callable",
                "--function", f"{SEGMENTERS}:killed_once", "--kwargs", json.dumps({"marker": str(marker)}),
                "--staging_dir", tmp_path / "stores", "-with-trace", launch / "trace.txt"))
    assert marker.exists()
    rows = trace_rows(launch / "trace.txt")
    failed = [r for r in rows if r["status"] == "FAILED"]
    assert len(failed) == 1 and step(failed[0]) == "SEGMENT_BLOCK" and failed[0]["exit"] == "137", failed
    retried = [r for r in rows if r["name"] == failed[0]["name"] and r["status"] == "COMPLETED"]
    assert len(retried) == 1
    (stores,) = (tmp_path / "stores").iterdir()
    assert stores.name.startswith("example-") and (stores / "plan.json").is_file()

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
                   "--function", f"{SEGMENTERS}:fail", "-with-trace", launch / "trace.txt")
    assert res.returncode != 0
    assert "model exploded" in res.stdout + res.stderr
    rows = trace_rows(launch / "trace.txt")
    failed = [r for r in rows if r["status"] == "FAILED" and r["exit"] == "1"]
    assert failed and all(step(r) == "SEGMENT_BLOCK" for r in failed), rows
    assert not any(r["exit"] == "137" for r in rows)
    attempts = [r["name"] for r in rows if step(r) == "SEGMENT_BLOCK"]
    assert len(attempts) == len(set(attempts)), "a task that exited 1 was retried"
    assert not (outdir / "example" / "labels.zarr").exists()


def test_each_task_gives_zarr_the_cores_it_asked_for(nextflow, tmp_path):
    """The local executor does not pin a task to its cores (each one may run on
    all of the node's): every step sizes zarr's codec thread pool from the
    cores its task asked for -- 1 each under -profile test -- not from the
    node's, so that tasks side by side do not oversubscribe it."""
    launch, outdir = tmp_path / "launch", tmp_path / "results"
    ok(nextflow(launch, "-profile", "test", "--outdir", outdir, "--backend", "callable",
                "--function", f"{SEGMENTERS}:zarr_threads", "--kwargs", json.dumps({"expected": 1})))
    assert summary_of(outdir, "example")["objects"] > 0
    scripts = [run.read_text() for run in launch.glob("work/*/*/.command.sh")]
    steps = [s for s in scripts if "pystitch example" not in s and "find parts/" not in s]
    assert len(steps) >= 5 and all("export ZARR_THREADING__MAX_WORKERS=${ZARR_THREADING__MAX_WORKERS:-1}" in s
                                   for s in steps)


# --------------------------------------------------------------------------- stub run, static gate, profiles


def test_stub_run_of_the_whole_workflow_under_the_classic_parser(nextflow, tmp_path):
    launch = tmp_path / "launch"
    ok(nextflow(launch, "-profile", "test,gpu", "-stub-run", "--outdir", tmp_path / "results",
                "-with-trace", launch / "trace.txt", parser="v1"))
    rows = trace_rows(launch / "trace.txt")
    assert {step(r) for r in rows} == set(PIPELINE_STEPS)
    assert {r["status"] for r in rows} == {"COMPLETED"}


def test_static_gate_passes_and_catches_errors(tmp_path):
    """scripts/nf-lint.sh runs Nextflow's strict parser and its checks over the
    pipeline: clean today; a syntax error, an undefined name and the
    constructs the strict parser refuses (the three kinds the pipeline had)
    are each reported with their file and line."""
    gate = REPO / "scripts" / "nf-lint.sh"
    res = subprocess.run([str(gate), "-o", "concise"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    n_files = len([REPO / "main.nf", REPO / "nextflow.config", *REPO.glob("conf/*.config"),
                   *REPO.glob("modules/**/*.nf"), *REPO.glob("workflows/*.nf"), *REPO.glob("subworkflows/**/*.nf")])
    assert f"{n_files} files had no errors" in res.stdout, res.stdout

    text = (REPO / "workflows" / "pystitch.nf").read_text()
    broken = {
        "syntax.nf": text.replace("main:\n", "main:\n    ch_oops = Channel.of(1,\n", 1),
        "undefined.nf": text.replace("ch_plan = PLAN_BLOCKS.out.plan", "ch_plan = PLAN_BLOKS.out.plan", 1),
        "increment.nf": "def count(n) {\n    def i = 0\n    i++\n    return i\n}\n",
        "mixed.nf": "workflow {\n    println 1\n}\n\nworkflow.onComplete {\n    println 2\n}\n",
        "function.config": "def mounts() { return '' }\nprocess.containerOptions = mounts()\n",
    }
    for name, content in broken.items():
        (tmp_path / name).write_text(content)
    t0 = time.perf_counter()
    res = subprocess.run([str(gate), "-o", "concise", *[str(tmp_path / n) for n in broken]], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - t0
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    for name in broken:
        assert re.search(rf"Error {re.escape(str(tmp_path / name))}:\d+:\d+: ", out), (name, out)
    assert "`PLAN_BLOKS` is not defined" in out
    assert elapsed < 90, f"the gate took {elapsed:.0f}s"


def test_every_profile_parses_and_no_plugin_is_declared(nextflow, tmp_path):
    profiles = "local,slurm,lsf,awsbatch,docker,podman,singularity,apptainer,gpu,test"
    res = subprocess.run([nextflow.executable, "config", "-flat", "-profile", profiles, str(REPO)], cwd=tmp_path,
                         env=nextflow.env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    flat = res.stdout
    assert "process.executor = 'awsbatch'" in flat              # the last executor profile wins
    assert "apptainer.enabled = true" in flat and "docker.enabled = false" in flat
    assert "--gres=gpu:1" in flat and "-gpu num=1" in flat and "--nv" in flat
    assert "params.backend == 'threshold' ? null : 1" in flat   # no GPU for the threshold backend
    assert "plugins" not in flat
    for path in [REPO / "nextflow.config", *REPO.glob("conf/*.config")]:
        assert "plugins {" not in path.read_text() and "plugins{" not in path.read_text(), path


# --------------------------------------------------------------------------- several images


def test_samplesheet_images_are_resolved_independently(nextflow, tmp_path):
    """Three images in one run: each output equals the single-image local run of
    that image. The third (a plain zarr array) has no foreground at all: every
    block is planned empty, and it still gets its (empty) output. The report's
    parameters reach their steps: intensity statistics (apply-lut reads the
    image) equal the local runner's, and no pictures are drawn."""
    images = tmp_path / "images"
    a = write_example(images / "a.zarr", (24, 96, 96), seed=1)
    b = write_example(images / "b.zarr", (20, 70, 50), seed=2)
    blank = save(images / "blank.zarr", np.full((18, 40, 40), 100, np.uint16))
    sheet = tmp_path / "samples.csv"
    sheet.write_text(f"sample,image,level\nalpha,{a},0\nbeta,{b},\nblank,{blank},\n")
    launch, outdir = tmp_path / "launch", tmp_path / "results"
    ok(nextflow(launch, "-profile", "test", "--input", sheet, "--outdir", outdir, "-with-trace", launch / "trace.txt",
                "--intensity_stats", "true", "--pictures", "false", "--qc_faces", "2"))

    rows = trace_rows(launch / "trace.txt")
    for name in ("alpha", "beta", "blank"):
        assert sum(step(r) == "RESOLVE" and f"({name})" in r["name"] for r in rows) == 1
    for name, image in (("alpha", a), ("beta", b)):
        reference_run(image, tmp_path / f"{name}.zarr", "--intensity-stats",
                      *(["--level", "0"] if name == "alpha" else []))
        labels = assert_same_labels(outdir / name / "labels.zarr", tmp_path / f"{name}.zarr")
        table = (outdir / name / "labels_report" / "regions.csv").read_text()
        assert "intensity_mean" in table.splitlines()[0]
        assert table == (tmp_path / f"{name}_report" / "regions.csv").read_text()
        assert not list((outdir / name / "labels_report").glob("*.png"))
        assert summary_of(outdir, name)["seam_qc"]["faces_checked"] == 2
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
    # every problem is reported at once, one line each
    (["-profile", "test", "--block_shape", "a,b", "--blocks_per_task", "0"],
     ["--block_shape 'a,b' is not valid", "--blocks_per_task must be at least 1. Got 0."]),
    (["-profile", "test", "--backend", "nonsense"],
     ["--backend must be one of threshold, callable, cellpose. Got 'nonsense'."]),
    (["-profile", "test", "--min_iou", "1.5", "--level", "x", "--overwrite", "maybe"],
     ["--min_iou must be at most 1.0. Got 1.5.", "--level expects an integer. Got 'x'.",
      "--overwrite expects true or false. Got 'maybe'."]),
    (["-profile", "test", "--treshold", "400", "--block-shape", "8,32,32"],
     ["Unknown parameter --treshold. Did you mean --threshold?",
      "is spelt --block_shape by this pipeline"]),
    (["--input", "example", "--halo", "2,4,4"], ["With --backend threshold, give --threshold"]),
    (["-profile", "test", "--backend", "callable"], ["With --backend callable, give --function"]),
    (["-profile", "test", "--publish_dir_mode", "hardlink"],
     ["--publish_dir_mode must be one of link, copy, copyNoFollow, symlink, rellink, move. Got 'hardlink'."]),
    # the flows rule follows Cellpose's flows
    (["-profile", "test", "--rule", "flows"],
     ["With --rule flows, give --backend cellpose."]),
], ids=["missing-input", "bad-block-shape", "unknown-backend", "types-and-ranges", "misspelt-names",
        "threshold-required", "function-required", "publish-mode", "flows-rule"])
def test_bad_parameters_stop_before_any_task(nextflow, tmp_path, args, messages):
    launch = tmp_path / "launch"
    res = nextflow(launch, *args, "--outdir", tmp_path / "results", "-with-trace", launch / "trace.txt",
                   parser="v2")
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert all(m in out for m in messages), out
    assert "Invalid parameters" in out
    assert trace_rows(launch / "trace.txt") == []
    work = launch / "work"
    assert not work.exists() or not any(p.name != "pystitch-staging" for p in work.iterdir()), list(work.iterdir())


def test_bad_samplesheet_stops_before_any_task(nextflow, tmp_path):
    image = write_example(tmp_path / "a.zarr", (24, 96, 96), seed=1)
    sheet = tmp_path / "samples.csv"
    sheet.write_text(f"sample,image,level,colour\na b,{image},x,red\nc,{tmp_path / 'missing.zarr'},,\nc,{image},,\n")
    launch = tmp_path / "launch"
    res = nextflow(launch, "-profile", "test", "--input", sheet, "--outdir", tmp_path / "results",
                   "-with-trace", launch / "trace.txt")
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "unknown column 'colour'" in out, out
    sheet.write_text(f"sample,image,level\na b,{image},x\nc,{tmp_path / 'missing.zarr'},\nc,{image},\n")
    res = nextflow(launch, "-profile", "test", "--input", sheet, "--outdir", tmp_path / "results",
                   "-with-trace", launch / "trace.txt")
    out = res.stdout + res.stderr
    assert res.returncode != 0
    for message in ["line 2: sample 'a b': sample may hold only letters", "line 2: level expects an integer",
                    "line 3: image", "no such file or directory", "sample 'c' appears more than once"]:
        assert message in out, (message, out)
    assert trace_rows(launch / "trace.txt") == []


def test_help_lists_the_schema_and_config_defaults_equal_the_schema(nextflow, tmp_path):
    """--help prints every parameter of nextflow_schema.json and exits 0; the
    defaults in nextflow.config are the schema's, and every parameter of the
    config is in the schema (and the reverse)."""
    schema = json.loads((REPO / "nextflow_schema.json").read_text())
    props = {n: p for g in schema["$defs"].values() for n, p in g["properties"].items()}
    res = nextflow(tmp_path, "--help")
    assert res.returncode == 0, res.stdout + res.stderr
    for name in props:
        assert f"--{name}" in res.stdout, name
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())

    res = subprocess.run([nextflow.executable, "config", "-flat", str(REPO)], cwd=tmp_path, env=nextflow.env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    config = {}
    for line in res.stdout.splitlines():
        m = re.match(r"params\.(\w+) = (.*)$", line)
        if m:
            config[m.group(1)] = m.group(2)
    assert sorted(config) == sorted(props)
    for name, prop in props.items():
        if name == "trace_report_suffix":
            continue
        expected = "null" if "default" not in prop else (
            str(prop["default"]).lower() if isinstance(prop["default"], bool) else
            str(prop["default"]) if isinstance(prop["default"], (int, float)) else f"'{prop['default']}'")
        assert config[name] == expected, (name, config[name], expected)


# --------------------------------------------------------------------------- kill, then -resume


@pytest.mark.parametrize("process,seed", [("SEGMENT_BLOCK", 1), ("FINALIZE", 2)])
def test_killed_run_resumed_gives_the_same_tree(test_profile_run, nextflow, tmp_path, process, seed):
    """Nextflow and its tasks killed (SIGKILL to the whole session) while a task
    of ``process`` runs, then ``-resume``: the published label image and
    regions table equal an uninterrupted run's byte for byte."""
    launch = tmp_path / "launch"
    launch.mkdir()
    outdir = launch / "results"
    args = ["-profile", "test", "--outdir", outdir]
    proc = subprocess.Popen(nextflow.command(*args), cwd=launch, env=nextflow.environment(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    started = []
    while time.time() < deadline and proc.poll() is None:
        started = [d for d in task_dirs(launch, process) if (d / ".command.begin").exists()]
        if started:
            break
        time.sleep(0.05)
    assert started, f"no {process} task started"
    time.sleep(np.random.default_rng(seed).uniform(0.0, 0.6))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    ok(nextflow(launch, *args, "-resume"))
    clean = test_profile_run["outdir"] / "example"
    # the example image is written by a task of each run, at another path: the plan
    # hash stamped on the label image differs, everything else is the same
    def unstamped(path: Path) -> bytes:
        if path.name in (".zattrs", "zarr.json"):
            doc = json.loads(path.read_text())
            doc.pop("pystitch", None)
            return json.dumps(doc, sort_keys=True).encode()
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return repr(pq.read_table(path).replace_schema_metadata(None).to_pydict()).encode()
        return path.read_bytes()

    for name in ("labels.zarr", "labels_report/regions.csv", "labels_report/regions.parquet"):
        a, b = outdir / "example" / name, clean / name
        files = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) if b.is_dir() else [Path()]
        assert sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file()) == files if b.is_dir() else a.is_file()
        for rel in files:
            assert unstamped(a / rel) == unstamped(b / rel), (name, rel)
    assert not any(p.name.endswith((".partial", ".incoming", ".incomplete")) for p in outdir.rglob("*"))
