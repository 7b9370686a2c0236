"""The ``match`` rule on touching cells: distinct cells that touch across a
seam stay distinct, one cell crossing a seam gets one id."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from scipy import ndimage

from helpers import load, run_steps, save
from pystitch.plan import Plan
from pystitch.storage.lut import Lut
from segmenters import border_dilating


def touching_cells(shape, n_cells: int, seed: int) -> np.ndarray:
    """A dense tissue of touching cells: Voronoi regions of random seeds inside
    large blobs, so cells touch each other and the background."""
    rng = np.random.default_rng(seed)
    seeds = np.stack([rng.integers(0, s, n_cells) for s in shape], axis=1)
    marker = np.zeros(shape, np.int32)
    marker[tuple(seeds.T)] = np.arange(1, n_cells + 1)
    _, idx = ndimage.distance_transform_edt(marker == 0, return_indices=True)
    voronoi = marker[tuple(idx)]
    voronoi[ndimage.gaussian_filter(rng.standard_normal(shape), 10) <= -0.2] = 0
    # a region cut by the tissue mask may fall into pieces: each piece is a cell
    cells = np.zeros(shape, np.uint32)
    for c in np.unique(voronoi[voronoi > 0]):
        pieces, n = ndimage.label(voronoi == c)
        cells[pieces > 0] = pieces[pieces > 0] + cells.max()
    return cells


def stitch_errors(work_dir, truth: np.ndarray, segmenter, min_voxels: int = 10) -> tuple[int, int]:
    """(false joins, split cells) made by the stitching itself.

    The test segmenters keep the true cell ids, so every block object is
    known: local id k of a block is the k-th smallest true id in its core (the
    order segment-block numbers them in).  A false join: the stitch joined
    objects of different cells.  A split: objects of one cell (each with at
    least ``min_voxels`` core voxels) got different final ids.
    """
    plan = Plan.load(work_dir)
    lut = Lut.open(plan.lut_uri, plan.hash)
    name: dict[tuple[int, int], int] = {}
    final: dict[int, set] = {}
    for b in range(plan.n_blocks):
        offset, n = lut.block_range(b)
        if n == 0:
            continue
        ext = plan.grid.extended(b)
        pred = segmenter(truth[ext])
        core = tuple(slice(c.start - e.start, c.stop - e.start) for c, e in zip(plan.grid.core(b), ext))
        cells, sizes = np.unique(pred[core], return_counts=True)
        sizes = sizes[cells > 0]
        cells = cells[cells > 0]
        assert len(cells) == n
        ids = lut.read(offset + 1, offset + n + 1)
        for k, (cell, size) in enumerate(zip(cells.tolist(), sizes.tolist()), 1):
            name[(b, k)] = cell
            if size >= min_voxels:
                final.setdefault(cell, set()).add(int(ids[k - 1]))
    rows = np.concatenate([np.load(f)["pairs"] for f in sorted(plan.pairs_dir.glob("*.npz"))])
    false_joins = sum(name[(int(a), int(la))] != name[(int(b), int(lb))] for a, la, b, lb in rows)
    splits = sum(len(v) > 1 for v in final.values())
    return false_joins, splits


@pytest.mark.parametrize("ndim,grow", [(2, 1), (2, 2), (3, 1)])
def test_match_keeps_touching_cells_distinct(tmp_path, ndim, grow):
    shape = (160, 160) if ndim == 2 else (40, 64, 64)
    truth = touching_cells(shape, 120 if ndim == 2 else 90, seed=ndim)
    path = save(tmp_path / "truth.zarr", truth)
    block = (40, 40) if ndim == 2 else (16, 24, 24)
    halo = (6, 6) if ndim == 2 else (4, 6, 6)
    fn = f"{__file__.rsplit('/', 1)[0]}/segmenters.py:border_dilating"

    seg = functools.partial(border_dilating, grow=grow)
    run_steps(path, tmp_path / "match.zarr", block_shape=block, halo=halo, backend="callable", rule="match",
              function=fn, kwargs={"grow": grow})
    run_steps(path, tmp_path / "exact.zarr", block_shape=block, halo=halo, backend="callable", rule="exact",
              function=fn, kwargs={"grow": grow})
    joins_match, splits_match = stitch_errors(tmp_path / "match.work", truth, seg)
    joins_exact, _ = stitch_errors(tmp_path / "exact.work", truth, seg)
    assert truth.max() > 50
    assert joins_match == 0, f"match joined {joins_match} distinct touching cells"
    assert splits_match == 0, f"match left {splits_match} cells split across seams"
    assert joins_exact > 0, "the perturbed segmenter should make touching-merge fail (control)"


def test_match_joins_a_cell_crossing_seams(tmp_path):
    truth = np.zeros((64, 64), np.uint32)
    yy, xx = np.mgrid[:64, :64]
    truth[(yy - 32) ** 2 + (xx - 32) ** 2 < 15 ** 2] = 1     # crosses 4 blocks
    truth[(yy - 32) ** 2 + (xx - 55) ** 2 < 9 ** 2] = 2      # touches cell 1
    truth[(truth == 2) & ((yy - 32) ** 2 + (xx - 32) ** 2 < 15 ** 2)] = 1
    path = save(tmp_path / "truth.zarr", truth)
    fn = f"{__file__.rsplit('/', 1)[0]}/segmenters.py:border_dilating"
    run_steps(path, tmp_path / "out.zarr", block_shape=(32, 32), halo=(6, 6), backend="callable", rule="match",
              function=fn)
    assert stitch_errors(tmp_path / "out.work", truth, border_dilating) == (0, 0)
    out = load(tmp_path / "out.zarr")
    assert out.max() == 2
    # the big cell is one id in all four blocks (its core, away from the dilated neighbour)
    assert len(np.unique(out[(yy - 32) ** 2 + (xx - 32) ** 2 < 10 ** 2])) == 1
