"""Object storage: the input, the big stores, the output and the report at
``s3://`` URLs of a real S3-compatible server (moto's server mode, started
here on a free port and stopped after the module).

What holds: a run through the object store writes the labels and the
report a run on the filesystem writes; nothing of the run stays in the
bucket but its outputs; no input chunk is fetched twice by one task; a
publication that fails leaves nothing at the output URL; a bad URL is one
line before any work, and nothing is written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import s3fs
import zarr

from helpers import load
from pystitch.example import blobs

VENV_BIN = Path(sys.executable).parent
BLOCK = (16, 24, 24)
HALO = (2, 4, 4)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Requests(logging.Handler):
    """Every request the server answered (werkzeug's access log): ``(method, path)``."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = re.search(r'"(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP', record.getMessage())
        if match:
            self.seen.append((match.group(1), match.group(2).split("?")[0]))


@pytest.fixture(scope="module")
def server():
    from moto.server import ThreadedMotoServer

    port = _free_port()
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    srv.start()
    requests = _Requests()
    werkzeug = logging.getLogger("werkzeug")
    saved = werkzeug.level, werkzeug.propagate
    werkzeug.addHandler(requests)
    werkzeug.setLevel(logging.INFO)
    werkzeug.propagate = False  # the access log is counted here, not shown
    try:
        yield f"http://127.0.0.1:{port}", requests
    finally:
        werkzeug.removeHandler(requests)
        werkzeug.setLevel(saved[0])
        werkzeug.propagate = saved[1]
        srv.stop()


@pytest.fixture
def s3(server, monkeypatch, tmp_path):
    """A fresh bucket, credentials in the AWS environment, the endpoint in PYSTITCH_STORAGE_OPTIONS."""
    endpoint, requests = server
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("PYSTITCH_STORAGE_OPTIONS", f'{{"endpoint_url": "{endpoint}"}}')
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing", skip_instance_cache=True)
    bucket = f"b{os.urandom(6).hex()}"
    fs.mkdir(bucket)
    requests.seen.clear()
    return {"endpoint": endpoint, "fs": fs, "bucket": bucket, "url": f"s3://{bucket}", "requests": requests,
            "options": {"endpoint_url": endpoint}}


def _image(tmp_path: Path, s3: dict) -> tuple[str, str, np.ndarray]:
    """The same small image on the filesystem and in the bucket."""
    image = blobs((40, 60, 60), seed=3)
    local = str(tmp_path / "in.zarr")
    url = f"{s3['url']}/in.zarr"
    for where, extra in ((local, {}), (url, {"storage_options": s3["options"]})):
        zarr.create_array(store=where, shape=image.shape, dtype=image.dtype, chunks=(16, 24, 24), **extra)[...] = image
    return local, url, image


def _objects(s3: dict) -> list[str]:
    return sorted(p.split("/", 1)[1] for p in s3["fs"].find(s3["bucket"]))


def test_run_through_the_object_store_equals_the_filesystem_run(tmp_path, s3):
    import pystitch

    local, url, _ = _image(tmp_path, s3)
    options = dict(block_shape=BLOCK, halo=HALO, backend="threshold", threshold=500, workers=2, progress=False)
    a = pystitch.run(local, str(tmp_path / "fs" / "out.zarr"), **options)
    b = pystitch.run(url, f"{s3['url']}/out.zarr", report_dir=f"{s3['url']}/report", work_dir=str(tmp_path / "wd"),
                     **options)
    assert a["objects"] == b["objects"] > 3
    remote_labels = zarr.open_group(f"{s3['url']}/out.zarr", mode="r", storage_options=s3["options"])["0"][:]
    np.testing.assert_array_equal(remote_labels, load(tmp_path / "fs" / "out.zarr"))
    regions = s3["fs"].cat_file(f"{s3['bucket']}/report/regions.csv")
    assert regions == (tmp_path / "fs" / "out_report" / "regions.csv").read_bytes()
    # only the input and the outputs: the big stores, the publishing marker and the work dir are gone
    tops = {name.split("/")[0] for name in _objects(s3)}
    assert tops == {"in.zarr", "out.zarr", "report"}
    assert not any(".pystitch-publishing" in name for name in _objects(s3))
    assert not (tmp_path / "wd").exists()


@pytest.mark.cellpose
def test_the_flows_rule_keeps_its_flow_store_with_the_other_big_stores(tmp_path, s3):
    """--rule flows with the big stores in the bucket: the flow store goes there
    too (where every task of a cloud run reaches it), the labels are the
    filesystem run's, and nothing of the run stays in the bucket."""
    pytest.importorskip("cellpose", reason="cellpose is not installed")
    import pystitch
    import tiny_cellpose as tiny
    from pystitch.plan import Plan

    image = (tiny.synthetic_blobs((64, 80), seed=2, fill=0.45, touching=0.6)[0] * 1000).astype(np.uint16)
    local = str(tmp_path / "in.zarr")
    zarr.create_array(store=local, shape=image.shape, dtype=image.dtype, chunks=(32, 32))[...] = image
    options = dict(block_shape=(32, 40), backend="cellpose", rule="flows", progress=False, pictures=False, workers=1,
                   pretrained_model=str(tiny.tiny_model_path()), diameter=18.0, device="cpu")
    a = pystitch.run(local, str(tmp_path / "fs" / "out.zarr"), **options)
    stores = f"{s3['url']}/stores"
    b = pystitch.run(local, str(tmp_path / "s3" / "out.zarr"), work_dir=str(tmp_path / "wd"), store_dir=stores,
                     keep_work=True, **options)
    assert a["objects"] == b["objects"] >= 5
    np.testing.assert_array_equal(load(tmp_path / "s3" / "out.zarr"), load(tmp_path / "fs" / "out.zarr"))
    plan = Plan.load(tmp_path / "wd")
    assert plan.flows_uri == f"{stores}/flows.zarr"
    assert any(name.startswith("stores/flows.zarr/") for name in _objects(s3))
    assert not (tmp_path / "wd" / "flows.zarr").exists()
    plan.clean_work_dir(finished=True)  # what a run does after success without --keep-work
    assert _objects(s3) == []


def test_a_task_fetches_each_input_chunk_once(tmp_path, s3):
    """plan-blocks (the scan) and one segment-block task over every block: no
    input chunk is requested twice (the server's own log of requests)."""
    import pystitch

    _, url, _ = _image(tmp_path, s3)
    chunks = re.compile(rf"^/{s3['bucket']}/in\.zarr/c/")
    requests = s3["requests"].seen
    plan = pystitch.plan_blocks(url, f"{s3['url']}/out.zarr", block_shape=BLOCK, halo=HALO, backend="threshold",
                                work_dir=str(tmp_path / "wd"), backend_options={"threshold": "otsu"})
    scanned = Counter(path for method, path in requests if method == "GET" and chunks.match(path))
    assert len(scanned) == 3 * 3 * 3 and max(scanned.values()) == 1, scanned
    requests.clear()
    pystitch.segment_blocks(plan, plan.work_blocks())
    read = Counter(path for method, path in requests if method == "GET" and chunks.match(path))
    assert len(read) == 27 and max(read.values()) == 1, read


def test_a_failed_publication_leaves_nothing_at_the_output(tmp_path, s3, monkeypatch):
    from pystitch.storage import remote

    _, url, _ = _image(tmp_path, s3)
    src = tmp_path / "partial.zarr"
    zarr.create_array(store=str(src), shape=(8, 8), chunks=(4, 4), dtype="u4")[...] = 1
    real_put = s3fs.S3FileSystem._put_file
    sent = []

    async def failing_put(self, lpath, rpath, *args, **kwargs):
        sent.append(rpath)
        if rpath.endswith("zarr.json"):  # the chunks went; the metadata (written last) fails
            raise ConnectionError("the network went away")
        return await real_put(self, lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", failing_put)
    target = f"{s3['url']}/published.zarr"
    with remote.using(s3["options"]), pytest.raises(ConnectionError):
        remote.copy_tree(str(src), target)
    assert any("/c/" in path for path in sent)  # chunks were there before the failure
    assert not any(name.startswith("published.zarr") for name in _objects(s3))
    monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", real_put)
    with remote.using(s3["options"]):
        remote.copy_tree(str(src), target)
    np.testing.assert_array_equal(zarr.open_array(target, mode="r", storage_options=s3["options"])[:], 1)
    assert ".pystitch-publishing.json" not in " ".join(_objects(s3))


def _cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "pystitch"), "run", *args, "--block-shape", "16,24,24", "--threshold",
                           "500"], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("case", ["unreachable endpoint", "missing credentials", "no such bucket",
                                  "unsupported scheme"])
def test_bad_object_store_input_is_one_line_and_writes_nothing(tmp_path, s3, case):
    _, url, _ = _image(tmp_path, s3)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    output = f"{s3['url']}/out.zarr"
    expected = {"unreachable endpoint": "Cannot reach the object store", "missing credentials": "No credentials",
                "no such bucket": "does not exist", "unsupported scheme": "not supported"}[case]
    if case == "unreachable endpoint":
        env["PYSTITCH_STORAGE_OPTIONS"] = f'{{"endpoint_url": "http://127.0.0.1:{_free_port()}"}}'
    elif case == "missing credentials":
        env.pop("AWS_ACCESS_KEY_ID")
        env.pop("AWS_SECRET_ACCESS_KEY")
    elif case == "no such bucket":
        output = "s3://no-such-bucket-here/out.zarr"
    else:
        url = "gs://somewhere/in.zarr"
    before = _objects(s3)
    done = _cli([url, output, "--work-dir", str(tmp_path / "wd")], env)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "wd").exists()
    assert _objects(s3) == before


def _same_but_the_input_location(got: Path, ref: Path) -> None:
    """``got/labels.zarr`` and ``got/labels_report`` (a run of an image at a URL) equal
    ``ref/…`` (a run of the same image on the filesystem): every chunk and array
    document the same bytes; the root's marker names another plan (the plan's hash
    covers the input's location) and is otherwise the same."""
    from nf_support import tree

    got_files, ref_files = tree(got / "labels.zarr"), tree(ref / "labels.zarr")
    assert sorted(got_files) == sorted(ref_files)
    assert [n for n in got_files if got_files[n] != ref_files[n]] == [".zattrs"]
    unmarked = [json.loads(files[".zattrs"]) for files in (got_files, ref_files)]
    for attrs in unmarked:
        for key in ("plan_hash", "request"):
            attrs["pystitch"].pop(key)
    assert unmarked[0] == unmarked[1]
    assert (got / "labels_report" / "regions.csv").read_bytes() == (ref / "labels_report" / "regions.csv").read_bytes()
    np.testing.assert_array_equal(load(got / "labels.zarr"), load(ref / "labels.zarr"))


@pytest.mark.slow
@pytest.mark.nextflow
def test_pipeline_reads_and_writes_the_object_store(tmp_path, s3, tmp_path_factory):
    """``nextflow run main.nf --input s3://... --outdir s3://... --staging_dir s3://...``
    (local executor): the label image and regions table are byte for byte
    those of ``pystitch run`` on the same image on the filesystem."""
    from nf_support import install_nextflow, ok, reference_run
    from pystitch.example import write_example

    nextflow = install_nextflow(tmp_path_factory)
    local = write_example(tmp_path / "img.zarr", shape=(24, 96, 96))
    s3["fs"].put(str(local), f"{s3['bucket']}/img.zarr", recursive=True)
    launch = tmp_path / "launch"
    env = {k: os.environ[k] for k in (*CREDENTIALS, "AWS_EC2_METADATA_DISABLED", "AWS_CONFIG_FILE",
                                      "AWS_SHARED_CREDENTIALS_FILE", "PYSTITCH_STORAGE_OPTIONS")}
    ok(nextflow(launch, "-profile", "test", "--input", f"{s3['url']}/img.zarr", "--outdir", f"{s3['url']}/results",
                "--staging_dir", f"{s3['url']}/staging", env=env))
    got = tmp_path / "got"
    for name in ("labels.zarr", "labels_report"):
        s3["fs"].get(f"{s3['bucket']}/results/img/{name}", str(got / name), recursive=True)
    reference_run(local, tmp_path / "ref" / "labels.zarr")
    _same_but_the_input_location(got, tmp_path / "ref")
    assert not any(".pystitch-publishing" in name for name in _objects(s3))
    assert (launch / "pipeline_info").is_dir()  # the run reports stay on the launch directory


def _check(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pystitch.storage.remote", "check", *args], capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.mark.parametrize("case", ["unreachable endpoint", "missing credentials", "no such bucket",
                                  "unsupported scheme", "no such image"])
def test_the_check_before_a_workflow_is_one_line(tmp_path, s3, case):
    """``python -m pystitch.storage.remote check``, which the pipeline runs before
    any task: the first problem of any URL is one line, exit 1."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    s3["fs"].pipe_file(f"{s3['bucket']}/in.zarr/zarr.json", b"{}")
    image, outdir = f"{s3['url']}/in.zarr", f"{s3['url']}/results"
    expected = {"unreachable endpoint": "Cannot reach the object store", "missing credentials": "No credentials",
                "no such bucket": "The bucket no-such-bucket-here of s3://no-such-bucket-here/results (the --outdir) "
                "does not exist", "unsupported scheme": "Got gs://elsewhere/staging instead",
                "no such image": f"Nothing found at {s3['url']}/missing.zarr (the --input)"}[case]
    staging = f"{s3['url']}/staging"
    if case == "unreachable endpoint":
        env["PYSTITCH_STORAGE_OPTIONS"] = f'{{"endpoint_url": "http://127.0.0.1:{_free_port()}"}}'
    elif case == "missing credentials":
        env.pop("AWS_ACCESS_KEY_ID")
        env.pop("AWS_SECRET_ACCESS_KEY")
    elif case == "no such bucket":
        outdir = "s3://no-such-bucket-here/results"
    elif case == "unsupported scheme":
        staging = "gs://elsewhere/staging"
    else:
        image = f"{s3['url']}/missing.zarr"
    done = _check(["--exists", "--input", image, "--bucket", "--staging_dir", staging, "--bucket", "--outdir", outdir],
                  env)
    assert done.returncode == 1 and done.stdout == "", done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], done.stderr


def test_the_check_lists_existing_outputs(tmp_path, s3):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    s3["fs"].pipe_file(f"{s3['bucket']}/results/a/labels.zarr/zarr.json", b"{}")
    done = _check(["--absent", "--outdir", f"{s3['url']}/results/a/labels.zarr", "--absent", "--outdir",
                   f"{s3['url']}/results/b/labels.zarr", "--absent", "--outdir", str(tmp_path / "local")], env)
    assert done.returncode == 0 and done.stderr == "", done
    assert done.stdout.splitlines() == [f"{s3['url']}/results/a/labels.zarr"]


def _nextflow_env(**extra: str) -> dict[str, str]:
    keys = (*CREDENTIALS, "AWS_EC2_METADATA_DISABLED", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
            "PYSTITCH_STORAGE_OPTIONS")
    return {**{k: os.environ[k] for k in keys if k in os.environ}, **extra}


@pytest.mark.slow
@pytest.mark.nextflow
@pytest.mark.parametrize("case", ["unreachable endpoint (--input)", "missing credentials (--staging_dir)",
                                  "no such bucket (samplesheet)", "unsupported scheme (--outdir)",
                                  "existing output (--outdir)"])
def test_pipeline_checks_its_urls_before_any_task(tmp_path, s3, tmp_path_factory, case):
    """A bad object-store URL stops the pipeline in its initialisation with one
    line: the trace shows no task."""
    from nf_support import install_nextflow, trace_rows
    from pystitch.example import write_example

    nextflow = install_nextflow(tmp_path_factory)
    local = write_example(tmp_path / "img.zarr", shape=(24, 96, 96))
    s3["fs"].put(str(local), f"{s3['bucket']}/img.zarr", recursive=True)
    env = _nextflow_env(PYTHONPATH=os.pathsep.join(sys.path))
    image, outdir, staging = f"{s3['url']}/img.zarr", f"{s3['url']}/results", f"{s3['url']}/staging"
    if case.startswith("unreachable"):
        env["PYSTITCH_STORAGE_OPTIONS"] = f'{{"endpoint_url": "http://127.0.0.1:{_free_port()}"}}'
        expected = f"Cannot reach the object store http://127.0.0.1:"
    elif case.startswith("missing credentials"):
        env["AWS_ACCESS_KEY_ID"] = env["AWS_SECRET_ACCESS_KEY"] = ""
        image, outdir = str(local), str(tmp_path / "results")
        expected = f"No credentials to reach {staging} (the --staging_dir)"
    elif case.startswith("no such bucket"):
        sheet = tmp_path / "samples.csv"
        sheet.write_text(f"sample,image\nhere,{local}\nthere,s3://no-such-bucket-here/img.zarr\n")
        image = str(sheet)
        expected = "The bucket no-such-bucket-here of s3://no-such-bucket-here/img.zarr (the image of sample there"
    elif case.startswith("unsupported"):
        outdir = "gs://elsewhere/results"
        expected = "Got gs://elsewhere/results instead (URLs of scheme gs:// are not supported)"
    else:
        s3["fs"].pipe_file(f"{s3['bucket']}/results/img/labels.zarr/zarr.json", b"{}")
        expected = (f"{s3['url']}/results/img/labels.zarr exists. Choose another --outdir, add --overwrite true "
                    "to replace it")
    before = _objects(s3)
    launch = tmp_path / "launch"
    res = nextflow(launch, "-profile", "test", "--input", image, "--outdir", outdir, "--staging_dir", staging,
                   "-with-trace", launch / "trace.txt", env=env, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    said = [line for line in out.splitlines() if line.strip() and not line.startswith(("N E X T F L O W", "Launching"))]
    assert len(said) == 1 and expected in said[0], out[-3000:]
    assert "Traceback" not in out
    assert trace_rows(launch / "trace.txt") == []
    assert _objects(s3) == before


PODMAN = r"""#!/bin/bash
# stand-in for podman: keeps its arguments, runs nothing
printf '%s\n' "$@" > "$PWD/.podman-args"
exit 1
"""


@pytest.mark.slow
@pytest.mark.nextflow
@pytest.mark.parametrize("where", ["url", "local"])
def test_container_mounts_a_local_staging_dir_and_never_a_url(tmp_path, s3, tmp_path_factory, where):
    """-profile podman: a task's .command.run mounts a local --staging_dir at its own
    path; with an s3:// --staging_dir it mounts pystitch-staging/ of the work
    directory (the plans' small files) and nothing named after the URL. A
    stand-in podman records the call, so no image is needed."""
    from nf_support import install_nextflow, trace_rows

    nextflow = install_nextflow(tmp_path_factory)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "podman").write_text(PODMAN)
    (bin_dir / "podman").chmod(0o755)
    launch = tmp_path / "launch"
    staging = f"{s3['url']}/staging" if where == "url" else str(tmp_path / "staging")
    config = tmp_path / "trace.config"
    config.write_text("trace.fields = 'name,status,workdir'\n")
    env = _nextflow_env(PATH=f"{bin_dir}:{nextflow.env['PATH']}", PYTHONPATH=os.pathsep.join(sys.path))
    res = nextflow(launch, "-profile", "podman,test", "-c", config, "--outdir", tmp_path / "results",
                   "--staging_dir", staging, "-with-trace", launch / "trace.txt", env=env, timeout=300)
    assert res.returncode != 0  # the stand-in runs nothing
    (row,) = trace_rows(launch / "trace.txt")
    command = (Path(row["workdir"]) / ".command.run").read_text()
    assert "podman run" in command, command
    mounts = re.findall(r"-v '([^']*)'", command)
    expected = str(launch / "work" / "pystitch-staging") if where == "url" else staging
    assert f"{expected}:{expected}" in mounts, mounts
    assert not any("s3:" in mount or "staging:" in mount.replace(expected, "") for mount in mounts), mounts
    assert Path(expected).is_dir()


@pytest.mark.slow
@pytest.mark.nextflow
def test_pipeline_samplesheet_of_object_store_and_local_images(tmp_path, s3, tmp_path_factory):
    """A samplesheet whose images are in the bucket and on the filesystem: each
    output equals ``pystitch run`` of the image on the filesystem."""
    from nf_support import assert_same_labels, install_nextflow, ok, reference_run
    from pystitch.example import write_example

    nextflow = install_nextflow(tmp_path_factory)
    a = write_example(tmp_path / "a.zarr", shape=(24, 96, 96), seed=1)
    b = write_example(tmp_path / "b.zarr", shape=(20, 70, 50), seed=2)
    s3["fs"].put(str(a), f"{s3['bucket']}/images/a.zarr", recursive=True)
    sheet = tmp_path / "samples.csv"
    sheet.write_text(f"sample,image\nremote,{s3['url']}/images/a.zarr\nlocal,{b}\n")
    launch, outdir = tmp_path / "launch", tmp_path / "results"
    ok(nextflow(launch, "-profile", "test", "--input", sheet, "--outdir", outdir,
                env=_nextflow_env(PYTHONPATH=os.pathsep.join(sys.path))))
    reference_run(b, tmp_path / "local.zarr")
    assert_same_labels(outdir / "local" / "labels.zarr", tmp_path / "local.zarr")
    reference_run(a, tmp_path / "ref" / "labels.zarr")
    _same_but_the_input_location(outdir / "remote", tmp_path / "ref")
