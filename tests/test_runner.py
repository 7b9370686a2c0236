"""The local runner: resume, retry after a failure, the merge-only API."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

import pystitch
from helpers import assert_partition_equivalent, load, save
from pystitch.errors import SegmenterError
from pystitch.example import blobs

SEG = str(Path(__file__).parent / "segmenters.py")


def test_resume_skips_finished_blocks(tmp_path):
    image = blobs((24, 48, 48), seed=2, sigma=2.0, fraction=0.2)
    path = save(tmp_path / "img.zarr", image)
    log = tmp_path / "calls.txt"
    opts = dict(block_shape=(8, 16, 16), halo=(1, 2, 2), backend="callable", rule="exact",
                function=f"{SEG}:counting", kwargs={"log": str(log)}, progress=False)
    # an earlier, interrupted run: plan and half the blocks done
    plan = pystitch.plan_blocks(path, tmp_path / "out.zarr", block_shape=opts["block_shape"], halo=opts["halo"],
                                backend="callable", rule="exact",
                                backend_options={"function": opts["function"], "kwargs": opts["kwargs"]})
    pystitch.segment_blocks(plan, f"0-{plan.n_blocks // 2 - 1}")
    assert len(log.read_text().splitlines()) == plan.n_blocks // 2
    pystitch.run(path, tmp_path / "out.zarr", **opts)
    assert len(log.read_text().splitlines()) == plan.n_blocks  # each block segmented once
    ref = ndimage.label(image > 500)[0]
    assert_partition_equivalent(load(tmp_path / "out.zarr"), ref)


def test_rerun_after_a_failure_continues(tmp_path):
    image = blobs((16, 48, 48), seed=3, sigma=2.0, fraction=0.2)
    path = save(tmp_path / "img.zarr", image)
    marker = tmp_path / "failed-once"
    opts = dict(block_shape=(8, 16, 16), halo=(1, 2, 2), backend="callable", rule="exact", function=f"{SEG}:flaky",
                kwargs={"marker": str(marker)}, progress=False)
    with pytest.raises(SegmenterError, match="transient failure"):
        pystitch.run(path, tmp_path / "out.zarr", **opts)
    assert not (tmp_path / "out.zarr").exists()
    pystitch.run(path, tmp_path / "out.zarr", **opts)
    assert_partition_equivalent(load(tmp_path / "out.zarr"), ndimage.label(image > 500)[0])


def test_merge_api_with_own_labels(tmp_path):
    truth = ndimage.label(blobs((60, 70), seed=1, sigma=3.0, fraction=0.3) > 500)[0]
    shape = truth.shape

    def labels_of(block, region):
        # an own segmenter run per block: connected components of the block's region
        return ndimage.label(truth[region] > 0)[0]

    summary = pystitch.merge(labels_of, tmp_path / "merged.zarr", shape=shape, block_shape=(20, 25), halo=(3, 3),
                             rule="exact")
    out = load(tmp_path / "merged.zarr")
    assert_partition_equivalent(out, truth)
    assert summary["objects"] == truth.max()
    # a mapping works as well; missing blocks are empty
    from pystitch.plan import Plan
    plan = Plan(image=None, shape=shape, dtype="uint32", axes="yx", block_shape=(20, 25), halo=(3, 3),
                backend={"name": "provided"}, rule="match", work_dir=str(tmp_path / "w"), output="", report_dir="")
    mapping = {b: labels_of(b, plan.grid.extended(b)) for b in range(plan.n_blocks) if b != 0}
    pystitch.merge(mapping, tmp_path / "m2.zarr", shape=shape, block_shape=(20, 25), halo=(3, 3))
    m2 = load(tmp_path / "m2.zarr")
    assert (m2[plan.grid.core(0)] == 0).all() and (m2[plan.grid.core(1)] > 0).any()


def test_otsu_threshold_is_global(tmp_path):
    image = blobs((20, 64, 64), seed=9, sigma=2.0, fraction=0.2)
    image[:, :, 32:] //= 3        # a dim half: a per-block threshold would differ there
    path = save(tmp_path / "img.zarr", image)
    s = pystitch.run(path, tmp_path / "out.zarr", block_shape=(10, 32, 32), halo=(1, 2, 2), threshold="otsu",
                     progress=False)
    thr = s["stats"]["threshold"]
    assert 100 < thr < 1000
    assert_partition_equivalent(load(tmp_path / "out.zarr"), ndimage.label(image > thr)[0])


def test_resume_reuses_the_plan_without_rescanning(tmp_path, monkeypatch):
    import pystitch.steps.plan_blocks as plan_mod

    path = save(tmp_path / "img.zarr", blobs((16, 32, 32), seed=1))
    kw = dict(block_shape=(8, 16, 16), halo=(1, 2, 2), backend_options={"threshold": "otsu"})
    first = pystitch.plan_blocks(path, tmp_path / "out.zarr", **kw)
    assert first.backend["threshold"] != "otsu"           # resolved by the scan

    def no_scan(*a, **k):
        raise AssertionError("the image was scanned again")

    monkeypatch.setattr(plan_mod, "scan_image", no_scan)
    again = pystitch.plan_blocks(path, tmp_path / "out.zarr", **kw)
    assert again.hash == first.hash
    with pytest.raises(AssertionError, match="scanned again"):   # other settings: a new plan
        pystitch.plan_blocks(path, tmp_path / "out.zarr", overwrite=True,
                             **{**kw, "backend_options": {"threshold": 700}})


def test_overwrite_only_removes_what_pystitch_wrote(tmp_path):
    path = save(tmp_path / "img.zarr", blobs((16, 32, 32), seed=1))
    work = tmp_path / "shared-dir"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    pystitch.plan_blocks(path, tmp_path / "out.zarr", block_shape=8, halo=1, work_dir=work,
                         backend_options={"threshold": 500})
    with pytest.raises(pystitch.OutputExistsError, match="holds a different plan"):
        pystitch.plan_blocks(path, tmp_path / "out.zarr", block_shape=8, halo=2, work_dir=work,
                             backend_options={"threshold": 500})
    plan = pystitch.plan_blocks(path, tmp_path / "out.zarr", block_shape=8, halo=2, work_dir=work, overwrite=True,
                                backend_options={"threshold": 500})
    assert plan.halo == (2, 2, 2) and (work / "notes.txt").read_text() == "mine"
    plan.clean_work_dir(finished=True)
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]


def test_a_killed_atomic_write_leaves_nothing_behind(tmp_path):
    """A step killed between writing a small file's temporary copy and renaming
    it (SIGKILL: no cleanup runs) leaves ``.resolve.json.<random>.tmp``; the
    finished run's cleanup removes it with the work directory, and only it:
    files of similar names that pystitch does not write stay."""
    path = save(tmp_path / "img.zarr", blobs((16, 32, 32), seed=1))
    work = tmp_path / "work"
    plan = pystitch.plan_blocks(path, tmp_path / "out.zarr", block_shape=8, halo=1, work_dir=work,
                                backend_options={"threshold": 500})
    for name in ("resolve.json", "output-id.json", "plan.json"):
        os.close(tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=work)[0])   # atomic_write_bytes' name
    plan.clean_work_dir(finished=True)
    assert not work.exists()
    work.mkdir()
    mine = [".resolve.json.notes.tmp", ".resolve.json.abcdefgh.tmp.bak", "resolve.json.abcdefgh.tmp"]
    for name in mine:
        (work / name).write_text("mine")
    plan.clean_work_dir(finished=True)
    assert sorted(p.name for p in work.iterdir()) == sorted(mine)


def test_workers_see_the_environment_of_the_run_not_of_the_fork_server(tmp_path, monkeypatch):
    """Worker processes come from a fork server started once per Python
    process: what the caller sets in os.environ afterwards (credentials,
    PYSTITCH_* settings, a segmenter's own) still reaches them, and what it
    removed is gone."""
    from multiprocessing import forkserver

    path = save(tmp_path / "img.zarr", blobs((16, 32, 32), seed=1))
    opts = dict(block_shape=8, halo=1, backend="callable", rule="exact", workers=2, progress=False,
                function=f"{SEG}:needs_environment")
    pystitch.run(path, tmp_path / "warm.zarr", **opts, kwargs={"name": "HOME", "value": os.environ["HOME"]})
    forkserver.ensure_running()   # started before the variable is set
    monkeypatch.setenv("PYSTITCH_TEST_SETTING", "set after the fork server")
    s = pystitch.run(path, tmp_path / "a.zarr", **opts,
                     kwargs={"name": "PYSTITCH_TEST_SETTING", "value": "set after the fork server"})
    assert s["objects"] > 0
    monkeypatch.delenv("PYSTITCH_TEST_SETTING")
    with pytest.raises(SegmenterError, match="PYSTITCH_TEST_SETTING is None in this worker"):
        pystitch.run(path, tmp_path / "b.zarr", **opts,
                     kwargs={"name": "PYSTITCH_TEST_SETTING", "value": "set after the fork server"})


def test_workers_give_zarr_their_share_of_the_cores(tmp_path, monkeypatch):
    """zarr's codec thread pool defaults to cores + 4 in every process: each
    worker gets its share of the cores instead; a positive integer in
    ZARR_THREADING__MAX_WORKERS still decides (and nothing else does)."""
    from pystitch.runner import usable_cores

    path = save(tmp_path / "img.zarr", blobs((16, 32, 32), seed=1))
    opts = dict(block_shape=8, halo=1, backend="callable", rule="exact", workers=2, progress=False,
                function=f"{SEG}:zarr_threads")
    monkeypatch.delenv("ZARR_THREADING__MAX_WORKERS", raising=False)
    share = max(1, usable_cores() // 2)
    s = pystitch.run(path, tmp_path / "a.zarr", **opts, kwargs={"expected": share})
    assert s["objects"] > 0
    monkeypatch.setenv("ZARR_THREADING__MAX_WORKERS", "3")
    assert pystitch.run(path, tmp_path / "b.zarr", **opts, kwargs={"expected": 3})["objects"] == s["objects"]
    for ignored in ("0", "many"):
        monkeypatch.setenv("ZARR_THREADING__MAX_WORKERS", ignored)
        assert pystitch.run(path, tmp_path / f"c{ignored}.zarr", **opts,
                            kwargs={"expected": share})["objects"] == s["objects"]


def test_image_without_foreground(tmp_path):
    path = save(tmp_path / "blank.zarr", np.full((20, 40, 40), 100, np.uint16))
    s = pystitch.run(path, tmp_path / "out.zarr", block_shape=(10, 20, 20), halo=1, threshold=500, progress=False)
    assert s["objects"] == 0 and s["empty_blocks"] == s["blocks"] == 8
    s = pystitch.run(path, tmp_path / "ahead.zarr", block_shape=(10, 20, 20), halo=1, threshold=500, progress=False,
                     skip_empty=True)   # marked at plan time: nothing is scheduled at all
    assert s["objects"] == 0 and s["planned_empty_blocks"] == s["blocks"] == 8
    assert load(tmp_path / "out.zarr").max() == 0
    assert (tmp_path / "out_report" / "regions.csv").read_text().startswith("id,voxels")


@pytest.mark.parametrize("n, workers", [(1, 2), (7, 2), (8, 2), (10, 3), (5, 1), (3, 4)])
def test_sweep_order_is_a_permutation_with_one_contiguous_range_per_worker(n, workers):
    from pystitch.runner import sweep_order

    groups = [[i] for i in range(n)]
    order = sweep_order(groups, workers)
    assert sorted(order) == groups
    # taking the batches in turn, every worker's share is one ascending run of consecutive batches
    for w in range(min(workers, n)):
        share = [g[0] for g in order[w::min(workers, len(order))]]
        assert share == list(range(share[0], share[0] + len(share)))
