"""Inputs: zarr v2/v3 arrays and groups, OME-Zarr (0.4 and 0.5, levels,
axes, channels, voxel sizes), TIFF and OME-TIFF read lazily."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage

import pystitch
from helpers import assert_partition_equivalent, load
from pystitch.errors import InputError
from pystitch.example import blobs, write_example
from pystitch.storage.images import ImageSpec, open_image


@pytest.fixture(scope="module")
def volume():
    return blobs((20, 40, 36), seed=5, sigma=2.0, fraction=0.2)


def _ome_zarr(path, data, axes, scale, zarr_format=2, levels=2):
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    datasets = []
    for lvl in range(levels):
        f = [1 if a in "tc" or (a == "z" and lvl) else 2 ** lvl for a in axes]
        arr = data[tuple(slice(None, None, s) for s in f)]
        root.create_array(name=str(lvl), shape=arr.shape, dtype=arr.dtype, chunks=arr.shape)[:] = arr
        datasets.append({"path": str(lvl), "coordinateTransformations": [
            {"type": "scale", "scale": [s * fi for s, fi in zip(scale, f)]}]})
    ms = [{"version": "0.4" if zarr_format == 2 else "0.5",
           "axes": [{"name": a, "type": {"t": "time", "c": "channel"}.get(a, "space"),
                     **({"unit": "micrometer"} if a in "zyx" else {})} for a in axes],
           "datasets": datasets}]
    if zarr_format == 2:
        root.attrs["multiscales"] = ms
    else:
        root.attrs["ome"] = {"version": "0.5", "multiscales": ms}
    return str(path)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_plain_arrays_and_groups(tmp_path, volume, zarr_format):
    zarr.save_array(str(tmp_path / "a.zarr"), volume, zarr_format=zarr_format)
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=zarr_format)
    g.create_group("sub").create_array("raw", shape=volume.shape, dtype=volume.dtype, chunks=(8, 16, 16))[:] = volume
    for spec in (ImageSpec(str(tmp_path / "a.zarr")), ImageSpec(str(tmp_path / "g.zarr"), array_path="sub/raw")):
        src = open_image(spec)
        assert src.shape == volume.shape and src.axes == "zyx" and src.voxel_size is None
        np.testing.assert_array_equal(src.read((slice(2, 5), slice(0, 40), slice(30, 36))), volume[2:5, :, 30:36])


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_levels_axes_channels(tmp_path, volume, zarr_format):
    data = np.stack([volume, volume[::-1]])[None]          # t c z y x
    path = _ome_zarr(tmp_path / "img.ome.zarr", data, "tczyx", [1, 1, 2.0, 0.5, 0.5], zarr_format)
    src = open_image(ImageSpec(path, channel=1))
    assert src.shape == volume.shape and src.axes == "zyx"
    assert src.voxel_size == (2.0, 0.5, 0.5) and src.unit == "micrometer"
    np.testing.assert_array_equal(src.read((slice(0, 20), slice(0, 40), slice(0, 36))), volume[::-1])
    lvl = open_image(ImageSpec(path, channel=0, level=1))
    assert lvl.shape == (20, 20, 18) and lvl.voxel_size == (2.0, 1.0, 1.0)
    assert src.levels == [(20, 40, 36), (20, 20, 18)]
    two = open_image(ImageSpec(path, channel=(1, 0)))
    assert two.read((slice(0, 2), slice(0, 4), slice(0, 4))).shape == (2, 2, 4, 4)
    with pytest.raises(InputError, match="has 2 channels"):
        open_image(ImageSpec(path))
    with pytest.raises(InputError, match="Expected a multiscale level between 0 and 1"):
        open_image(ImageSpec(path, channel=0, level=2))


def test_run_on_ome_zarr_channel_and_level(tmp_path, volume):
    data = np.stack([volume // 4, volume])
    path = _ome_zarr(tmp_path / "img.ome.zarr", data, "czyx", [1, 2.0, 0.5, 0.5])
    s = pystitch.run(path, tmp_path / "out.zarr", block_shape=(8, 16, 16), halo=(1, 2, 2), threshold=500,
                     channel=1, progress=False)
    assert s["voxel_size"] == [2.0, 0.5, 0.5]
    assert_partition_equivalent(load(tmp_path / "out.zarr"), ndimage.label(volume > 500)[0])
    s1 = pystitch.run(path, tmp_path / "lvl1.zarr", block_shape=(8, 8, 8), halo=(1, 1, 1), threshold=500,
                      channel=1, level=1, progress=False)
    lvl1 = volume[:, ::2, ::2]
    assert s1["shape"] == list(lvl1.shape) and s1["voxel_size"] == [2.0, 1.0, 1.0]
    assert_partition_equivalent(load(tmp_path / "lvl1.zarr"), ndimage.label(lvl1 > 500)[0])


def test_tiff_and_ome_tiff_are_read_lazily(tmp_path, volume):
    tifffile.imwrite(tmp_path / "plain.tif", volume, tile=(16, 16))
    tifffile.imwrite(tmp_path / "img.ome.tif", np.stack([volume // 4, volume]), ome=True, tile=(16, 16),
                     metadata={"axes": "CZYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25, "PhysicalSizeZ": 1.5})
    tifffile.imwrite(tmp_path / "ij.tif", volume, imagej=True, resolution=(4.0, 4.0),
                     metadata={"spacing": 3.0, "unit": "um", "axes": "ZYX"})
    plain = open_image(ImageSpec(str(tmp_path / "plain.tif")))
    assert isinstance(plain.array, zarr.Array)              # a view on the file, not a loaded copy
    assert plain.shape == volume.shape and plain.axes == "zyx"
    np.testing.assert_array_equal(plain.read((slice(3, 4), slice(10, 30), slice(5, 9))), volume[3:4, 10:30, 5:9])
    ome = open_image(ImageSpec(str(tmp_path / "img.ome.tif"), channel=1))
    assert ome.voxel_size == (1.5, 0.25, 0.25)
    np.testing.assert_array_equal(ome.read((slice(0, 20), slice(0, 40), slice(0, 36))), volume)
    ij = open_image(ImageSpec(str(tmp_path / "ij.tif")))
    assert ij.voxel_size == (3.0, 0.25, 0.25) and ij.unit == "um"
    for src in (plain, ome, ij):
        src.close()
    pystitch.run(str(tmp_path / "img.ome.tif"), tmp_path / "out.zarr", block_shape=(8, 16, 16), halo=(1, 2, 2),
                 threshold=500, channel=1, progress=False)
    assert_partition_equivalent(load(tmp_path / "out.zarr"), ndimage.label(volume > 500)[0])


def test_2d_with_channel_axis_and_no_metadata(tmp_path):
    img = blobs((80, 90), seed=2, sigma=3.0, fraction=0.3)
    arr = np.stack([np.zeros_like(img), img], axis=-1)       # y x c
    zarr.save_array(str(tmp_path / "yxc.zarr"), arr)
    pystitch.run(str(tmp_path / "yxc.zarr"), tmp_path / "out.zarr", block_shape=32, halo=2, threshold=500,
                 channel_axis=-1, channel=1, progress=False)
    assert_partition_equivalent(load(tmp_path / "out.zarr"), ndimage.label(img > 500)[0])


def test_builtin_example_is_an_ome_zarr(tmp_path):
    path = write_example(tmp_path / "example.zarr", shape=(16, 40, 40))
    src = open_image(ImageSpec(str(path)))
    assert src.shape == (16, 40, 40) and src.voxel_size == (2.0, 0.5, 0.5)
    data = src.read((slice(0, 16), slice(0, 40), slice(0, 40)))
    assert (data > 500).mean() > 0.05


@pytest.mark.parametrize("capacity_mb", [0, 0.05, 64])
def test_chunk_cache_reads_what_zarr_reads(tmp_path, volume, capacity_mb, monkeypatch):
    """Regions read through the decoded-chunk cache equal direct reads, with a
    cache that is off, too small for one request, or large; also with a
    channel axis and a time axis indexed by integers."""
    monkeypatch.setenv("PYSTITCH_READ_CACHE_MB", str(capacity_mb))
    data = np.stack([volume, volume + 1])[None]                      # t c z y x
    path = _ome_zarr(tmp_path / "img.zarr", data, "tczyx", [1, 1, 1, 1, 1], levels=1)
    root = zarr.open_group(path, mode="r+")
    root.create_array("0", shape=data.shape, dtype=data.dtype, chunks=(1, 1, 8, 16, 16), overwrite=True)[:] = data
    src = open_image(ImageSpec(path, channel=1))
    assert src.array.chunks == (1, 1, 8, 16, 16)
    rng = np.random.default_rng(0)
    for _ in range(30):
        lo = [int(rng.integers(0, n - 1)) for n in volume.shape]
        region = tuple(slice(a, int(rng.integers(a + 1, n + 1))) for a, n in zip(lo, volume.shape))
        np.testing.assert_array_equal(src.read(region), volume[region] + 1)


def test_chunk_cache_keeps_large_chunks_in_their_own_pages_and_decodes_local_ones_two_at_a_time(tmp_path,
                                                                                                 monkeypatch):
    """A kept chunk of 1 MiB or more lives in an anonymous memory map of its
    own (unmapped when dropped, never pinning heap memory); the chunks a
    local block needs are decoded two at a time, and what is read is still
    what zarr reads."""
    import mmap

    from pystitch.storage import images, zarrs

    monkeypatch.delenv("PYSTITCH_READ_CACHE_MB", raising=False)
    rng = np.random.default_rng(3)
    data = rng.integers(0, 1000, (32, 256, 256), dtype=np.uint16)    # 8 chunks: 2 small, 6 of 1 MiB
    path = str(tmp_path / "img.zarr")
    zarr.create_array(store=path, shape=data.shape, dtype=data.dtype, chunks=(8, 256, 256))[...] = data
    arr = zarr.open_array(path, mode="r")
    batches = []
    real = zarrs.read_concurrently
    monkeypatch.setattr(zarrs, "read_concurrently", lambda reads: batches.append(len(reads)) or real(reads))
    src = open_image(ImageSpec(path))
    assert src.cache.at_once == images.LOCAL_DECODES_AT_ONCE == 2
    np.testing.assert_array_equal(src.read((slice(0, 30), slice(0, 256), slice(0, 256))), data[:30])
    assert batches and max(batches) == 2 and sum(batches) == 4
    for chunk in src.cache.chunks.values():
        assert chunk.nbytes == 2 ** 20
        base = chunk
        while isinstance(base, (np.ndarray, memoryview)):
            base = base.base if isinstance(base, np.ndarray) else base.obj
        assert isinstance(base, mmap.mmap)
    small = images.ChunkCache(2 ** 30, at_once=None)              # a URL's chunks: all at once
    batches.clear()
    np.testing.assert_array_equal(small.read(arr, (slice(0, 32), slice(5, 9), slice(0, 256))), data[:, 5:9])
    assert batches == [4]


@pytest.mark.parametrize("new_chunks", [(8, 16, 16), (16, 32, 32)])
def test_rewritten_image_is_not_read_from_stale_chunks(tmp_path, volume, new_chunks):
    """Two runs in one process on the same path, the image rewritten in between
    (same chunks, or other chunks): the second run segments the new image."""
    path = str(tmp_path / "img.zarr")
    zarr.create_array(store=path, shape=volume.shape, chunks=(8, 16, 16), dtype=volume.dtype)[:] = volume
    pystitch.run(path, tmp_path / "a.zarr", block_shape=(8, 16, 16), halo=1, threshold=500, progress=False)
    flipped = np.ascontiguousarray(volume[:, ::-1])
    zarr.create_array(store=path, shape=volume.shape, chunks=new_chunks, dtype=volume.dtype,
                      overwrite=True)[:] = flipped
    pystitch.run(path, tmp_path / "b.zarr", block_shape=(8, 16, 16), halo=1, threshold=500, progress=False)
    assert_partition_equivalent(load(tmp_path / "b.zarr"), ndimage.label(flipped > 500)[0])


def test_a_task_sizes_the_chunk_cache_to_the_chunks_its_blocks_read(tmp_path, monkeypatch):
    """Without PYSTITCH_READ_CACHE_MB a segment task's cache holds at most the
    chunks its blocks (core + halo) touch, never the whole image, and still
    decodes every chunk at most once per task; rows of blocks in turn (what a
    runner worker sweeps) reuse the chunks the rows share.  The variable still
    fixes the size when set."""
    from pystitch.steps.segment_block import BlockSegmenter

    monkeypatch.delenv("PYSTITCH_READ_CACHE_MB", raising=False)
    image = blobs((32, 64, 64), seed=5)
    chunks = (8, 16, 16)
    path = str(tmp_path / "img.zarr")
    zarr.create_array(store=path, shape=image.shape, dtype=image.dtype, chunks=chunks)[...] = image
    plan = pystitch.plan_blocks(path, tmp_path / "out.zarr", block_shape=chunks, halo=(1, 2, 2),
                                backend_options={"threshold": 500})
    chunk_bytes = int(np.prod(chunks)) * image.itemsize
    row = plan.grid.counts[-1]
    with BlockSegmenter(plan) as seg:
        cache = seg.source.cache
        for start in range(0, plan.n_blocks, row):
            ids = list(range(start, start + row))
            touched = seg.source.chunks_touched([plan.grid.extended(b) for b in ids])
            held = set(cache.chunks)
            cache.peak, decoded = 0, cache.decoded
            pystitch.segment_blocks(plan, ids, segmenter=seg)
            assert cache.capacity == len(touched) * chunk_bytes < image.nbytes
            assert cache.peak <= cache.capacity
            assert cache.decoded - decoded == len(touched - held)  # each missing chunk once, no more
        # 4 x 4 x 4 chunks, each read by up to 3 x 3 rows of blocks; with the cache at most 3 times
        assert cache.decoded <= 3 * image.nbytes // chunk_bytes
    monkeypatch.setenv("PYSTITCH_READ_CACHE_MB", "0.01")
    with BlockSegmenter(plan) as seg:
        assert seg.size_cache(range(row)) == int(0.01 * 2 ** 20)
    np.testing.assert_array_equal(zarr.open_array(f"{plan.staging_uri}/core", mode="r")[:] > 0, image > 500)
