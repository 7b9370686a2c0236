"""Oracles and small utilities shared by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr


def assert_partition_equivalent(result: np.ndarray, reference: np.ndarray) -> None:
    """Same foreground, and a one-to-one mapping between the two label sets."""
    assert result.shape == reference.shape
    fg = reference > 0
    np.testing.assert_array_equal(result > 0, fg, err_msg="foreground differs")
    pairs = np.unique(np.stack([reference[fg].astype(np.uint64), result[fg].astype(np.uint64)]), axis=1)
    n_ref = len(np.unique(reference[fg]))
    n_res = len(np.unique(result[fg]))
    assert n_ref == n_res, f"{n_res} objects, expected {n_ref}"
    assert pairs.shape[1] == n_ref, f"{pairs.shape[1] - n_ref} objects split or merged"


def assert_sequential(labels: np.ndarray) -> None:
    ids = np.unique(labels)
    ids = ids[ids > 0]
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))


def save(path: Path, data: np.ndarray, chunks=None, zarr_format: int = 3) -> str:
    if chunks is None:
        zarr.save_array(str(path), data, zarr_format=zarr_format)
    else:
        zarr.create_array(store=str(path), shape=data.shape, dtype=data.dtype, chunks=chunks,
                          zarr_format=zarr_format, overwrite=True)[...] = data
    return str(path)


def load(path, level: int = 0) -> np.ndarray:
    """A label image: a plain zarr array, or one level of an OME-Zarr image."""
    node = zarr.open(store=str(path), mode="r")
    return (node if isinstance(node, zarr.Array) else node[str(level)])[:]


def run_steps(image: str, output: Path, *, block_shape, halo, order_seed: int | None = None,
              batch: int = 1, backend: str = "threshold", rule: str | None = None, **options) -> dict:
    """Run the five steps one call at a time, blocks in a (shuffled) order."""
    import pystitch

    plan = pystitch.plan_blocks(image, output, block_shape=block_shape, halo=halo, backend=backend, rule=rule,
                                work_dir=output.with_suffix(".work"), backend_options=options)
    ids = plan.work_blocks()
    if order_seed is not None:
        np.random.default_rng(order_seed).shuffle(ids)
    for b in ids:
        pystitch.segment_blocks(plan, [b])
    for i in range(0, len(ids), batch):
        pystitch.face_pairs(plan, ids[i:i + batch])
    pystitch.resolve(plan)
    for i in range(0, len(ids), batch):
        pystitch.apply_lut(plan, ids[i:i + batch])
    return pystitch.finalize(plan)
