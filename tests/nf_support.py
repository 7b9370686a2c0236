"""What the pipeline tests share: the pinned Nextflow, its runs, traces and
the reference runs of ``pystitch run``.

Nextflow comes from scripts/install-nextflow.sh (pinned version, no plugins);
tasks run the bin/ launchers with the ``python3`` of this interpreter's
environment first on PATH.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import load

REPO = Path(__file__).resolve().parents[1]
MAIN = REPO / "main.nf"
VENV_BIN = Path(sys.executable).parent
SEGMENTERS = REPO / "tests" / "segmenters.py"
# what -profile test sets (conf/test.config), for the reference runs
TEST_SETTINGS = ["--block-shape", "16,64,64", "--halo", "2,4,4"]
PIPELINE_STEPS = ["EXAMPLE_IMAGE", "PLAN_BLOCKS", "SEGMENT_BLOCK", "GATHER_MANIFESTS", "FACE_PAIRS", "RESOLVE",
                  "APPLY_LUT", "FINALIZE"]
# the trace fields the cluster tests read (a -c config sets them)
TRACE_FIELDS = "task_id,hash,native_id,name,status,exit,attempt,workdir,cpus,memory,time,peak_rss,queue"


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
            PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        )
        self.env.pop("NXF_WORK", None)
        self.env.pop("NXF_SYNTAX_PARSER", None)

    def command(self, *args) -> list[str]:
        return [self.executable, "run", str(MAIN), *[str(a) for a in args]]

    def environment(self, parser: str | None = None, **extra: str) -> dict[str, str]:
        env = dict(self.env, **extra)
        if parser:
            env["NXF_SYNTAX_PARSER"] = parser
        return env

    def run(self, launch_dir: Path, *args, timeout: int = 600, parser: str | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        """``nextflow run main.nf ARGS`` from ``launch_dir`` (which holds .nextflow/ and work/);
        ``parser="v2"`` runs it under the strict syntax parser."""
        launch_dir.mkdir(parents=True, exist_ok=True)
        return subprocess.run(self.command(*args), cwd=launch_dir, env=self.environment(parser, **(env or {})),
                              capture_output=True, text=True, timeout=timeout)

    def __call__(self, launch_dir: Path, *args, **kw) -> subprocess.CompletedProcess:
        return self.run(launch_dir, *args, **kw)


def install_nextflow(tmp_path_factory) -> Nextflow:
    if not (shutil.which("java") or os.environ.get("JAVA_HOME") or os.environ.get("NXF_JAVA_HOME")):
        pytest.skip("Nextflow needs Java 17+; none found (no java on PATH, no JAVA_HOME)")
    res = subprocess.run([str(REPO / "scripts" / "install-nextflow.sh")], capture_output=True, text=True,
                         timeout=1800)
    if res.returncode != 0:
        pytest.fail(f"scripts/install-nextflow.sh failed ({res.returncode}):\n{res.stderr[-4000:]}")
    executable = res.stdout.strip().splitlines()[-1]
    assert os.access(executable, os.X_OK), executable
    return Nextflow(executable, tmp_path_factory.mktemp("nxf_home"))


@pytest.fixture(scope="session")
def nextflow(tmp_path_factory) -> Nextflow:
    """The pinned Nextflow from scripts/install-nextflow.sh (idempotent, instant once installed)."""
    return install_nextflow(tmp_path_factory)


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


def image_of(launch: Path, sample: str = "example") -> str:
    """The image a run segmented (from its plan)."""
    plans = sorted(launch.glob("work/*/*/plan.json"))
    for plan in plans:
        doc = json.loads(plan.read_text())
        if doc.get("image") and Path(doc["image"]["uri"]).name.startswith(sample):
            return doc["image"]["uri"]
    raise AssertionError(f"no plan of {sample} under {launch}/work")
