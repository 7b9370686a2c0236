"""The stitched result equals the whole-image result (threshold + connected
components, ``exact`` rule): partition-equivalent to scipy.ndimage.label."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from helpers import assert_partition_equivalent, assert_sequential, load, run_steps, save
from pystitch.example import blobs

THR = 500


def reference(image: np.ndarray, connectivity: int, sigma=None) -> np.ndarray:
    data = image
    if sigma:
        data = ndimage.gaussian_filter(image.astype(np.float32), sigma, truncate=4.0, mode="reflect")
    structure = ndimage.generate_binary_structure(image.ndim, connectivity)
    return ndimage.label(data > THR, structure=structure)[0]


CASES_3D = [
    # shape, block, halo, connectivity, seed
    ((40, 64, 64), (16, 32, 32), (1, 1, 1), 1, 0),
    ((40, 64, 64), (16, 32, 32), (2, 4, 4), 3, 1),
    ((37, 61, 50), (16, 24, 20), (1, 2, 3), 1, 2),     # blocks do not divide the image
    ((37, 61, 50), (10, 16, 16), (3, 5, 5), 3, 3),
    ((33, 47, 29), (8, 8, 8), (1, 1, 1), 2, 4),       # many small blocks
    ((24, 40, 40), (24, 13, 40), (0, 4, 0), 3, 5),    # one axis not split: halo 0 allowed there
]

CASES_2D = [
    ((200, 180), (64, 64), (1, 1), 1, 0),
    ((200, 180), (50, 70), (4, 2), 2, 1),
    ((157, 131), (32, 29), (3, 3), 1, 2),
    ((157, 131), (16, 16), (1, 1), 2, 3),
]


@pytest.mark.parametrize("shape,block,halo,conn,seed", CASES_3D + CASES_2D)
def test_blobs_match_whole_image_label(tmp_path, shape, block, halo, conn, seed):
    image = blobs(shape, seed=seed, sigma=2.0 if len(shape) == 3 else 4.0, fraction=0.2)
    path = save(tmp_path / "img.zarr", image)
    summary = run_steps(path, tmp_path / "out.zarr", block_shape=block, halo=halo, threshold=THR, connectivity=conn)
    out = load(tmp_path / "out.zarr")
    ref = reference(image, conn)
    assert ref.max() > 5, "test image should hold several objects"
    assert_partition_equivalent(out, ref)
    assert_sequential(out)
    assert summary["objects"] == ref.max()


@pytest.mark.parametrize("sigma,halo", [(1.0, (2, 2, 2)), ((0.5, 1.5, 2.0), (1, 3, 3))])
def test_smoothing_is_exact_with_context(tmp_path, sigma, halo):
    image = blobs((30, 50, 50), seed=7, sigma=2.5, fraction=0.3)
    path = save(tmp_path / "img.zarr", image)
    run_steps(path, tmp_path / "out.zarr", block_shape=(12, 16, 16), halo=halo, threshold=THR, sigma=sigma,
              connectivity=1)
    assert_partition_equivalent(load(tmp_path / "out.zarr"), reference(image, 1, sigma))


def _draw(shape, voxels) -> np.ndarray:
    img = np.full(shape, 100, np.uint16)
    for sl in voxels:
        img[sl] = 1000
    return img


SPECIAL_2D = {
    # a rod 3 blocks long
    "long_rod": [np.s_[5:8, 2:60]],
    # U-shape: two arms inside block (0, 0) meeting only in block (2, 0)
    "u_shape": [np.s_[2:40, 3:5], np.s_[2:40, 10:12], np.s_[38:40, 3:12]],
    # spiral-like snake crossing seams back and forth
    "snake": [np.s_[1:3, 1:50], np.s_[1:30, 48:50], np.s_[28:30, 5:50], np.s_[28:45, 5:7]],
    # blob centred on a block corner (4 blocks)
    "corner_blob": [np.s_[14:18, 14:18]],
    # two pixels touching only diagonally across a block corner
    "diagonal_corner": [np.s_[15:16, 15:16], np.s_[16:17, 16:17]],
    # a pixel line on the seam itself
    "seam_line": [np.s_[15:17, 0:48]],
}


@pytest.mark.parametrize("name", sorted(SPECIAL_2D))
@pytest.mark.parametrize("conn", [1, 2])
@pytest.mark.parametrize("halo", [1, 2])
def test_special_shapes(tmp_path, name, conn, halo):
    image = _draw((48, 64), SPECIAL_2D[name])
    path = save(tmp_path / "img.zarr", image)
    run_steps(path, tmp_path / "out.zarr", block_shape=(16, 16), halo=halo, threshold=THR, connectivity=conn)
    assert_partition_equivalent(load(tmp_path / "out.zarr"), reference(image, conn))


def test_3d_diagonal_through_block_corner(tmp_path):
    # voxels touching only at a corner shared by 8 blocks: needs the diagonal neighbours
    image = _draw((16, 16, 16), [np.s_[7, 7, 7], np.s_[8, 8, 8], np.s_[6, 6, 6], np.s_[9, 9, 9]])
    path = save(tmp_path / "img.zarr", image)
    run_steps(path, tmp_path / "out.zarr", block_shape=(8, 8, 8), halo=(1, 1, 1), threshold=THR, connectivity=3)
    out = load(tmp_path / "out.zarr")
    assert_partition_equivalent(out, reference(image, 3))
    assert out.max() == 1


def test_3d_helix_longer_than_blocks(tmp_path):
    shape = (40, 40, 40)
    image = np.full(shape, 100, np.uint16)
    t = np.linspace(0, 6 * np.pi, 4000)
    z = (2 + t / (6 * np.pi) * 35).astype(int)
    y = (20 + 14 * np.sin(t)).astype(int)
    x = (20 + 14 * np.cos(t)).astype(int)
    image[z, y, x] = 1000
    path = save(tmp_path / "img.zarr", image)
    run_steps(path, tmp_path / "out.zarr", block_shape=(8, 8, 8), halo=(1, 1, 1), threshold=THR, connectivity=3)
    out = load(tmp_path / "out.zarr")
    ref = reference(image, 3)
    assert ref.max() == 1
    assert_partition_equivalent(out, ref)


def test_empty_blocks_are_skipped_and_result_exact(tmp_path):
    image = np.full((64, 64), 100, np.uint16)
    image[2:10, 2:30] = 1000        # only the top-left blocks hold objects
    image[12:14, 28:40] = 1000
    path = save(tmp_path / "img.zarr", image)
    summary = run_steps(path, tmp_path / "out.zarr", block_shape=(16, 16), halo=(2, 2), threshold=THR)
    assert summary["planned_empty_blocks"] == 16 - 3
    out = load(tmp_path / "out.zarr")
    assert_partition_equivalent(out, reference(image, 1))
    # empty blocks are never written: their output chunks do not exist
    chunks = [p for p in (tmp_path / "out.zarr" / "0").rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert len(chunks) == 3
