"""What the flows rule's predict step costs per block, from the tile layout alone.

``pystitch.flows.predict`` runs Cellpose's network on the *whole image's*
tiles, each forward batch computed once by the block that owns it
(:meth:`Geometry.owned`).  This script counts, without running a network,
for a 3-D (``do_3D``) or 2-D image and a block grid:

* ``network_per_image``: tile voxels the network computes / image voxels
  (all orientations: whole-image ``eval`` computes exactly as much);
* ``network_blocks_per_eval``: the blocks' owned tiles / whole-image eval's
  (1.0 when every batch has exactly one owner);
* ``input_read_per_block``: image voxels a block reads to build its batches /
  its core voxels (largest and mean over blocks);
* ``tiles_read_per_block``: tile output voxels a block blends / core voxels;
* ``halo_network_per_image``: the alternative that is *not* exact: ``eval``
  on each block grown by a halo (one diameter), tile voxels / image voxels;
* ``tasks``: the pipeline runs predict in batches of ``blocks_per_task``
  blocks (C order), each running every forward batch its blocks read: the
  network work of all tasks together / whole-image ``eval``'s, per batch size
  (a forward batch read by blocks of two tasks runs in both);
* ``held``: what predict holds while it streams the blocks in C order
  (:func:`pystitch.flows.predict.tile_schedule`: a tile output is dropped
  after the last block that reads it): the most tile outputs held at once,
  as a fraction of all tiles and in bytes per image voxel (float32 outputs).

Usage::

    python benchmarks/flows_predict_cost.py [--shape 512,1024,1024] [--block 256] [--major 3] [--out f.json]
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from pystitch.flows.blockwise import block_grid
from pystitch.flows.predict import Geometry, ModelFacts, tile_schedule


def facts(major: int, rescale: float) -> ModelFacts:
    return ModelFacts(major=major, bsize=224 if major == 3 else 256, nchan=2 if major == 3 else 3, nout=3,
                      rescale=rescale, anisotropy=None, batch_size=8)


def measure(shape: tuple[int, ...], block: tuple[int, ...], major: int, rescale: float, halo: int) -> dict:
    f = facts(major, rescale)
    g = Geometry(shape, f)
    image = math.prod(shape)
    whole = g.tile_pixels()
    owned_tiles = 0
    reads, blends = [], []
    for lo, hi in block_grid(shape, block):
        core = math.prod(b - a for a, b in zip(lo, hi))
        read = 0
        for batch in g.owned(lo, hi):
            o = g.orientations[batch.orientation]
            owned_tiles += len(batch.members) * o.tile[0] * o.tile[1]
            src = g.source_box_for(g.batch_box(batch))
            read += math.prod(b - a for a, b in zip(*src))
        reads.append(read / core)
        net = g.net_box_for((lo, hi))
        blended = 0
        for o in g.orientations:
            planes = 1 if o.axis is None else net[1][o.axis] - net[0][o.axis]
            u = (net[0][o.plane_axes[0]], net[1][o.plane_axes[0]])
            v = (net[0][o.plane_axes[1]], net[1][o.plane_axes[1]])
            blended += planes * len(g.tiles_over(o.index, u, v)) * o.tile[0] * o.tile[1]
        blends.append(blended / core)
    halo_tiles = 0
    for lo, hi in block_grid(shape, block):
        grown = tuple(min(s, b + halo) - max(0, a - halo) for a, b, s in zip(lo, hi, shape))
        halo_tiles += Geometry(grown, f).tile_pixels()
    return {
        "shape": list(shape), "block": list(block), "cellpose_major": major, "rescale": rescale,
        "held": held(g, block_grid(shape, block)),
        "tasks": {str(k): round(in_tasks(g, block_grid(shape, block), k) / whole, 3) for k in (1, 2, 4, 8, 16, 64)},
        "tile": f.bsize, "batch_size": f.batch_size,
        "network_per_image": round(whole / image, 3),
        "network_blocks_per_eval": round(owned_tiles / whole, 6),
        "input_read_per_block": {"max": round(max(reads), 3), "mean": round(float(np.mean(reads)), 3)},
        "tiles_read_per_block": {"max": round(max(blends), 3), "mean": round(float(np.mean(blends)), 3)},
        "halo": halo, "halo_network_per_image": round(halo_tiles / image, 3),
    }


def in_tasks(g: Geometry, cores: list, blocks_per_task: int) -> int:
    """Tile pixels the network computes when ``cores`` are predicted in tasks of ``blocks_per_task``."""
    total = 0
    for first in range(0, len(cores), blocks_per_task):
        for _, run, _ in tile_schedule(g, cores[first:first + blocks_per_task]):
            for batch, _ in run:
                o = g.orientations[batch.orientation]
                total += len(batch.members) * o.tile[0] * o.tile[1]
    return total


def held(g: Geometry, cores: list) -> dict:
    """The most tile outputs (and bytes) predict holds at once, streaming ``cores`` in order."""
    size = {o.index: g.facts.nout * o.tile[0] * o.tile[1] * 4 for o in g.orientations}
    tiles = nbytes = peak_tiles = peak_bytes = 0
    for _, run, drop in tile_schedule(g, cores):
        for _, keep in run:
            tiles += len(keep)
            nbytes += sum(size[k[0]] for k in keep)
        peak_tiles, peak_bytes = max(peak_tiles, tiles), max(peak_bytes, nbytes)
        tiles -= len(drop)
        nbytes -= sum(size[k[0]] for k in drop)
    total = sum(o.n_planes * o.ntiles for o in g.orientations)
    image = math.prod(g.shape)
    return {"peak_tiles": peak_tiles, "tiles": total, "peak_fraction": round(peak_tiles / total, 3),
            "peak_bytes_per_image_voxel": round(peak_bytes / image, 2),
            "all_tiles_bytes_per_image_voxel": round(sum(o.n_planes * o.ntiles * size[o.index]
                                                         for o in g.orientations) / image, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="512,1024,1024")
    ap.add_argument("--block", default="256")
    ap.add_argument("--major", type=int, default=3)
    ap.add_argument("--rescale", type=float, default=1.0)
    ap.add_argument("--halo", type=int, default=30)
    ap.add_argument("--out")
    a = ap.parse_args()
    shape = tuple(int(s) for s in a.shape.split(","))
    block = tuple(int(s) for s in a.block.split(","))
    block = block * len(shape) if len(block) == 1 else block
    result = measure(shape, block, a.major, a.rescale, a.halo)
    text = json.dumps(result, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
