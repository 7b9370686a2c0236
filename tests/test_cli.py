"""The five CLIs as separate processes give the same result as ``pystitch run``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import load, save
from pystitch._version import __version__
from pystitch.example import blobs

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
STEPS = ["plan-blocks", "segment-block", "face-pairs", "resolve", "apply-lut"]


def sh(*args, cwd=None, check=True) -> subprocess.CompletedProcess:
    """Run a bin/ launcher the way Nextflow does: bin/ and the environment on PATH."""
    env = dict(os.environ, PATH=f"{REPO / 'bin'}{os.pathsep}{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    res = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"{args} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def test_cli_chain_equals_run(tmp_path):
    image = blobs((20, 50, 40), seed=4, sigma=2.0, fraction=0.2)
    img = save(tmp_path / "img.zarr", image)

    plan = sh("plan-blocks", img, tmp_path / "chain.zarr", "--block-shape", "8,16,16", "--halo", "1,2,2",
              "--backend", "threshold", "--threshold", "500", "--connectivity", "full",
              "--work-dir", tmp_path / "work").stdout.strip().splitlines()[-1]
    assert Path(plan).name == "plan.json"
    n_blocks = json.loads(Path(plan).read_text())["n_blocks"]
    assert n_blocks == 3 * 4 * 3
    # tasks as Nextflow runs them: batches, manifests written into the task's own directory
    for i, batch in enumerate(["0-9", "10-19,20", "21-35"]):
        task = tmp_path / f"task{i}"
        task.mkdir()
        sh("segment-block", plan, "--blocks", batch, "--manifest-dir", ".", cwd=task)
    manifests = tmp_path / "manifests.jsonl"
    manifests.write_text("".join(p.read_text() for p in sorted(tmp_path.glob("task*/block-*.json"))))
    for batch in ["0-17", "18-35"]:
        sh("face-pairs", plan, "--blocks", batch, "--manifests", manifests, "--out", tmp_path / "pairs")
    sh("resolve", plan, "--manifests", manifests, "--pairs", str(tmp_path / "pairs" / "*.npz"))
    sh("apply-lut", plan, "--blocks", "all", "--out", tmp_path / "stats")
    sh("pystitch", "finalize", plan, "--stats", tmp_path / "stats")

    sh("pystitch", "run", img, tmp_path / "run.zarr", "--block-shape", "8,16,16", "--halo", "1,2,2",
       "--threshold", "500", "--connectivity", "3", "--workers", "2")
    chain = load(tmp_path / "chain.zarr")
    run = load(tmp_path / "run.zarr")
    assert chain.max() > 3
    np.testing.assert_array_equal(chain, run)
    assert (tmp_path / "chain_report" / "regions.csv").read_bytes() == \
        (tmp_path / "run_report" / "regions.csv").read_bytes()


def test_finalize_names_where_a_workflow_publishes(tmp_path):
    """A workflow's finalize task writes into its own directory and the
    workflow publishes from there: with --published-in the summary names the
    published paths, where the user finds them, not the task's."""
    img = save(tmp_path / "img.zarr", blobs((12, 32, 32), seed=4, sigma=2.0, fraction=0.2))
    plan = sh("plan-blocks", img, tmp_path / "out.zarr", "--block-shape", "6,16,16", "--halo", "1",
              "--threshold", "500", "--work-dir", tmp_path / "work").stdout.strip().splitlines()[-1]
    for step in ("segment-block", "face-pairs", "apply-lut"):
        sh(step, plan, "--blocks", "all")
        if step == "face-pairs":
            sh("resolve", plan)
    task, results = tmp_path / "task", tmp_path / "results"
    task.mkdir()
    where = ["--output", "s/labels.zarr", "--report-dir", "s/labels_report"]
    bad = sh("pystitch", "finalize", plan, "--output", tmp_path / "abs.zarr", "--report-dir", "s/labels_report",
             "--published-in", results, cwd=task, check=False)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "--published-in needs --output as a path relative" in bad.stderr and str(tmp_path / "abs.zarr") in bad.stderr
    assert not (tmp_path / "abs.zarr").exists()
    sh("pystitch", "finalize", plan, *where, "--published-in", results, cwd=task)
    summary = json.loads((task / "s" / "labels_report" / "summary.json").read_text())
    assert summary["output"] == str(results / "s" / "labels.zarr")
    assert summary["report_dir"] == str(results / "s" / "labels_report")
    assert load(task / "s" / "labels.zarr").max() > 0


@pytest.mark.parametrize("cmd", STEPS + ["pystitch", "pystitch run", "pystitch finalize"])
def test_help_goes_to_stdout_and_lists_kebab_case_options(cmd):
    res = sh(*cmd.split(), "--help")
    assert res.returncode == 0 and res.stderr == ""
    assert res.stdout.startswith("usage: ")
    assert "_" not in "".join(w for w in res.stdout.split() if w.startswith("--"))   # kebab-case flags only
    if cmd == "segment-block":
        assert "--blocks IDS" in res.stdout and "manifest" in res.stdout.lower()
    if cmd in ("plan-blocks", "pystitch run"):
        # block shape is a flag, and each backend's own options are listed
        assert "--block-shape" in res.stdout and "BLOCK_SHAPE" not in res.stdout.split("options")[0]
        for flag in ("--threshold", "--sigma", "--function", "--kwargs", "--diameter", "--pretrained-model"):
            assert flag in res.stdout, flag


def test_no_generated_short_flags(tmp_path):
    """-h is help (never --halo), -q quiet, -v verbose; nothing else is a short flag."""
    assert sh("plan-blocks", "-h").stdout.startswith("usage: plan-blocks")
    res = sh("plan-blocks", "img.zarr", "out.zarr", "-b", "8", check=False)
    assert res.returncode == 2 and "-b" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("typo,suggestion", [("--worker", "--workers"), ("--block-shap", "--block-shape"),
                                             ("--thresold", "--threshold"), ("--halo_size", "--halo")])
def test_misspelt_flag_names_itself_and_suggests(tmp_path, typo, suggestion):
    res = sh("pystitch", "run", tmp_path / "img.zarr", tmp_path / "out.zarr", "--block-shape", "8", typo, "2",
             check=False)
    assert res.returncode == 2
    assert typo.replace("_", "-") in res.stderr and f"Did you mean {suggestion}?" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not (tmp_path / "out.zarr").exists()


def test_flag_spellings(tmp_path):
    """snake_case flags, and on/off flags with or without a value, mean the same."""
    img = save(tmp_path / "img.zarr", blobs((16, 32, 32), seed=1))
    for i, extra in enumerate([["--skip_empty", "false"], ["--skip-empty=false"], ["--no-skip-empty"]]):
        plan = sh("plan-blocks", img, tmp_path / f"o{i}.zarr", "--block_shape", "8", "--halo", "1",
                  "--threshold", "500", *extra).stdout.strip()
        assert json.loads(Path(plan).read_text())["empty_blocks"] == []
    res = sh("plan-blocks", img, tmp_path / "o9.zarr", "--block-shape", "8", "--halo", "1", "--threshold", "500",
             "--skip-empty", "maybe", check=False)
    assert res.returncode == 2 and "maybe" in res.stderr


def test_version():
    assert sh("pystitch", "--version").stdout.strip() == __version__
    assert sh("plan-blocks", "--version").stdout.strip() == __version__


def test_console_scripts_are_installed():
    for cmd in STEPS + ["pystitch"]:
        assert (VENV_BIN / cmd).exists(), f"{cmd} is not installed next to {sys.executable}"


def test_error_is_one_clear_line(tmp_path):
    res = sh("plan-blocks", tmp_path / "missing.zarr", tmp_path / "out.zarr", "--block-shape", "8",
             "--halo", "1", "--threshold", "1", check=False)
    assert res.returncode == 1
    assert "Input image not found" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out.zarr").exists()


def test_quiet_silences_info(tmp_path):
    img = save(tmp_path / "img.zarr", blobs((16, 32, 32), seed=1))
    loud = sh("plan-blocks", img, tmp_path / "o.zarr", "--block-shape", "8", "--halo", "1", "--threshold", "500")
    quiet = sh("plan-blocks", img, tmp_path / "o.zarr", "--block-shape", "8", "--halo", "1", "--threshold", "500",
               "--quiet")
    assert "INFO" in loud.stderr and "INFO" not in quiet.stderr


def test_batches_leave_out_empty_blocks(tmp_path):
    image = np.full((64, 64), 100, np.uint16)
    image[2:10, 2:30] = 1000                       # blocks 0 and 1 (of 16) hold objects
    image[40:44, 40:44] = 1000                     # block 10
    img = save(tmp_path / "img.zarr", image)
    plan = sh("plan-blocks", img, tmp_path / "o.zarr", "--block-shape", "16", "--halo", "1",
              "--threshold", "500").stdout.strip()
    assert sh("pystitch", "batches", plan, "--size", "2").stdout.split() == ["0-1", "10"]
    assert sh("pystitch", "batches", plan, "--size", "1").stdout.split() == ["0", "1", "10"]


def test_a_step_gives_zarr_the_cores_it_may_run_on(tmp_path):
    """zarr's codec thread pool defaults to the node's cores + 4 in every
    process; a step takes the cores it may run on instead (a cluster job's
    allocation; here what taskset allows), unless ZARR_THREADING__MAX_WORKERS
    says."""
    img = save(tmp_path / "img.zarr", blobs((16, 32, 32), seed=1))
    seg = Path(__file__).parent / "segmenters.py"
    plan = sh("plan-blocks", img, tmp_path / "out.zarr", "--block-shape", "8,16,16", "--halo", "1",
              "--backend", "callable", "--function", f"{seg}:zarr_threads", "--kwargs", '{"expected": 1}',
              "--work-dir", tmp_path / "work").stdout.strip().splitlines()[-1]
    sh("taskset", "-c", "0", "segment-block", plan, "--blocks", "0-3")
    if len(os.sched_getaffinity(0)) > 1:   # on every core: more threads than the segmenter expects
        res = sh("segment-block", plan, "--blocks", "4-7", check=False)
        assert res.returncode == 1 and "codec threads in this worker, not 1" in res.stderr
    env_one = sh("env", "ZARR_THREADING__MAX_WORKERS=1", "segment-block", plan, "--blocks", "4-7")
    assert env_one.returncode == 0
