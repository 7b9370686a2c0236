"""Bad input, from the command line, as a user meets it.

Every case runs the real command in its own process and asserts: the exit
status (1 for a run that fails, 2 for a command line that cannot be parsed),
exactly one line on stderr that names what was expected and where (a path,
a block, a chunk), no traceback, nothing at the output path, and the input
unchanged byte for byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from helpers import save
from pystitch.example import blobs, write_example

VENV_BIN = Path(sys.executable).parent
SEG = str(Path(__file__).parent / "segmenters.py")
RUN = ["--block-shape", "8,16,16", "--halo", "1,2,2", "--threshold", "500"]


def exists(path) -> bool:
    try:
        return Path(path).exists()
    except OSError:  # a name too long for the filesystem does not exist
        return False


def tree(path: Path) -> dict[str, bytes]:
    path = Path(path)
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ---- inputs the cases need (t: the test's tmp_path, i: a good image)

def _garbage_tiff(t, i):
    p = t / "garbage.tif"
    p.write_bytes(b"not a tiff at all")
    return p


def _plain_dir(t, i):
    (t / "plain").mkdir()
    (t / "plain" / "x.txt").write_text("hello")
    return t / "plain"


def _group(t, i):
    g = zarr.open_group(str(t / "group.zarr"), mode="w")
    g.create_array("a", shape=(4, 4), dtype="u1")
    return t / "group.zarr"


def _ome(t, i, scale=None, shape=(16, 32, 32)):
    path = write_example(t / "ome.zarr", shape=shape)
    if scale is not None:
        attrs = json.loads((path / ".zattrs").read_text())
        attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] = scale
        (path / ".zattrs").write_text(json.dumps(attrs))
    return path


def _corrupt_chunk(t, i):
    path = Path(save(t / "broken.zarr", blobs((16, 32, 32), seed=0), chunks=(8, 16, 16)))
    (path / "c" / "1" / "1" / "0").write_bytes(b"\0garbage" * 8)
    return path


def _zero_axis(t, i):
    return save(t / "empty.zarr", np.zeros((0, 32, 32), np.uint16))


def _file_parent(t, i):
    (t / "afile").write_text("not a folder")
    return None


# (id, image factory, arguments after IMAGE OUTPUT (OUTPUT: {out}), exit status, fragments of the message)
CASES = [
    ("missing input", lambda t, i: t / "nope.zarr", RUN, 1, ["Input image not found", "nope.zarr"]),
    ("unreadable TIFF", _garbage_tiff, RUN, 1, ["Could not read", "garbage.tif"]),
    ("not zarr", _plain_dir, RUN, 1, ["Could not open", "plain"]),
    ("group, not an array", _group, RUN, 1, ["give the array path", "group.zarr"]),
    ("missing array path", None, RUN + ["--array-path", "nope"], 1, ["No array or group 'nope'"]),
    ("1-D input", lambda t, i: save(t / "1d.zarr", np.zeros(10, "u2")), ["--block-shape", "4", "--halo", "1",
     "--threshold", "1"], 1, ["Expected a 2-D or 3-D image", "1d.zarr"]),
    ("4-D input", lambda t, i: save(t / "4d.zarr", np.zeros((2, 4, 8, 8), "u2")), RUN, 1,
     ["Expected a 2-D or 3-D image", "4d.zarr"]),
    ("channel axis out of range", lambda t, i: save(t / "c.zarr", np.zeros((2, 8, 8), "u2")),
     ["--block-shape", "4", "--halo", "1", "--threshold", "1", "--channel-axis", "5"], 1,
     ["Expected a channel axis between", "c.zarr"]),
    ("channel out of range", lambda t, i: save(t / "c.zarr", np.zeros((2, 8, 8), "u2")),
     ["--block-shape", "4", "--halo", "1", "--threshold", "1", "--channel-axis", "0", "--channel", "3"], 1,
     ["Expected channel indices between 0 and 1"]),
    ("several channels, none chosen", lambda t, i: save(t / "c.zarr", np.zeros((2, 8, 8), "u2")),
     ["--block-shape", "4", "--halo", "1", "--threshold", "1", "--channel-axis", "0"], 1, ["has 2 channels"]),
    ("complex dtype", lambda t, i: save(t / "cx.zarr", np.zeros((8, 8), np.complex64)),
     ["--block-shape", "4", "--halo", "1", "--threshold", "1"], 1, ["Got dtype complex64"]),
    ("zero-size axis", _zero_axis, RUN, 1, ["at least one voxel on every axis", "axis z is empty"]),
    ("OME scale of the wrong length", lambda t, i: _ome(t, i, [2.0, 0.5]), RUN, 1,
     ["Expected a scale with 3 values", "ome.zarr"]),
    ("OME scale zero", lambda t, i: _ome(t, i, [2.0, 0.0, 0.5]), RUN, 1, ["Expected scale values > 0", "ome.zarr"]),
    ("OME scale negative", lambda t, i: _ome(t, i, [-2.0, 0.5, 0.5]), RUN, 1, ["Expected scale values > 0"]),
    ("corrupt input chunk", _corrupt_chunk, RUN, 1, ["Could not read chunk c/1/1/0 of", "broken.zarr",
                                                     "(reading block"]),
    ("block not positive", None, ["--block-shape", "8,0,16", "--halo", "1", "--threshold", "500"], 1,
     ["Expected block_shape >= 1"]),
    ("block wrong length", None, ["--block-shape", "8,16", "--halo", "1", "--threshold", "500"], 1,
     ["one integer or 3"]),
    ("block not integer", None, ["--block-shape", "8,a,8", "--halo", "1", "--threshold", "500"], 1,
     ["Expected --block-shape as one integer >= 0 or one per axis"]),
    ("halo >= block", None, ["--block-shape", "8,16,16", "--halo", "1,16,2", "--threshold", "500"], 1,
     ["Expected halo < block"]),
    ("halo 0 on a split axis", None, ["--block-shape", "8,16,16", "--halo", "1,0,2", "--threshold", "500"], 1,
     ["Expected a halo >= 1 on axis y"]),
    ("negative halo", None, ["--block-shape", "8,16,16", "--halo", "1,-1,2", "--threshold", "500"], 1,
     ["Expected --halo as one integer >= 0 or one per axis", "'1,-1,2'"]),
    ("unknown backend", None, RUN + ["--backend", "magic"], 1, ["Expected --backend among", "'magic'"]),
    ("misspelt option", None, RUN + ["--thresold", "3"], 2, ["unknown option --thresold", "--threshold?"]),
    ("option of another backend", None, RUN + ["--diameter", "17"], 1,
     ["--diameter belongs to the cellpose backend"]),
    ("bad threshold", None, ["--block-shape", "8,16,16", "--halo", "1,2,2", "--threshold", "high"], 1,
     ["Expected --threshold to be a number or 'otsu'"]),
    ("bad connectivity", None, RUN + ["--connectivity", "4"], 1, ["Expected --connectivity between 1 and 3"]),
    ("bad rule", None, RUN + ["--rule", "glue"], 1, ["Expected --rule among exact, match, none"]),
    ("min-iou zero", None, RUN + ["--min-iou", "0"], 1, ["Expected min_iou in (0, 1]"]),
    ("min-iou above one", None, RUN + ["--min-iou", "2"], 1, ["Expected --min-iou between 0 and 1"]),
    ("bad label dtype", None, RUN + ["--label-dtype", "int8"], 1, ["Expected --label-dtype among"]),
    ("bad NGFF version", None, RUN + ["--ngff-version", "0.6"], 1, ["Expected --ngff-version among 0.4, 0.5"]),
    ("workers 0", None, RUN + ["--workers", "0"], 1, ["Expected --workers >= 1. Got 0"]),
    ("workers negative", None, RUN + ["--workers", "-2"], 1, ["Expected --workers >= 1. Got -2"]),
    ("workers not a number", None, RUN + ["--workers", "many"], 1, ["Expected an integer", "--workers"]),
    ("pyramid levels 0", None, RUN + ["--pyramid-levels", "0"], 1, ["Expected --pyramid-levels >= 1"]),
    ("too many pyramid levels", None, RUN + ["--pyramid-levels", "9"], 1, ["Expected at most"]),
    ("timepoint without a time axis", None, RUN + ["--timepoint", "0"], 1, ["has no time axis"]),
    ("level of a single array", None, RUN + ["--level", "1"], 1, ["is a single array, not a multiscale image"]),
    ("stats level of a single level", None, RUN + ["--stats-level", "1", "--skip-empty"], 1,
     ["has a single level"]),
    ("function not importable", None, RUN[:4] + ["--backend", "callable", "--function", "no_such_mod:f"], 1,
     ["Could not import the segmenter 'no_such_mod:f'"]),
    ("function missing", None, RUN[:4] + ["--backend", "callable", "--function", f"{SEG}:nope"], 1,
     ["has no callable named 'nope'"]),
    ("function fails", None, RUN[:4] + ["--backend", "callable", "--function", f"{SEG}:fail"], 1,
     ["failed on block 0: RuntimeError: model exploded"]),
    ("function returns wrong shape", None, RUN[:4] + ["--backend", "callable", "--function", f"{SEG}:wrong_shape"],
     1, ["Expected labels of shape (9, 18, 18)", "block 0 (core z 0:8"]),
    ("function returns floats", None, RUN[:4] + ["--backend", "callable", "--function", f"{SEG}:floats"], 1,
     ["Expected integer labels for block 0"]),
    ("function returns negatives", None, RUN[:4] + ["--backend", "callable", "--function", f"{SEG}:negative"], 1,
     ["Expected labels >= 0"]),
    ("kwargs not JSON", None, RUN[:4] + ["--backend", "callable", "--function", f"{SEG}:identity", "--kwargs",
                                         "[1, 2]"], 1, ["Expected --kwargs as a JSON object"]),
    ("output is the input", None, RUN + ["--output-is-input"], 1, ["is the same path as the input image"]),
    ("output inside a plain zarr input", None, RUN + ["--output-inside-input"], 1,
     ["lies inside the input image"]),
    ("work dir inside the input", None, RUN + ["--work-dir", "{image}/work"], 1,
     ["The work directory", "lies inside the input image"]),
    ("report dir is the output", None, RUN + ["--report-dir", "{out}"], 1,
     ["The report directory", "is the same path as the output"]),
    ("output parent is a file", _file_parent, RUN + ["--output-under-a-file"], 1, ["is a file, not a directory"]),
    ("output name too long", None, RUN + ["--output-name-too-long"], 1, ["ENAMETOOLONG"]),
    ("existing output not written by pystitch", None, RUN + ["--overwrite", "--output-exists-foreign"], 1,
     ["was not written by pystitch", "never removed, even with --overwrite"]),
    ("existing output without --overwrite", None, RUN + ["--output-exists-foreign"], 1,
     ["exists. Expected a new path, or --overwrite"]),
]

#: arguments that stand for a situation, not for an option
SITUATIONS = ("--output-is-input", "--output-inside-input", "--output-under-a-file", "--output-name-too-long",
              "--output-exists-foreign")


@pytest.mark.parametrize("case,factory,args,status,fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, case, factory, args, status, fragments):
    good = save(tmp_path / "img.zarr", blobs((16, 32, 32), seed=0))
    image = factory(tmp_path, good) if factory else None
    image = str(image if image is not None else good)
    out = str(tmp_path / "out.zarr")
    if "--output-is-input" in args:
        out = image
    if "--output-inside-input" in args:
        out = f"{image}/c/labels.zarr"
    if "--output-under-a-file" in args:
        out = str(tmp_path / "afile" / "out.zarr")
    if "--output-name-too-long" in args:
        out = str(tmp_path / ("x" * 300 + ".zarr"))
    if "--output-exists-foreign" in args:
        Path(out).mkdir()
        (Path(out) / "mine.txt").write_text("precious")
    args = [a.format(image=image, out=out) for a in args if a not in SITUATIONS]
    before = {p: tree(Path(p)) for p in (image, out) if exists(p)}
    res = subprocess.run([str(VENV_BIN / "pystitch"), "run", image, out, *args, "--quiet"], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYSTITCH_DEBUG": ""})
    lines = res.stderr.strip().splitlines()
    assert res.returncode == status, res.stderr
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    for path, content in before.items():
        assert tree(Path(path)) == content, f"{path} was changed"
    if out not in before:
        assert not exists(out)
    assert not (tmp_path / "out_report").exists()


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40


# ---- operating-system errors on real filesystems (a small tmpfs; mounting needs root)


@pytest.fixture
def tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounts = []

    def mount(name: str, size: str, readonly: bool = False) -> Path:
        path = tmp_path / name
        path.mkdir()
        opts = f"size={size}" + (",ro" if readonly else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], check=True)
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_read_only_output_folder_is_refused_at_plan_time(tmp_path, tmpfs):
    img = save(tmp_path / "img.zarr", blobs((16, 32, 32), seed=0))
    ro = tmpfs("ro", "1m", readonly=True)
    res = subprocess.run([str(VENV_BIN / "pystitch"), "run", img, str(ro / "out.zarr"), *RUN,
                          "--work-dir", str(tmp_path / "work"), "--quiet"], capture_output=True, text=True)
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
    assert "is not writable" in res.stderr and str(ro) in res.stderr
    assert not (tmp_path / "work" / "manifests").exists()   # refused before any block was segmented


def test_disk_full_is_one_line(tmp_path, tmpfs):
    img = save(tmp_path / "img.zarr", blobs((32, 128, 128), seed=0))
    small = tmpfs("small", "64k")
    res = subprocess.run([str(VENV_BIN / "pystitch"), "run", img, str(tmp_path / "out.zarr"), *RUN,
                          "--work-dir", str(small / "work"), "--quiet"], capture_output=True, text=True)
    assert res.returncode == 1, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert "No space left on device (ENOSPC)" in res.stderr
    assert not (tmp_path / "out.zarr").exists()
