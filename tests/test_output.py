"""Outputs people can open and trust: OME-Zarr labels with a pyramid, the
regions table, seam QC, pictures and the run summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import zarr
from scipy import ndimage

import pystitch
from helpers import load, save
from pystitch.example import blobs, write_example
from pystitch.storage.labels import pyramid_factors
from pystitch.report.regions import read_csv_table
from pystitch.report.summary import trace_timings


def _reader_nodes(path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    return list(Reader(parse_url(str(path)))())


@pytest.fixture(scope="module")
def into_image(tmp_path_factory):
    """Labels written inside an OME-Zarr (NGFF 0.4) input image."""
    d = tmp_path_factory.mktemp("ome")
    img = write_example(d / "img.zarr", shape=(20, 300, 264), seed=3)
    summary = pystitch.run(str(img), img / "labels" / "cells", block_shape=(10, 64, 64), halo=(1, 2, 2),
                           threshold=500, progress=False, grid=True)
    return d, img, summary


def test_labels_open_as_labels_of_the_image(into_image):
    d, img, summary = into_image
    nodes = _reader_nodes(img)
    kinds = {str(n.zarr.path).rstrip("/").split("/")[-1]: [type(s).__name__ for s in n.specs] for n in nodes}
    assert "Label" in kinds["cells"] and "Multiscales" in kinds["cells"]
    assert json.loads((img / "labels" / ".zattrs").read_text())["labels"] == ["cells"]
    attrs = json.loads((img / "labels" / "cells" / ".zattrs").read_text())
    assert attrs["image-label"]["source"]["image"] == "../../"
    ms = attrs["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [2.0, 0.5, 0.5]   # from the image
    label_node = next(n for n in nodes if str(n.zarr.path).rstrip("/").endswith("cells"))
    level0 = np.asarray(label_node.data[0])
    ref = ndimage.label(zarr.open_group(str(img), mode="r")["0"][:] > 500)[0]
    from helpers import assert_partition_equivalent
    assert_partition_equivalent(level0, ref)


def test_pyramid_levels_are_strided_and_label_safe(into_image):
    d, img, summary = into_image
    group = zarr.open_group(str(img / "labels" / "cells"), mode="r")
    ms = group.attrs["multiscales"][0]
    factors = ms["metadata"]["factors"]
    assert len(factors) >= 2 and factors[1] == [1, 2, 2]      # z (2.0 um) is coarser: y, x are halved first
    level0 = group["0"][:]
    ids0 = set(np.unique(level0).tolist())
    for k, f in enumerate(factors):
        arr = group[str(k)]
        assert arr.shape == tuple(math.ceil(n / s) for n, s in zip(level0.shape, f))
        data = arr[:]
        np.testing.assert_array_equal(data, level0[tuple(slice(None, None, s) for s in f)])
        assert set(np.unique(data).tolist()) <= ids0
        scale = ms["datasets"][k]["coordinateTransformations"][0]["scale"]
        assert scale == [v * s for v, s in zip([2.0, 0.5, 0.5], f)]


def test_standalone_ome_zarr_and_plain_zarr(tmp_path):
    image = blobs((300, 290), seed=4, sigma=4.0, fraction=0.3)
    path = save(tmp_path / "img.zarr", image)
    pystitch.run(path, tmp_path / "out.ome.zarr", block_shape=64, halo=2, threshold=500, progress=False,
                 pyramid_levels=3)
    nodes = _reader_nodes(tmp_path / "out.ome.zarr")
    assert [d.shape for d in nodes[0].data] == [(300, 290), (150, 145), (75, 73)]
    assert "Label" in [type(s).__name__ for s in nodes[0].specs]
    pystitch.run(path, tmp_path / "plain.zarr", block_shape=64, halo=2, threshold=500, progress=False,
                 output_format="zarr")
    plain = zarr.open(str(tmp_path / "plain.zarr"), mode="r")
    assert isinstance(plain, zarr.Array) and plain.chunks == (64, 64)
    np.testing.assert_array_equal(plain[:], load(tmp_path / "out.ome.zarr"))


def test_ngff_05_on_zarr_v3(tmp_path):
    image = blobs((16, 80, 80), seed=5, sigma=2.0, fraction=0.2)
    root = zarr.open_group(str(tmp_path / "img.zarr"), mode="w", zarr_format=3)
    root.create_array("0", shape=image.shape, dtype=image.dtype, chunks=(8, 40, 40))[:] = image
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.3, 0.3]}]}]}]}
    pystitch.run(str(tmp_path / "img.zarr"), tmp_path / "img.zarr" / "labels" / "nuclei", block_shape=(8, 32, 32),
                 halo=1, threshold=500, progress=False)
    labels = zarr.open_group(str(tmp_path / "img.zarr" / "labels"), mode="r")
    assert labels.metadata.zarr_format == 3 and labels.attrs["ome"]["labels"] == ["nuclei"]
    node = labels["nuclei"]
    assert node.attrs["ome"]["version"] == "0.5" and "image-label" in node.attrs["ome"]
    np.testing.assert_array_equal(node["0"][:] > 0, image > 500)


def test_regions_table_equals_scipy(into_image):
    d, img, summary = into_image
    out = load(img / "labels" / "cells")
    table = read_csv_table(d / "img_cells_report" / "regions.csv")
    n = int(out.max())
    assert n == summary["objects"] and len(table["id"]) == n
    np.testing.assert_array_equal(table["id"], np.arange(1, n + 1))
    index = np.arange(1, n + 1)
    np.testing.assert_array_equal(table["voxels"], ndimage.sum_labels(np.ones_like(out), out, index))
    boxes = ndimage.find_objects(out)
    for i, ax in enumerate("zyx"):
        np.testing.assert_array_equal(table[f"{ax}_min"], [b[i].start for b in boxes])
        np.testing.assert_array_equal(table[f"{ax}_max"], [b[i].stop for b in boxes])
    com = np.array(ndimage.center_of_mass(np.ones_like(out), out, index))
    for i, ax in enumerate("zyx"):
        np.testing.assert_allclose(table[f"centroid_{ax}"], com[:, i], rtol=0, atol=1e-9)
        np.testing.assert_allclose(table[f"centroid_{ax}_physical"], com[:, i] * [2.0, 0.5, 0.5][i], atol=1e-9)
    # the blocks each object spans: exactly the blocks whose core holds some of its voxels
    plan_blocks = summary["blocks"]
    assert plan_blocks > 1
    spans = [set(map(int, s.split(";"))) for s in table["blocks"]]
    assert all(len(s) == k for s, k in zip(spans, table["n_blocks"]))
    import pyarrow.parquet as pq
    pt = pq.read_table(d / "img_cells_report" / "regions.parquet").to_pydict()
    np.testing.assert_array_equal(pt["voxels"], table["voxels"])


def test_regions_blocks_spanned(tmp_path):
    image = np.full((32, 32), 100, np.uint16)
    image[2:30, 10:12] = 1000        # blocks 0 and 2 (2 x 2 grid of 16)
    image[20:22, 20:30] = 1000       # block 3 only
    path = save(tmp_path / "img.zarr", image)
    pystitch.run(path, tmp_path / "o.zarr", block_shape=16, halo=1, threshold=500, progress=False)
    table = read_csv_table(tmp_path / "o_report" / "regions.csv")
    assert table["blocks"].tolist() == ["0;2", "3"]


def test_seam_qc_separates_bad_from_good_stitch(tmp_path):
    image = blobs((24, 128, 128), seed=6, sigma=2.5, fraction=0.25)
    path = save(tmp_path / "img.zarr", image)
    good = pystitch.run(path, tmp_path / "good.zarr", block_shape=(8, 32, 32), halo=1, threshold=500,
                        progress=False, pictures=False)["seam_qc"]
    bad = pystitch.run(path, tmp_path / "bad.zarr", block_shape=(8, 32, 32), halo=1, threshold=500, rule="none",
                       progress=False, pictures=False)["seam_qc"]
    assert good["seam_objects"] > 50 and bad["seam_objects"] > 50
    assert not good["flagged"] and good["seam_breaks"] == 0
    assert bad["flagged"] and bad["seam_break_rate"] > 0.9
    assert bad["control_break_rate"] == good["control_break_rate"] == 0.0


def test_seam_qc_takes_the_planes_apply_lut_kept_and_does_not_read_the_output(tmp_path):
    """apply-lut keeps the planes the seam QC compares (compressed, in its
    statistics files): they equal the output, and finalize's QC is the QC of
    the output although the output's chunks are gone when it runs.  Another
    --qc-faces reads what was not kept from the output."""
    import shutil

    from pystitch.report.qc import decode_plane, face_planes, sampled_faces, seam_qc
    from pystitch.report.regions import read_block_stats
    from pystitch.storage.labels import LabelOutput
    from pystitch.storage.lut import Lut

    image = blobs((24, 128, 128), seed=6, sigma=2.5, fraction=0.25)
    path = save(tmp_path / "img.zarr", image)
    out = tmp_path / "out.zarr"
    plan = pystitch.plan_blocks(path, out, block_shape=(8, 32, 32), halo=1, backend_options={"threshold": 500})
    ids = plan.work_blocks()
    pystitch.segment_blocks(plan, ids)
    pystitch.face_pairs(plan, ids)
    pystitch.resolve(plan)
    for i in range(0, len(ids), 5):
        pystitch.apply_lut(plan, ids[i:i + 5])
    counts = np.diff(Lut.open(plan.lut_uri, plan.hash).offsets)
    output = LabelOutput.open(plan.partial_output, plan.label_layout(), plan.hash).level0
    kept = {}
    read_block_stats(plan, None, int(counts.sum()), set(), planes=kept)
    wanted = face_planes(plan, sampled_faces(plan, counts, 256))
    assert set(kept) == {(b, axis, pos) for b, planes in wanted.items() for axis, pos in planes}
    for (b, axis, pos), data in kept.items():
        core = output[plan.grid.core(b)]
        plane = np.take(core, pos, axis=axis)
        np.testing.assert_array_equal(decode_plane(data, plane.shape, output.dtype), plane)
    expected = seam_qc(plan, output, counts)
    assert expected["seam_objects"] > 50 and expected["faces_checked"] > 10
    few = seam_qc(plan, output, counts, max_faces=7)
    shutil.copytree(plan.partial_output, tmp_path / "copy.zarr")
    chunks = [p for p in (Path(plan.partial_output) / "0").iterdir() if p.is_dir()]
    assert chunks
    for chunk in chunks:   # the labels are gone (level 0's chunks; its metadata stays)
        shutil.rmtree(chunk)
    summary = pystitch.finalize(plan, pictures=False)
    assert {k: v for k, v in summary["seam_qc"].items() if k != "remedy"} == expected
    copy = zarr.open_group(tmp_path / "copy.zarr", mode="r")["0"]
    assert seam_qc(plan, copy, counts, max_faces=7, kept=kept) == few     # partly read from the output


def test_seam_faces_are_every_face_between_two_non_empty_blocks():
    from hypothesis import given, settings, strategies as st

    from pystitch.grid import BlockGrid
    from pystitch.report.qc import seam_faces

    class Plan:   # what seam_faces reads of a plan: its grid
        def __init__(self, grid):
            self.grid, self.n_blocks = grid, grid.n_blocks

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.integers(1, 40), min_size=2, max_size=3), st.lists(st.integers(2, 9), min_size=3,
                                                                          max_size=3), st.data())
    def check(shape, block, data):
        grid = BlockGrid(tuple(shape), tuple(block[:len(shape)]), (1,) * len(shape))
        counts = np.asarray(data.draw(st.lists(st.integers(0, 2), min_size=grid.n_blocks,
                                               max_size=grid.n_blocks)))
        expected = []   # block by block, as the seam QC defines its faces
        for a in range(grid.n_blocks):
            if counts[a] == 0:
                continue
            idx = grid.index(a)
            for axis in grid.split_axes():
                if idx[axis] + 1 < grid.counts[axis]:
                    b = grid.id([i + (k == axis) for k, i in enumerate(idx)])
                    if counts[b] > 0:
                        expected.append((a, b, axis))
        assert seam_faces(Plan(grid), counts) == expected

    check()


def test_pictures_and_summary(into_image):
    import imagecodecs

    d, img, summary = into_image
    report = d / "img_cells_report"
    pics = summary["report"]["pictures"]
    names = [p["file"] for p in pics]
    assert names[:3] == ["projection-z.png", "projection-y.png", "projection-x.png"]
    assert sum(n.startswith("seam-") for n in names) >= 3
    # level 0 (largest side <= 1024); y/x projections: z stretched by the anisotropy (2.0 / 0.5 = 4);
    # under each picture a strip with its scale bar
    from pystitch.report.qc import STRIP

    expected = {"projection-z.png": (300, 264), "projection-y.png": (20 * 4, 264),
                "projection-x.png": (20 * 4, 300)}
    for name, shape in expected.items():
        rgb = imagecodecs.png_decode((report / name).read_bytes())
        assert rgb.shape == (shape[0] + STRIP, shape[1], 3), name
        rgb = rgb[:shape[0]]
        assert rgb.std() > 20 and len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50, f"{name} looks blank"
        assert ((rgb[..., 0] == 255) & (rgb[..., 1] == 40)).any(), "the block grid was asked for"
    md = (report / "summary.md").read_text()
    assert "seam QC" in md and all(f"({n})" in md for n in names)
    assert "<img src='projection-z.png'" in (report / "summary.html").read_text()


def test_trace_timings(tmp_path):
    trace = tmp_path / "trace.txt"
    trace.write_text("task_id\thash\tname\tstatus\texit\trealtime\n"
                     "1\tab/12\tPYSTITCH:SEGMENT_BLOCK (img:0-3)\tCOMPLETED\t0\t1m 3s\n"
                     "2\tab/13\tPYSTITCH:SEGMENT_BLOCK (img:4-7)\tCOMPLETED\t0\t850ms\n"
                     "3\tab/14\tPYSTITCH:RESOLVE (img)\tCACHED\t0\t2.5s\n")
    t = trace_timings(trace)
    assert t["SEGMENT_BLOCK"] == {"tasks": 2, "seconds": 63.85, "longest_seconds": 63.0}
    assert t["RESOLVE"]["seconds"] == 2.5


def test_pyramid_factor_rules():
    # anisotropic: y, x halved until their voxels match z, then all three; stops at a 256 side
    assert pyramid_factors((64, 2048, 2048), (32, 256, 256), (4.0, 0.5, 0.5)) == [
        (1, 1, 1), (1, 2, 2), (1, 4, 4), (1, 8, 8)]
    assert pyramid_factors((64, 2048, 2048), (32, 256, 256), (4.0, 0.5, 0.5), levels=5)[-1] == (2, 16, 16)
    assert pyramid_factors((100, 100), (64, 64), None) == [(1, 1)]
    with pytest.raises(pystitch.InputError, match="at most 2 pyramid levels"):
        pyramid_factors((4096, 4096), (24, 24), None, levels=3)


def test_regions_parquet_same_bytes_as_pyarrow_table_without_pandas(tmp_path):
    """The parquet table is built from the columns' buffers: the same file as
    ``pa.table`` would write, without importing pandas (a second of start-up)."""
    import subprocess
    import sys

    code = """
import sys
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pystitch.report.regions import write_parquet
isum = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
cols = {"id": np.arange(1, 5, dtype=np.uint64), "voxels": np.array([3, 1, 4, 1], np.int64),
        "intensity_sum": isum[:, 1], "unit": np.array(["µm"] * 4, dtype=object),
        "blocks": np.array(["0", "0;1", "", "12;13;14"], dtype=object)}
write_parquet(sys.argv[1] + "/a.parquet", cols, {"plan_hash": "abc"})
assert "pandas" not in sys.modules, "pandas imported"
table = pa.table({k: (list(v) if v.dtype == object else v) for k, v in cols.items()})
pq.write_table(table.replace_schema_metadata({b"plan_hash": b"abc"}), sys.argv[1] + "/b.parquet")
"""
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
