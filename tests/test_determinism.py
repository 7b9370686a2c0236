"""The same input gives byte-identical output whatever the order blocks and
pairs are processed in, and with 1 or 2 workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import pystitch
from helpers import load, run_steps, save
from pystitch.example import blobs
from pystitch.plan import Plan
from pystitch.storage.lut import Lut
from pystitch.storage.files import atomic_write_npz


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_block_order_and_batching_do_not_change_the_output(tmp_path):
    image = blobs((30, 70, 60), seed=11, sigma=2.0, fraction=0.2)
    path = save(tmp_path / "img.zarr", image)
    outputs = []
    for i, (seed, batch) in enumerate([(None, 1), (1, 1), (2, 3), (3, 7)]):
        out = tmp_path / f"out{i}.zarr"
        run_steps(path, out, block_shape=(12, 20, 16), halo=(2, 3, 3), order_seed=seed, batch=batch, threshold=500,
                  connectivity=3)
        outputs.append(out)
    first = tree_bytes(outputs[0])
    assert sum(k.startswith("0/") for k in first) > 10  # level-0 chunks
    for other in outputs[1:]:
        assert tree_bytes(other) == first
    csvs = [(Path(str(o).replace(".zarr", "_report")) / "regions.csv").read_bytes() for o in outputs]
    assert all(c == csvs[0] for c in csvs)


def test_pair_order_does_not_change_the_lut(tmp_path):
    image = blobs((24, 60, 60), seed=5, sigma=2.0, fraction=0.25)
    path = save(tmp_path / "img.zarr", image)
    run_steps(path, tmp_path / "out.zarr", block_shape=(8, 16, 16), halo=(1, 2, 2), threshold=500, connectivity=1)
    plan = Plan.load(tmp_path / "out.work")
    lut_before = Lut.open(plan.lut_uri, plan.hash).lut[:]
    rng = np.random.default_rng(0)
    files = sorted(plan.pairs_dir.glob("*.npz"))
    all_rows = []
    for f in files:
        data = dict(np.load(f))
        rows = data["pairs"]
        all_rows.append(rows)
        f.unlink()
    rows = np.concatenate(all_rows)
    assert len(rows) > 20
    # shuffle, duplicate and reverse pairs, and spread them over other files
    rows = np.concatenate([rows, rows[: len(rows) // 2]])
    rows = rows[rng.permutation(len(rows))]
    flip = rng.random(len(rows)) < 0.5
    rows[flip] = rows[flip][:, [2, 3, 0, 1]]
    blocks = np.arange(plan.n_blocks)
    for i, (part, bl) in enumerate(zip(np.array_split(rows, 3), np.array_split(blocks, 3))):
        atomic_write_npz(plan.pairs_dir / f"pairs-shuffled-{i}.npz",
                         {"pairs": part, "blocks": bl, "plan_hash": np.asarray(plan.hash)})
    pystitch.resolve(plan)
    np.testing.assert_array_equal(Lut.open(plan.lut_uri, plan.hash).lut[:], lut_before)


def test_one_or_two_workers_give_identical_bytes(tmp_path):
    image = blobs((24, 64, 64), seed=3, sigma=2.0, fraction=0.2)
    path = save(tmp_path / "img.zarr", image)
    s1 = pystitch.run(path, tmp_path / "w1.zarr", block_shape=(8, 32, 16), halo=(1, 2, 2), threshold=500,
                      workers=1, progress=False)
    s2 = pystitch.run(path, tmp_path / "w2.zarr", block_shape=(8, 32, 16), halo=(1, 2, 2), threshold=500,
                      workers=2, progress=False)
    assert s1["objects"] == s2["objects"] > 5
    assert tree_bytes(tmp_path / "w1.zarr") == tree_bytes(tmp_path / "w2.zarr")
    assert (tmp_path / "w1_report" / "regions.csv").read_bytes() == (tmp_path / "w2_report" / "regions.csv").read_bytes()
    # work directories are removed after success unless asked to keep them
    assert not (tmp_path / "w1_work").exists()
    np.testing.assert_array_equal(load(tmp_path / "w1.zarr") > 0, image > 500)
