"""The images microscopes write: folders/globs of TIFF planes, multi-file
OME-TIFF and companion files, ImageJ hyperstacks, multi-image files, vendor
formats through bioio, and ``pystitch convert`` to OME-Zarr.

Every input kind gives the same labels as the same image stored as a zarr
array; every bad input is one line, exit status 1, nothing at the output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

import pystitch
from helpers import load, save
from pystitch.example import blobs
from pystitch.steps.segment_block import BlockSegmenter
from pystitch.storage.images import open_image

from test_nextflow import nextflow  # noqa: F401  (the pinned Nextflow fixture)

VENV_BIN = Path(sys.executable).parent
SETTINGS = dict(block_shape=(8, 16, 16), halo=(1, 1, 1), backend="threshold", threshold=0.5, workers=1,
                pictures=False)


@pytest.fixture(scope="module")
def volume():
    return (blobs((22, 40, 36), seed=11, sigma=2.0, fraction=0.2) * 1000).astype(np.uint16)


def _labels(image, tmp: Path, name: str, **options) -> np.ndarray:
    out = tmp / f"{name}.zarr"
    pystitch.run(image, out, **{**SETTINGS, "threshold": 500, **options})
    return load(out)


@pytest.fixture(scope="module")
def reference(volume, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    return _labels(save(tmp / "image.zarr", volume), tmp, "ref")


def _planes(folder: Path, volume: np.ndarray, name="plane_{z}.tif", **kwargs) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for z, plane in enumerate(volume):
        tifffile.imwrite(folder / name.format(z=z), plane, **kwargs)
    return folder


def pystitch_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "pystitch"), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYSTITCH_LOG_LEVEL": "WARNING"})


# --------------------------------------------------------------------------- plane sequences


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_plane_glob_equals_zarr(volume, reference, tmp_path, compression):
    """Files plane_0 ... plane_21 in natural order (plane_10 after plane_9), read lazily."""
    kwargs = {"compression": compression, "rowsperstrip": 8} if compression else {}
    folder = _planes(tmp_path / "stack", volume, **kwargs)
    src = open_image(str(folder / "plane_*.tif"))
    assert src.shape == volume.shape and src.axes == "zyx"
    np.testing.assert_array_equal(src.read((slice(8, 12), slice(3, 30), slice(0, 36))), volume[8:12, 3:30])
    assert (src.array.chunks is None) == (compression is None)  # uncompressed planes are memory-mapped
    src.close()
    np.testing.assert_array_equal(_labels(str(folder / "plane_*.tif"), tmp_path, "glob"), reference)
    np.testing.assert_array_equal(_labels(str(folder), tmp_path, "folder"), reference)


def test_pattern_maps_channels_by_name_and_tifffile_syntax(volume, reference, tmp_path):
    other = (volume[::-1] // 2).astype(np.uint16)
    folder = tmp_path / "stack"
    _planes(folder, other, name="img_z{z:03d}_DAPI.tif")
    _planes(folder, volume, name="img_z{z:03d}_GFP.tif")
    src = open_image(str(folder / "*.tif"), pattern="img_z{z}_{c}.tif", channel="all")
    assert src.channel_names == ("DAPI", "GFP") and src.n_channels == 2
    src.close()
    got = _labels(str(folder / "img_*.tif"), tmp_path, "named", pattern="img_z{z}_{c}.tif", channel=1)
    np.testing.assert_array_equal(got, reference)
    # tifffile's syntax: an axis letter group followed by an index group
    numbered = _planes(tmp_path / "numbered", volume, name="s_c1_z{z}.tif")
    _planes(numbered, other, name="s_c0_z{z}.tif")
    got = _labels(str(numbered / "*.tif"), tmp_path, "regex", pattern=r"_(c)(\d+)_(z)(\d+)", channel=1)
    np.testing.assert_array_equal(got, reference)


def test_each_file_is_opened_once_per_task(volume, tmp_path):
    """The segment step's task keeps the stack open across its blocks: 22 files, 3x3x3 blocks with
    halos reading across files, and still one opening per file (compressed planes: one decode per
    strip thanks to the chunk cache)."""
    folder = _planes(tmp_path / "stack", volume, compression="zlib", rowsperstrip=8)
    plan = pystitch.plan_blocks(str(folder / "*.tif"), tmp_path / "l.zarr", block_shape=(8, 16, 16), halo=(2, 2, 2),
                                backend="threshold", backend_options={"threshold": 500}, skip_empty=False)
    with BlockSegmenter(plan) as seg:
        for b in range(plan.n_blocks):
            seg.segment(b, plan.manifest_dir)
        opened = dict(seg.source.array.opened)
    assert plan.n_blocks == 27
    assert sorted(opened) == sorted(str(p) for p in folder.glob("*.tif"))
    assert set(opened.values()) == {1}


# --------------------------------------------------------------------------- OME-TIFF sets, ImageJ, scenes

NS = "http://www.openmicroscopy.org/Schemas/OME/2016-06"


def _ome_set(folder: Path, data: np.ndarray, names=("DAPI", "GFP"), companion: bool = False) -> list[Path]:
    """A multi-file OME-TIFF: one file per (channel, z) plane, each file's metadata (or a companion file)
    placing every plane in its file."""
    folder.mkdir(parents=True, exist_ok=True)
    C, Z, Y, X = data.shape
    files = {(c, z): f"acq_c{c}_z{z}.ome.tif" for c in range(C) for z in range(Z)}
    uuids = {k: f"urn:uuid:{uuid.uuid4()}" for k in files}
    channels = "".join(f'<Channel ID="Channel:0:{c}" Name="{names[c]}" SamplesPerPixel="1"/>' for c in range(C))
    tiffdata = "".join(f'<TiffData FirstC="{c}" FirstZ="{z}" FirstT="0" IFD="0" PlaneCount="1">'
                       f'<UUID FileName="{files[c, z]}">{uuids[c, z]}</UUID></TiffData>' for (c, z) in files)
    full = (f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="{NS}" UUID="urn:uuid:{uuid.uuid4()}">'
            f'<Image ID="Image:0" Name="acq"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint16" '
            f'SizeX="{X}" SizeY="{Y}" SizeZ="{Z}" SizeC="{C}" SizeT="1" PhysicalSizeX="0.4" PhysicalSizeY="0.4" '
            f'PhysicalSizeZ="2.0" PhysicalSizeXUnit="&#181;m" PhysicalSizeYUnit="&#181;m" PhysicalSizeZUnit="&#181;m">'
            f'{channels}{tiffdata}</Pixels></Image></OME>')
    if companion:
        (folder / "acq.companion.ome").write_text(full, encoding="utf-8")
    for (c, z), name in files.items():
        desc = full if not companion else (
            f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="{NS}" UUID="{uuids[c, z]}">'
            f'<BinaryOnly MetadataFile="acq.companion.ome" UUID="urn:uuid:0"/></OME>')
        tifffile.imwrite(folder / name, data[c, z], description=desc, metadata=None)
    return [folder / n for n in files.values()]


@pytest.mark.parametrize("companion", [False, True])
def test_multi_file_ome_tiff_equals_zarr(volume, reference, tmp_path, companion):
    data = np.stack([volume[::-1] // 2, volume]).astype(np.uint16)
    files = _ome_set(tmp_path / "acq", data, companion=companion)
    first = files[0] if not companion else tmp_path / "acq" / "acq.companion.ome"
    src = open_image(str(first), channel="all")
    assert src.voxel_size == (2.0, 0.4, 0.4) and src.channel_names == ("DAPI", "GFP")
    np.testing.assert_array_equal(src.read((slice(0, 22), slice(0, 40), slice(0, 36))), data)
    src.close()
    for entry in (first, files[5]):  # the companion / any file of the set opens the whole set
        np.testing.assert_array_equal(_labels(str(entry), tmp_path, f"ome{hash(str(entry))}", channel=1), reference)


def test_imagej_hyperstack_and_scene_of_a_multi_series_file(volume, reference, tmp_path):
    hyper = np.stack([volume // 3, volume], axis=1)  # ZCYX
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, hyper, imagej=True, resolution=(1 / 0.4, 1 / 0.4),
                     metadata={"axes": "ZCYX", "spacing": 2.0, "unit": "um"})
    src = open_image(str(path), channel=1)
    assert src.voxel_size == pytest.approx((2.0, 0.4, 0.4)) and src.shape == volume.shape
    src.close()
    np.testing.assert_array_equal(_labels(str(path), tmp_path, "hyper", channel=1), reference)
    multi = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(multi, ome=True) as tw:
        tw.write(volume[:, :20, :20] // 2, metadata={"axes": "ZYX", "Name": "overview"})
        tw.write(volume, metadata={"axes": "ZYX", "Name": "detail", "PhysicalSizeZ": 2.0})
    for scene in (1, "detail"):
        np.testing.assert_array_equal(_labels(str(multi), tmp_path, f"scene{scene}", scene=scene), reference)


# --------------------------------------------------------------------------- vendor formats (bioio)


def _czi(path: Path, data: np.ndarray) -> Path:
    from pylibCZIrw import czi as pyczi

    with pyczi.create_czi(str(path), exist_ok=True) as w:
        for c in range(data.shape[0]):
            for z in range(data.shape[1]):
                w.write(data[c, z][..., None], plane={"C": c, "Z": z, "T": 0})
        w.write_metadata(document_name="t", channel_names={0: "DAPI", 1: "GFP"}, scale_x=0.4e-6, scale_y=0.4e-6,
                         scale_z=2e-6)
    return path


def test_czi_through_bioio_equals_zarr(volume, reference, tmp_path):
    path = _czi(tmp_path / "sample.czi", np.stack([volume // 2, volume]))
    src = open_image(str(path), channel=1)
    assert src.shape == volume.shape and src.channel_names == ("GFP",)
    assert src.voxel_size == pytest.approx((2.0, 0.4, 0.4))
    src.close()
    np.testing.assert_array_equal(_labels(str(path), tmp_path, "czi", channel=1), reference)


def test_missing_reader_plugin_names_the_package(tmp_path):
    import importlib.util

    from pystitch.storage.vendor import VENDOR_READERS

    suffix, (module, package) = next((s, mp) for s, mp in VENDOR_READERS.items()
                                     if importlib.util.find_spec(mp[0]) is None)
    path = tmp_path / f"sample{suffix}"
    path.write_bytes(b"\0" * 64)
    res = pystitch_cli("run", path, tmp_path / "l.zarr", "--block-shape", "8", "--halo", "1", "--threshold", "1")
    assert res.returncode == 1 and package in res.stderr and "pip install" in res.stderr
    assert not (tmp_path / "l.zarr").exists()


# --------------------------------------------------------------------------- bad input


def _bad_inputs(root: Path, volume: np.ndarray) -> dict:
    cases = {}
    cases["empty glob"] = ([str(root / "nothing" / "*.tif")], "No file matches")
    mixed = _planes(root / "mixed_shape", volume[:4])
    tifffile.imwrite(mixed / "plane_2.tif", volume[2, :30])
    cases["mixed shapes"] = ([str(mixed / "*.tif")], "plane_2.tif holds planes of shape (30, 36)")
    dt = _planes(root / "mixed_dtype", volume[:4])
    tifffile.imwrite(dt / "plane_3.tif", volume[3].astype(np.float32))
    cases["mixed dtypes"] = ([str(dt / "*.tif")], "plane_3.tif holds planes of shape (40, 36) and dtype float32")
    files = _ome_set(root / "ome", np.stack([volume[:3]]), names=("a",))
    files[1].unlink()
    cases["missing OME file"] = ([str(files[0])], f"{files[1]} is missing")
    _ome_set(root / "comp", np.stack([volume[:3]]), names=("a",), companion=True)
    (root / "comp" / "acq.companion.ome").unlink()
    cases["missing companion"] = ([str(root / "comp" / "acq_c0_z0.ome.tif")], "acq.companion.ome, which does not exist")
    (root / "image.xyz").write_bytes(b"123")
    cases["unknown extension"] = ([str(root / "image.xyz")], "Unknown image file type")
    pat = _planes(root / "pattern", volume[:3], name="p_{z}.tif")
    cases["pattern matches nothing"] = ([str(pat / "*.tif"), "--pattern", "plane_{z}_ch{c}.tif"],
                                        "does not match --pattern")
    amb = root / "ambiguous"
    _planes(amb, volume[:3], name="p_{z}_a.tif")
    _planes(amb, volume[:3], name="p_{z}_b.tif")
    cases["ambiguous axis"] = ([str(amb / "*.tif"), "--pattern", "p_{z}_*.tif"], "leave an axis ambiguous")
    return cases


def test_bad_inputs_are_one_line_and_leave_nothing(volume, tmp_path, caplog):
    from pystitch.cli import main

    for name, (args, expected) in _bad_inputs(tmp_path / "in", volume).items():
        for command in ("run", "convert"):
            out = tmp_path / f"{name.replace(' ', '_')}.{command}.zarr"
            extra = ["--block-shape", "8,16,16", "--halo", "1", "--threshold", "500"] if command == "run" else []
            caplog.clear()
            assert main([command, *args[:1], str(out), *args[1:], *extra]) == 1, (name, command)
            errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
            assert len(errors) == 1 and expected in errors[0] and "\n" not in errors[0], (name, command, errors)
            assert not out.exists(), (name, command)
    # on the command line: one line on stderr, no traceback
    args, expected = _bad_inputs(tmp_path / "again", volume)["mixed shapes"]
    res = pystitch_cli("run", args[0], tmp_path / "l.zarr", "--block-shape", "8,16,16", "--halo", "1",
                       "--threshold", "500")
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and expected in res.stderr, res.stderr
    assert not (tmp_path / "l.zarr").exists()


# --------------------------------------------------------------------------- convert


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_convert_round_trip(volume, tmp_path, version):
    other = (volume[::-1] // 2).astype(np.uint16)
    folder = tmp_path / "stack"
    _planes(folder, other, name="img_z{z}_DAPI.tif")
    _planes(folder, volume, name="img_z{z}_GFP.tif")
    out = tmp_path / "image.ome.zarr"
    summary = pystitch.convert(str(folder / "*.tif"), out, pattern="img_z{z}_{c}.tif", voxel_size="2,0.4,0.4",
                               ngff_version=version, pyramid_levels=3, chunks="8,16,16", workers=2)
    assert summary["output"] == str(out) and summary["levels"] == 3
    assert not any(p.name.startswith(".image.ome.zarr") for p in tmp_path.iterdir())  # nothing left beside it
    group = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(group["0"][:], np.stack([other, volume]))
    assert group["0"].chunks == (1, 8, 16, 16)
    lvl1 = np.stack([other, volume]).astype(float)
    lvl1 = lvl1.reshape(2, 22, 20, 2, 18, 2).mean(axis=(3, 5))  # y, x halved (the finest voxels)
    np.testing.assert_array_equal(group["1"][:], np.rint(lvl1).astype(np.uint16))
    assert group["2"].shape == (2, 22, 10, 9)  # z (2.0) is coarser than y, x (1.6): not halved yet
    if version == "0.4":
        from ome_zarr_models.v04.image import Image
    else:
        from ome_zarr_models.v05.image import Image
    image = Image.from_zarr(group)
    attrs = image.attributes if version == "0.4" else image.attributes.ome
    scales = [d.coordinateTransformations[0].scale for d in attrs.multiscales[0].datasets]
    assert scales == [[1.0, 2.0, 0.4, 0.4], [1.0, 2.0, 0.8, 0.8], [1.0, 2.0, 1.6, 1.6]]
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(out)))()))
    assert node.metadata["channel_names"] == ["DAPI", "GFP"]
    assert [tuple(d.shape) for d in node.data] == [(2, 22, 40, 36), (2, 22, 20, 18), (2, 22, 10, 9)]
    # the converted image segments like the original
    ref = _labels(save(tmp_path / "plain_image.zarr", volume), tmp_path, "plain")
    np.testing.assert_array_equal(_labels(str(out), tmp_path, "converted", channel=1), ref)


def test_convert_resumes_after_a_kill(tmp_path):
    volume = (blobs((32, 64, 64), seed=3, sigma=2.0, fraction=0.2) * 1000).astype(np.uint16)
    folder = _planes(tmp_path / "stack", volume, compression="zlib")
    out = tmp_path / "image.ome.zarr"
    done = tmp_path / ".image.ome.zarr.convert" / "done"
    args = ["convert", folder / "*.tif", out, "--chunks", "4,8,8", "--voxel-size", "1,1,1", "--pyramid-levels", "2"]
    env = {**os.environ, "PYSTITCH_CONVERT_TASK_MB": "0.001", "PYSTITCH_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([str(VENV_BIN / "pystitch"), *map(str, args)], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not done.exists() or len(list(done.iterdir())) < 40):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name for p in done.iterdir()}
    assert 40 <= len(finished) < 512 + 128, len(finished)  # killed mid-way
    assert not out.exists()  # a killed convert leaves nothing at the output
    chunk_times = {p: p.stat().st_mtime_ns for p in (tmp_path / ".image.ome.zarr.partial" / "0").rglob("*")
                   if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".partial")}
    res = subprocess.run([str(VENV_BIN / "pystitch"), *map(str, args)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["0"][:], volume)
    # the chunks of regions finished before the kill were not written again
    partial0 = tmp_path / ".image.ome.zarr.partial" / "0"
    checked = 0
    for p, t in chunk_times.items():
        rel = p.relative_to(partial0)
        z, y, x = (int(v) for v in rel.parts)
        if f"0-{_region_of(z, y, x)}.json" in finished:
            assert (out / "0" / rel).stat().st_mtime_ns == t, rel
            checked += 1
    assert checked > 0
    assert not (tmp_path / ".image.ome.zarr.partial").exists() and not done.parent.exists()


def _region_of(z: int, y: int, x: int) -> int:
    """The region number of a chunk in test_convert_resumes_after_a_kill: one chunk per region
    (a budget smaller than a chunk), in C order over a grid of 8x8x8 chunks."""
    return (z * 8 + y) * 8 + x


def test_convert_refuses_to_replace_what_it_did_not_write(volume, tmp_path):
    folder = _planes(tmp_path / "stack", volume[:4])
    out = tmp_path / "mine.zarr"
    save(out, volume)
    res = pystitch_cli("convert", folder / "*.tif", out, "--overwrite")
    assert res.returncode == 1 and "not written by pystitch convert" in res.stderr
    np.testing.assert_array_equal(load(out), volume)
    res = pystitch_cli("convert", folder / "*.tif", tmp_path / "a.ome.zarr")
    assert res.returncode == 0, res.stderr
    res = pystitch_cli("convert", folder / "*.tif", tmp_path / "a.ome.zarr", "--overwrite")
    assert res.returncode == 0, res.stderr


# --------------------------------------------------------------------------- the pipeline


@pytest.mark.slow
@pytest.mark.nextflow
def test_pipeline_reads_a_plane_glob_directly(nextflow, tmp_path):
    """``--input "stack/plane_*.tif"``: the pipeline plans the planes where they are (no copy,
    no conversion) and its labels are byte-identical to ``pystitch run`` on the same glob."""
    from test_nextflow import TEST_SETTINGS, assert_same_labels, example_image_data, ok, reference_run

    from pystitch.example import write_example

    image = write_example(tmp_path / "example.zarr", (24, 96, 96), seed=4)
    folder = _planes(tmp_path / "stack", example_image_data(str(image)))
    glob = str(folder / "plane_*.tif")
    launch, outdir = tmp_path / "launch", tmp_path / "results"
    ok(nextflow(launch, "-profile", "test", "--input", glob, "--outdir", outdir, "--voxel_size", "2,0.5,0.5"))
    reference_run(glob, tmp_path / "reference.zarr", "--voxel-size", "2,0.5,0.5")
    labels = assert_same_labels(outdir / "stack" / "labels.zarr", tmp_path / "reference.zarr")
    assert labels.max() > 0 and TEST_SETTINGS
