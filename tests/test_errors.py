"""Bad input gets a clear error (what was expected, what arrived, where) and
nothing is written to the final output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

import pystitch
from helpers import load, save
from pystitch.errors import (
    InputError, InputNotFoundError, LabelOverflowError, OutputExistsError, PlanMismatchError, SegmenterError,
    StagingError,
)
from pystitch.example import blobs

SEG = str(Path(__file__).parent / "segmenters.py")


@pytest.fixture
def img(tmp_path):
    return save(tmp_path / "img.zarr", blobs((16, 32, 32), seed=0))


def _run(image, out, **kw):
    opts = dict(block_shape=(8, 16, 16), halo=(1, 2, 2), threshold=500, progress=False)
    opts.update(kw)
    return pystitch.run(image, out, **opts)


def _group_without_image(tmp_path):
    g = zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    g.create_array("a", shape=(4, 4), dtype="u1")
    return str(tmp_path / "group.zarr")


def _garbage_file(tmp_path):
    p = tmp_path / "garbage.tif"
    p.write_bytes(b"not a tiff at all")
    return str(p)


def _plain_dir(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("hello")
    return str(tmp_path / "plain")


# (case id, image factory, run options, error type, message fragment)
RUN_TABLE = [
    ("missing input", lambda t, i: str(t / "nope.zarr"), {}, InputNotFoundError, "Input image not found"),
    ("unreadable TIFF", lambda t, i: _garbage_file(t), {}, InputError, "Could not read"),
    ("not zarr", lambda t, i: _plain_dir(t), {}, InputError, "Could not open"),
    ("group, not an array", lambda t, i: _group_without_image(t), {}, InputError, "give the array path"),
    ("missing array path", lambda t, i: i, {"array_path": "nope"}, InputError, "No array or group 'nope'"),
    ("1-D input", lambda t, i: save(t / "1d.zarr", np.zeros(10, "u2")), {"block_shape": 4, "halo": 1},
     InputError, "Expected a 2-D or 3-D image"),
    ("4-D input", lambda t, i: save(t / "4d.zarr", np.zeros((2, 4, 8, 8), "u2")), {}, InputError,
     "Expected a 2-D or 3-D image"),
    ("channel axis out of range", lambda t, i: save(t / "c.zarr", np.zeros((2, 8, 8), "u2")),
     {"channel_axis": 5, "block_shape": 4, "halo": 1}, InputError, "Expected a channel axis between"),
    ("channel out of range", lambda t, i: save(t / "c.zarr", np.zeros((2, 8, 8), "u2")),
     {"channel_axis": 0, "channel": 3, "block_shape": 4, "halo": 1}, InputError, "Expected channel indices between 0 and 1"),
    ("several channels, none chosen", lambda t, i: save(t / "c.zarr", np.zeros((2, 8, 8), "u2")),
     {"channel_axis": 0, "block_shape": 4, "halo": 1}, InputError, "has 2 channels"),
    ("complex dtype", lambda t, i: save(t / "cx.zarr", np.zeros((8, 8), np.complex64)), {"block_shape": 4, "halo": 1},
     InputError, "Expected an image of bool, integer or float values. Got dtype complex64"),
    ("block not positive", lambda t, i: i, {"block_shape": (8, 0, 16)}, InputError, "Expected block_shape >= 1"),
    ("block wrong length", lambda t, i: i, {"block_shape": (8, 16)}, InputError, "one integer or 3"),
    ("block not integer", lambda t, i: i, {"block_shape": "8,a,8"}, InputError, "Expected --block-shape as one integer >= 0 or one per axis"),
    ("halo >= block", lambda t, i: i, {"halo": (1, 16, 2)}, InputError, "Expected halo < block"),
    ("halo 0 on a split axis", lambda t, i: i, {"halo": (1, 0, 2)}, InputError, "Expected a halo >= 1 on axis y"),
    ("negative halo", lambda t, i: i, {"halo": (1, -1, 2)}, InputError, "Expected halo >= 0"),
    ("unknown backend", lambda t, i: i, {"backend": "magic"}, InputError, "Expected --backend among threshold, callable, cellpose. Got 'magic'"),
    ("unknown option", lambda t, i: i, {"thresold": 3}, InputError, "Unknown option 'thresold' for run. Did you mean 'threshold'?"),
    ("bad threshold", lambda t, i: i, {"threshold": "high"}, InputError, "Expected --threshold to be a number or 'otsu'"),
    ("bad connectivity", lambda t, i: i, {"connectivity": 4}, InputError, "Expected --connectivity between 1 and 3"),
    ("bad rule", lambda t, i: i, {"rule": "glue"}, InputError, "Expected --rule among exact, match, none, flows. Got 'glue'"),
    ("bad min_iou", lambda t, i: i, {"min_iou": 0}, InputError, "Expected min_iou in (0, 1]"),
    ("bad label dtype", lambda t, i: i, {"label_dtype": "int8"}, InputError, "Expected --label-dtype among auto, uint16, uint32, uint64. Got 'int8'"),
    ("function not importable", lambda t, i: i, {"backend": "callable", "function": "no_such_mod:f", "threshold": None},
     InputError, "Could not import the segmenter 'no_such_mod:f'"),
    ("function missing", lambda t, i: i, {"backend": "callable", "function": f"{SEG}:nope", "threshold": None},
     InputError, "has no callable named 'nope'"),
    ("function fails", lambda t, i: i, {"backend": "callable", "function": f"{SEG}:fail", "threshold": None},
     SegmenterError, "failed on block 0: RuntimeError: model exploded"),
    ("function returns wrong shape", lambda t, i: i, {"backend": "callable", "function": f"{SEG}:wrong_shape",
                                                       "threshold": None}, SegmenterError,
     "Expected labels of shape (9, 18, 18) (the block's core + halo) for block 0 (core z 0:8, y 0:16, x 0:16). Got shape (10, 19, 19)"),
    ("function returns floats", lambda t, i: i, {"backend": "callable", "function": f"{SEG}:floats", "threshold": None},
     SegmenterError, "Expected integer labels for block 0"),
    ("function returns negatives", lambda t, i: i, {"backend": "callable", "function": f"{SEG}:negative",
                                                     "threshold": None}, SegmenterError, "Expected labels >= 0"),
    ("function returns a list", lambda t, i: i, {"backend": "callable", "function": f"{SEG}:not_an_array",
                                                  "threshold": None}, SegmenterError, "Got list instead"),
]


@pytest.mark.parametrize("case,factory,opts,exc,fragment", RUN_TABLE, ids=[r[0] for r in RUN_TABLE])
def test_bad_input(tmp_path, img, case, factory, opts, exc, fragment):
    image = factory(tmp_path, img)
    opts = dict(opts)
    if opts.get("threshold", 0) is None:
        del opts["threshold"]
        opts.setdefault("progress", False)
        kw = dict(block_shape=(8, 16, 16), halo=(1, 2, 2), progress=False)
        kw.update(opts)
        with pytest.raises(exc) as info:
            pystitch.run(image, tmp_path / "out.zarr", **kw)
    else:
        with pytest.raises(exc) as info:
            _run(image, tmp_path / "out.zarr", **opts)
    assert fragment in str(info.value)
    assert not (tmp_path / "out.zarr").exists()
    assert not (tmp_path / "out_report").exists()


def test_output_exists_needs_overwrite(tmp_path, img):
    out = tmp_path / "out.zarr"
    first = _run(img, out)
    before = load(out)
    # the same command again recognises its own finished output: nothing to do
    assert _run(img, out) == first
    with pytest.raises(OutputExistsError, match="exists. Expected a new path, or --overwrite"):
        _run(img, out, threshold=1000)
    _run(img, out, overwrite=True, threshold=1000)
    after = load(out)
    image = zarr.open_array(img)[:]
    np.testing.assert_array_equal(after > 0, image > 1000)
    assert (after > 0).sum() < (before > 0).sum()


def test_failed_run_leaves_previous_output_untouched(tmp_path, img):
    out = tmp_path / "out.zarr"
    _run(img, out)
    before = load(out)
    with pytest.raises(SegmenterError):
        pystitch.run(img, out, block_shape=(8, 16, 16), halo=(1, 2, 2), backend="callable",
                     function=f"{SEG}:fail", overwrite=True, progress=False)
    np.testing.assert_array_equal(load(out), before)


def test_label_overflow_names_the_numbers(tmp_path):
    image = np.zeros((600, 600), np.uint8)
    image[::2, ::2] = 255                      # 90 000 isolated pixels
    path = save(tmp_path / "dots.zarr", image)
    with pytest.raises(LabelOverflowError, match=r"90000 objects do not fit in uint16 \(at most 65535\)"):
        _run(path, tmp_path / "out.zarr", block_shape=(300, 300), halo=(1, 1), threshold=100, label_dtype="uint16")
    assert not (tmp_path / "out.zarr").exists()


# ---- errors between steps


@pytest.fixture
def steps(tmp_path, img):
    """A plan whose blocks are segmented (work dir kept)."""
    plan = pystitch.plan_blocks(img, tmp_path / "out.zarr", block_shape=(8, 16, 16), halo=(1, 2, 2),
                                backend_options={"threshold": 500})
    pystitch.segment_blocks(plan, "all")
    return plan


def test_edited_plan_is_refused(steps):
    doc = json.loads(steps.plan_path.read_text())
    doc["halo"] = [1, 1, 1]
    steps.plan_path.write_text(json.dumps(doc))
    with pytest.raises(PlanMismatchError, match="was edited after plan-blocks wrote it"):
        pystitch.face_pairs(steps.plan_path, "all")


def test_outputs_of_another_plan_are_refused(tmp_path, img, steps):
    other = pystitch.plan_blocks(img, tmp_path / "other.zarr", block_shape=(8, 16, 16), halo=(1, 2, 2),
                                 backend_options={"threshold": 600})
    with pytest.raises(PlanMismatchError, match="was produced for plan .* not for the plan in use"):
        pystitch.face_pairs(other, "all", manifests=steps.manifest_dir)


def test_missing_manifest(steps):
    (steps.manifest_dir / "block-000003.json").unlink()
    with pytest.raises(StagingError, match=r"no manifest: 3\. Run segment-block"):
        pystitch.face_pairs(steps, "0-7")


def test_corrupt_manifest(steps):
    (steps.manifest_dir / "block-000002.json").write_text('{"plan_hash": "x", "blo')
    with pytest.raises(StagingError, match=r"block-000002.json is not valid JSON"):
        pystitch.resolve(steps)


def test_missing_pairs(steps):
    pystitch.face_pairs(steps, "0-3")
    with pytest.raises(StagingError, match=r"have none: 4, 5, 6, 7. Run face-pairs"):
        pystitch.resolve(steps)


def test_corrupt_pairs(steps):
    path = pystitch.face_pairs(steps, "all")
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(StagingError, match="is unreadable .* it is corrupt"):
        pystitch.resolve(steps)


def test_apply_lut_before_resolve(steps):
    with pytest.raises(StagingError, match="run resolve first"):
        pystitch.apply_lut(steps, "all")


def test_corrupt_staging_is_detected(steps):
    pystitch.face_pairs(steps, "all")
    pystitch.resolve(steps)
    # a manifest that undercounts the labels its staging chunk holds
    core = zarr.open_group(steps.staging_uri, mode="r+")["core"]
    sl = steps.grid.core(0)
    data = core[sl]
    data[data > 0] = data.max() + 5
    core[sl] = data
    with pytest.raises(StagingError, match=r"block 0 .* hold id .* but its manifest counted"):
        pystitch.apply_lut(steps, [0])


def test_finalize_needs_every_block(steps):
    pystitch.face_pairs(steps, "all")
    pystitch.resolve(steps)
    pystitch.apply_lut(steps, "0-3")
    with pytest.raises(StagingError, match="finalize needs apply-lut's output for"):
        pystitch.finalize(steps)
    assert not Path(steps.output).exists()


def test_block_ids_are_checked(steps):
    with pytest.raises(InputError, match=r"Expected block ids between 0 and 7. Got \[8\]"):
        pystitch.segment_blocks(steps, "6-8")
    with pytest.raises(InputError, match="Expected block ids like 7, 0-9"):
        pystitch.segment_blocks(steps, "a-b")
