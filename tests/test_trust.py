"""A failure never costs data and never passes silently.

* Damaged intermediate results are errors that name the block (a deleted
  chunk, a flipped byte in a core chunk or a face slab).
* Every step can be repeated: it does nothing, or redoes what depends on it,
  or refuses with a message; never a wrong result with exit status 0.
* One run per work directory.
* Nothing pystitch did not write is written into or removed (input, output,
  work and report directories are separate places; --overwrite removes only
  pystitch's own stores).
* A rerun after a kill that came after the label image was published
  finishes the run.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

import pystitch
from helpers import assert_partition_equivalent, load, save
from pystitch.errors import InputError, OutputExistsError, StagingError
from pystitch.example import blobs, write_example

SEG = str(Path(__file__).parent / "segmenters.py")
VENV_BIN = Path(sys.executable).parent
OPTS = dict(block_shape=(8, 16, 16), halo=(1, 2, 2), threshold=500, progress=False)


@pytest.fixture
def image():
    return blobs((16, 32, 48), seed=7, sigma=2.0, fraction=0.25)


@pytest.fixture
def img(tmp_path, image):
    return save(tmp_path / "img.zarr", image, chunks=(8, 16, 16))


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes (a store, a report)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def segmented(img, tmp_path):
    """A plan with every block segmented."""
    plan = pystitch.plan_blocks(img, tmp_path / "out.zarr", block_shape=(8, 16, 16), halo=(1, 2, 2),
                                backend_options={"threshold": 500})
    pystitch.segment_blocks(plan, "all")
    return plan


def _chunk(plan, name: str, block: int) -> Path:
    return Path(plan.staging_uri) / name / "c" / Path(*map(str, plan.grid.index(block)))


# --------------------------------------------------------------------------- damaged staging


@pytest.mark.parametrize("piece", ["core", "face-2-hi"])
def test_a_staging_write_that_fails_behind_is_one_line_and_leaves_no_manifest(img, tmp_path, piece):
    """Blocks are stored in the background while the next one is segmented: a
    piece that cannot be written (here a directory stands where its chunk
    goes) is one line naming the chunk and the block; that block has no
    manifest, so a rerun segments it again and gets what a clean run gets."""
    clean = segmented(img, tmp_path / "clean")
    plan = pystitch.plan_blocks(img, tmp_path / "out.zarr", block_shape=(8, 16, 16), halo=(1, 2, 2),
                                backend_options={"threshold": 500})
    bad = 1
    obstacle = _chunk(plan, piece, bad)
    obstacle.mkdir(parents=True)
    (obstacle / "not-pystitch").write_text("x")
    with pytest.raises(StagingError) as err:
        pystitch.segment_blocks(plan, "all")
    message = str(err.value)
    assert "\n" not in message and str(obstacle) in message and "block 1 " in message, message
    assert not (plan.manifest_dir / "block-000001.json").exists()
    assert (plan.manifest_dir / "block-000000.json").exists()
    (obstacle / "not-pystitch").unlink()
    obstacle.rmdir()
    pystitch.segment_blocks(plan, "all", skip_existing=True)

    def written(p):
        return {b: (d["n_labels"], d["pieces"]) for b, d in pystitch.manifests.read_manifests(p).items()}

    assert written(plan) == written(clean)


def test_a_batch_reads_only_its_blocks_manifests(img, tmp_path):
    """face-pairs of a batch needs the manifests of its blocks and their
    neighbours, not every block's of the image (a JSON Lines file of all of
    them is hundreds of MB at 10^5 blocks): read_manifests(blocks=...) keeps
    exactly those, from a JSON Lines file or a directory, whatever other
    fields say "block"."""
    plan = segmented(img, tmp_path)
    everything = pystitch.manifests.read_manifests(plan)
    assert len(everything) == plan.n_blocks > 4
    jsonl = tmp_path / "manifests.jsonl"
    rng = np.random.default_rng(0)
    lines = []
    for b in rng.permutation(plan.n_blocks):   # gathered in any order, with a decoy field naming another block
        doc = dict(everything[int(b)], note={"block": int((b + 1) % plan.n_blocks)})
        lines.append(json.dumps(doc, separators=(",", ":") if b % 2 else (", ", ": ")))
    jsonl.write_text("\n".join(lines) + "\n\n")

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.sets(st.integers(0, plan.n_blocks + 3)))
    def check(blocks):
        expected = {b: everything[b] for b in blocks if b in everything}
        from_lines = pystitch.manifests.read_manifests(plan, jsonl, blocks=blocks)
        assert {b: {k: v for k, v in d.items() if k != "note"} for b, d in from_lines.items()} == expected
        assert pystitch.manifests.read_manifests(plan, None, blocks=blocks) == expected

    check()


def test_deleted_core_chunk_is_named(img, tmp_path):
    plan = segmented(img, tmp_path)
    pystitch.face_pairs(plan, "all")
    pystitch.resolve(plan)
    block = next(b for b in range(plan.n_blocks) if _chunk(plan, "core", b).exists())
    _chunk(plan, "core", block).unlink()
    with pytest.raises(StagingError, match=rf"chunk .*core/c/.* of block {block} .* holds 0 labelled voxels; "
                                           r"its manifest recorded \d+: the chunk is missing"):
        pystitch.apply_lut(plan, "all")


def test_flipped_byte_in_a_core_chunk_is_named(img, tmp_path):
    plan = segmented(img, tmp_path)
    pystitch.face_pairs(plan, "all")
    pystitch.resolve(plan)
    block = next(b for b in range(plan.n_blocks) if _chunk(plan, "core", b).exists())
    path = _chunk(plan, "core", block)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(StagingError, match=rf"staging chunk .*core/c/.* of block {block} .*cannot be read .*"
                                           rf"damaged. Run segment-block for block {block} again"):
        pystitch.apply_lut(plan, "all")


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_damaged_face_slab_is_named(img, tmp_path, damage):
    plan = segmented(img, tmp_path)
    slabs = sorted(p for p in Path(plan.staging_uri).glob("face-*/c/**/*") if p.is_file())
    path = slabs[len(slabs) // 2]
    if damage == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    else:
        path.unlink()
    name = path.relative_to(plan.staging_uri).parts[0]
    with pytest.raises(StagingError, match=rf"staging chunk .*{name}/c/.* of block \d+ .*(cannot be read|missing)"):
        pystitch.face_pairs(plan, "all")


def test_corrupt_input_chunk_names_the_chunk_and_block(tmp_path, image):
    path = save(tmp_path / "img.zarr", image, chunks=(8, 16, 16))
    chunk = Path(path) / "c" / "1" / "0" / "2"
    chunk.write_bytes(b"\0garbage" * 10)
    with pytest.raises(InputError, match=r"Could not read chunk c/1/0/2 of .*img.zarr .*damaged .*"
                                         r"\(reading block \d+ \(core z "):
        pystitch.run(path, tmp_path / "out.zarr", **OPTS)
    assert not (tmp_path / "out.zarr").exists()


# --------------------------------------------------------------------------- repeating steps


def test_resolve_again_after_apply_lut_changes_nothing(img, tmp_path, image):
    plan = segmented(img, tmp_path)
    pystitch.face_pairs(plan, "all")
    pystitch.resolve(plan)
    pystitch.apply_lut(plan, "all")
    pystitch.resolve(plan)                       # the same inputs: nothing to do (the output is kept)
    pystitch.finalize(plan)
    assert_partition_equivalent(load(tmp_path / "out.zarr"), ndimage.label(image > 500)[0])


def test_stale_statistics_are_refused_after_a_new_output(img, tmp_path):
    """resolve recreating the output (its previous one lost) voids apply-lut's results."""
    plan = segmented(img, tmp_path)
    pystitch.face_pairs(plan, "all")
    pystitch.resolve(plan)
    pystitch.apply_lut(plan, "all")
    import shutil
    shutil.rmtree(plan.partial_output)
    pystitch.resolve(plan)                       # a new, empty output
    with pytest.raises(StagingError, match="written into an earlier output .* run apply-lut again"):
        pystitch.finalize(plan)
    assert not (tmp_path / "out.zarr").exists()


def test_segment_again_after_face_pairs_is_never_mixed(tmp_path, image):
    """A block segmented again (differently) after its pairs were computed."""
    path = save(tmp_path / "img.zarr", image)
    marker = tmp_path / "thresholds.json"
    opts = {"function": f"{SEG}:counting_threshold", "kwargs": {"config": str(marker)}}
    marker.write_text(json.dumps({"threshold": 500}))
    plan = pystitch.plan_blocks(path, tmp_path / "out.zarr", block_shape=(8, 16, 16), halo=(1, 2, 2),
                                backend="callable", rule="exact", backend_options=opts)
    pystitch.segment_blocks(plan, "all")
    pystitch.face_pairs(plan, "all")
    marker.write_text(json.dumps({"threshold": 1000}))
    block = max(plan.work_blocks(), key=lambda b: (load_core(plan, b) > 0).sum())
    pystitch.segment_blocks(plan, [block])
    with pytest.raises(StagingError, match=rf"computed from an earlier segmentation of block {block}.* face-pairs"):
        pystitch.resolve(plan)


def load_core(plan, block):
    return zarr.open_group(plan.staging_uri, mode="r")["core"][plan.grid.core(block)]


def test_runner_redoes_what_depends_on_a_block_segmented_again(tmp_path, image):
    path = save(tmp_path / "img.zarr", image)
    config = tmp_path / "thresholds.json"
    config.write_text(json.dumps({"threshold": 500}))
    opts = dict(block_shape=(8, 16, 16), halo=(1, 2, 2), backend="callable", rule="exact",
                function=f"{SEG}:counting_threshold", kwargs={"config": str(config)}, progress=False)
    plan = pystitch.plan_blocks(path, tmp_path / "out.zarr", block_shape=(8, 16, 16), halo=(1, 2, 2),
                                backend="callable", rule="exact",
                                backend_options={"function": opts["function"], "kwargs": opts["kwargs"]})
    pystitch.segment_blocks(plan, "all")
    pystitch.face_pairs(plan, "0-5")
    # all blocks segmented again with another threshold: the pairs already computed are void
    config.write_text(json.dumps({"threshold": 1000}))
    import shutil
    shutil.rmtree(plan.manifest_dir)
    pystitch.run(path, tmp_path / "out.zarr", **opts)
    assert_partition_equivalent(load(tmp_path / "out.zarr"), ndimage.label(image > 1000)[0])


# --------------------------------------------------------------------------- one run per work directory


def test_second_run_on_a_work_dir_fails_at_once_naming_the_first(tmp_path, image):
    path = save(tmp_path / "img.zarr", image)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    args = [str(VENV_BIN / "pystitch"), "run", path, str(tmp_path / "out.zarr"), "--block-shape", "8,16,16",
            "--halo", "1,2,2", "--backend", "callable", "--function", f"{SEG}:slow", "--kwargs",
            '{"seconds": 0.5}', "--rule", "exact"]
    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "out_work" / ".pystitch.lock"
    deadline = time.time() + 60
    while not (lock.exists() and lock.read_text().strip()) and time.time() < deadline:
        time.sleep(0.1)
    t = time.perf_counter()
    second = subprocess.run(args, env=env, capture_output=True, text=True)
    waited = time.perf_counter() - t
    first.communicate(timeout=300)
    assert first.returncode == 0
    assert second.returncode == 1
    assert f"is in use by pid {first.pid} on" in second.stderr and "Traceback" not in second.stderr
    assert waited < 20  # it did not wait for the first run to end
    assert_partition_equivalent(load(tmp_path / "out.zarr"), ndimage.label(image > 500)[0])


# --------------------------------------------------------------------------- places


@pytest.mark.parametrize("case", ["same path", "output inside a plain zarr input", "input inside the output",
                                  "work dir inside the input", "report dir is the output"])
def test_overlapping_places_are_refused_before_anything_is_written(tmp_path, image, case):
    base = tmp_path / "data"
    path = save(base / "img.zarr", image) if case != "input inside the output" else \
        save(tmp_path / "out.zarr" / "img.zarr", image)
    before = tree(Path(path))
    kw = dict(OPTS, overwrite=True)
    out = {"same path": path, "output inside a plain zarr input": f"{path}/c/labels.zarr",
           "input inside the output": str(tmp_path / "out.zarr")}.get(case, str(tmp_path / "labels.zarr"))
    if case == "work dir inside the input":
        kw["work_dir"] = f"{path}/work"
    if case == "report dir is the output":
        kw["report_dir"] = out
    with pytest.raises(InputError, match=r"(is the same path as|lies inside) the .*Expected separate places"):
        pystitch.run(path, out, **kw)
    assert tree(Path(path)) == before                      # the input is untouched, even with --overwrite
    assert not (tmp_path / "labels.zarr").exists()


def test_overwrite_never_removes_what_pystitch_did_not_write(tmp_path, img):
    out = tmp_path / "out.zarr"
    out.mkdir()
    (out / "my-notes.txt").write_text("precious")
    with pytest.raises(OutputExistsError, match="was not written by pystitch .* never removed, even with --overwrite"):
        pystitch.run(img, out, **OPTS, overwrite=True)
    assert (out / "my-notes.txt").read_text() == "precious"
    report = tmp_path / "rep"
    report.mkdir()
    (report / "x.csv").write_text("mine")
    with pytest.raises(OutputExistsError, match="report directory .* not written by pystitch"):
        pystitch.run(img, tmp_path / "o2.zarr", **OPTS, overwrite=True, report_dir=report)
    assert (report / "x.csv").read_text() == "mine"
    assert not (tmp_path / "o2.zarr").exists()


def test_labels_inside_an_ome_zarr_image_are_still_allowed(tmp_path):
    img = write_example(tmp_path / "img.ome.zarr", shape=(16, 32, 32))
    s = pystitch.run(str(img), f"{img}/labels/cells", **OPTS)
    assert s["objects"] > 0 and (Path(img) / "labels" / "cells" / "0").exists()


# --------------------------------------------------------------------------- late kills


def test_rerun_after_a_kill_between_publishing_output_and_report(tmp_path, img):
    clean = pystitch.run(img, tmp_path / "clean.zarr", **OPTS, keep_work=True)
    # as if killed after the label image was moved into place, before the report was
    out = tmp_path / "out.zarr"
    pystitch.run(img, out, **OPTS, keep_work=True)
    import shutil
    shutil.rmtree(tmp_path / "out_report")
    again = pystitch.run(img, out, **OPTS)
    assert again["objects"] == clean["objects"]
    assert tree(out) == tree(tmp_path / "clean.zarr")
    assert (tmp_path / "out_report" / "regions.csv").read_bytes() == \
        (tmp_path / "clean_report" / "regions.csv").read_bytes()
    assert not (tmp_path / "out_work").exists()


def test_temporary_chunk_files_are_never_published(tmp_path, img):
    plan = segmented(img, tmp_path)
    pystitch.face_pairs(plan, "all")
    pystitch.resolve(plan)
    pystitch.apply_lut(plan, "all")
    leftover = Path(plan.partial_output) / "0" / "0" / "0" / f"0.{'ab' * 16}.partial"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"half a chunk")            # what a killed zarr write leaves
    pystitch.finalize(plan)
    assert not list((tmp_path / "out.zarr").rglob("*.partial"))


# --------------------------------------------------------------------------- guard rails


def test_block_larger_than_the_image_is_clipped(tmp_path, img, image):
    plan = pystitch.plan_blocks(img, tmp_path / "o.zarr", block_shape=1000, halo=8,
                                backend_options={"threshold": 500})
    assert plan.block_shape == image.shape and plan.n_blocks == 1


def test_timepoint_without_a_time_axis_is_refused(tmp_path, img):
    with pytest.raises(InputError, match="--timepoint was given but .* has no time axis"):
        pystitch.run(img, tmp_path / "o.zarr", **OPTS, timepoint=0)


@pytest.mark.parametrize("name,value,fragment", [("workers", 0, "--workers >= 1"),
                                                 ("workers", -2, "--workers >= 1"),
                                                 ("pyramid_levels", 0, "--pyramid-levels >= 1")])
def test_counts_are_checked(tmp_path, img, name, value, fragment):
    with pytest.raises(InputError, match=fragment):
        pystitch.run(img, tmp_path / "o.zarr", **OPTS, **{name: value})


def test_an_image_without_objects_warns(tmp_path, caplog):
    path = save(tmp_path / "nan.zarr", np.full((16, 32), np.nan, np.float32))
    with caplog.at_level(logging.WARNING):
        s = pystitch.run(path, tmp_path / "o.zarr", block_shape=16, halo=1, threshold=0.5, progress=False)
    assert s["objects"] == 0
    assert "no objects were found" in caplog.text
