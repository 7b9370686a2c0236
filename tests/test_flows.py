"""The flows rule's core against Cellpose's own mask computation.

The oracle is the installed cellpose's ``dynamics.resize_and_compute_masks``
(what ``CellposeModel.eval`` runs after the network) on the whole arrays: the
blockwise labels must be the same partition -- and, with ``min_size > 0``,
the same label values -- for 2-D and 3-D, block shapes that do not divide the
image, halos too small for the trajectories, and blocks processed in shuffled
order.  Flows come from fixed arrays: cellpose's own ``masks_to_flows`` of
synthetic labels (with noise, holes and scrambled objects that the flow check
removes), and the small test model's predictions.  Run in both environments
(cellpose 3.1 and 4.x).
"""

from __future__ import annotations


import numpy as np
import pytest
from scipy import ndimage

cellpose = pytest.importorskip("cellpose", reason="cellpose is not installed")
torch = pytest.importorskip("torch")
fastremap = pytest.importorskip("fastremap")

from cellpose import dynamics as cpdyn  # noqa: E402

from pystitch.flows.assign import ObjectStats, merge_object_stats, object_stats  # noqa: E402
from pystitch.flows.blockwise import EndPointFiles, block_grid, follow_blocks, masks_blockwise  # noqa: E402
from pystitch.flows.dynamics import check_kernels, installed_dynamics, niter_for  # noqa: E402
from pystitch.flows.filters import (  # noqa: E402
    cp4_diffusion, cp4_diffusion_dtype, small_to_remove, torch_sum9_block,
)
from pystitch.flows.follow import follow_block, follow_points, step_field  # noqa: E402
from pystitch.flows.seeds import Histogram, find_seeds, merge_histograms, rank_seeds  # noqa: E402
from flow_arrays import CPU, cellpose_masks, masks_to_flows, same_partition, synthetic  # noqa: E402

DYN = installed_dynamics()

pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks")


# ---------------------------------------------------------------- data and oracle


def blockwise(dP, cellprob, block, halo, seed=0, offset=None, **kw):
    shape = cellprob.shape
    order = np.random.default_rng(seed).permutation(len(block_grid(shape, block, offset)))
    out, report, _ = masks_blockwise(dP, cellprob, block, DYN, halo=halo, order=order, offset=offset,
                                     do_3D=len(shape) == 3, **kw)
    return out, report


SETTINGS = dict(niter=200, cellprob_threshold=0.0, flow_threshold=0.4, min_size=15, max_size_fraction=0.4)


# ---------------------------------------------------------------- kernels and end points


def test_kernels_reproduce_the_installed_dynamics() -> None:
    check_kernels(DYN)


@pytest.mark.parametrize("shape", [(70, 90), (18, 30, 34)])
def test_end_points_equal_cellpose_in_any_window(shape) -> None:
    """follow_points in windows (with the whole image's shape) gives cellpose's end points."""
    ndim = len(shape)
    dP, cellprob = synthetic(shape, 12 if ndim == 2 else 8, 7 if ndim == 2 else 5, seed=1)
    foreground = cellprob > 0
    inds = np.nonzero(foreground)
    ref = cpdyn.follow_flows(dP * foreground / 5.0, inds=inds, niter=200, device=CPU)
    ref = (ref.int() if torch.is_tensor(ref) else torch.from_numpy(ref).int()).numpy()
    starts = np.stack(inds).astype(np.int64)

    def read(lo, hi):
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        return dP[(slice(None),) + box], cellprob[box]

    ends = np.zeros_like(starts)
    n_escaped = 0
    for lo, hi in block_grid(shape, tuple(max(5, s // 3) for s in shape)):
        done = follow_block(read, lo, hi, shape, 200, 0.0, DYN, halo=(2,) * ndim)
        inside = np.all((starts >= np.asarray(lo)[:, None]) & (starts < np.asarray(hi)[:, None]), axis=0)
        ends[:, inside] = np.stack(np.unravel_index(done.ends, shape))
        n_escaped += done.n_escaped
    assert np.array_equal(ends, ref)
    assert n_escaped > 0  # a 2-voxel halo is too small: the escape path ran and was exact


def test_a_trajectory_that_leaves_its_window_is_flagged() -> None:
    """A uniform flow carries every point far: a small window flags all of them,
    the whole image flags none, and nothing escaped is reported as an end point."""
    shape = (40, 60)
    dP = np.zeros((2, *shape), np.float32)
    dP[1] = 5.0  # one pixel per step along x
    foreground = np.ones(shape, bool)
    starts = np.array([[20, 20], [10, 12]], np.int64)
    window = (slice(15, 25), slice(5, 25))
    steps = step_field(np.ascontiguousarray(dP[(slice(None),) + window]), foreground[window], DYN, shape, (15, 5))
    _, escaped, _ = follow_points(steps, (15, 5), shape, starts, 30, DYN)
    assert escaped.all()
    steps = step_field(dP, foreground, DYN, shape, (0, 0))
    ends, escaped, reach = follow_points(steps, (0, 0), shape, starts, 30, DYN)
    assert not escaped.any()
    assert reach[1].max() >= 30 and np.all(ends[1] >= 39)


# ---------------------------------------------------------------- the whole computation


@pytest.mark.parametrize("shape,block,offset", [
    ((96, 130), (32, 32), None),
    ((96, 130), (41, 57), (13, 40)),
    ((96, 130), (96, 130), None),
    ((24, 40, 44), (12, 16, 20), None),
    ((24, 40, 44), (11, 40, 17), (5, 0, 9)),
])
def test_blockwise_masks_equal_cellpose(shape, block, offset) -> None:
    ndim = len(shape)
    dP, cellprob = synthetic(shape, 30 if ndim == 2 else 16, 7 if ndim == 2 else 5, seed=3)
    ref = cellpose_masks(dP, cellprob, do_3D=ndim == 3, **SETTINGS)
    out, report = blockwise(dP, cellprob, block, halo=(6,) * ndim, seed=len(block), offset=offset, **SETTINGS)
    assert ref.max() >= 8
    assert same_partition(out, ref)
    assert np.array_equal(out, ref)  # min_size > 0: cellpose's last step numbers by first voxel, as here
    if ndim == 2:
        assert report.removed["flow_threshold"] > 0  # the flow check ran and dropped the scrambled objects


@pytest.mark.parametrize("settings", [
    dict(niter=120, cellprob_threshold=-1.0, flow_threshold=0.8, min_size=40, max_size_fraction=0.02),
    dict(niter=300, cellprob_threshold=0.5, flow_threshold=0.2, min_size=-1, max_size_fraction=0.4),
    dict(niter=50, cellprob_threshold=0.0, flow_threshold=0.0, min_size=5, max_size_fraction=0.05),
])
def test_blockwise_masks_equal_cellpose_for_other_settings(settings) -> None:
    """Big masks dropped, no flow check, no small-mask filter, short and long dynamics."""
    dP, cellprob = synthetic((80, 100), 25, 8, seed=4)
    ref = cellpose_masks(dP, cellprob, do_3D=False, **settings)
    out, _ = blockwise(dP, cellprob, (27, 33), halo=(4, 4), seed=5, **settings)
    assert same_partition(out, ref)
    if settings["min_size"] > 0:
        assert np.array_equal(out, ref)


def test_filled_holes_take_over_the_objects_inside_them() -> None:
    """Blobs with holes in 3-D (no flow check there to drop them): holes are
    filled, one fill takes a voxel of another object, across small blocks."""
    dP, cellprob = synthetic((20, 36, 40), 16, 5, seed=2)
    out, report = blockwise(dP, cellprob, (7, 12, 14), halo=(6, 6, 6), **SETTINGS)
    ref = cellpose_masks(dP, cellprob, do_3D=True, **SETTINGS)
    assert ref.max() >= 10
    assert report.removed["filled_voxels"] > 0 and report.removed["voxels_taken_by_fills"] > 0
    assert np.array_equal(out, ref)


def test_seed_labels_and_end_points_kept_in_files_give_the_same_masks(tmp_path) -> None:
    """What follow-flows does: the seed labels and end points wait in files, not in memory.
    Another shape or type of array for them is refused with one line."""
    from pystitch.errors import InputError

    shape = (20, 36, 40)
    dP, cellprob = synthetic(shape, 16, 5, seed=9)
    ref = cellpose_masks(dP, cellprob, do_3D=True, **SETTINGS)
    staged = np.lib.format.open_memmap(tmp_path / "seed.npy", mode="w+", dtype=np.int64, shape=shape)
    out, report = blockwise(dP, cellprob, (10, 16, 20), halo=(6, 6, 6), staged=staged, ends=tmp_path,
                            **SETTINGS)
    assert ref.max() >= 5 and np.array_equal(out, ref)
    assert set(np.unique(staged)) - {0}  # the seed labels went to the file
    ends = sorted(tmp_path.glob("ends-*.npy"))  # and the end points, one file per block
    assert len(ends) == 2 * 3 * 2
    assert sum(np.load(f).size for f in ends) == report.n_foreground == int((cellprob > 0).sum())
    for wrong in (np.zeros(shape, np.int32), np.zeros((20, 36, 41), np.int64)):
        with pytest.raises(InputError, match="Expected an int64 array of shape") as info:
            blockwise(dP, cellprob, (10, 16, 20), halo=(6, 6, 6), staged=wrong, **SETTINGS)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("shape,block,halo,offset", [((20, 36, 40), (10, 16, 20), (6, 6, 6), None),
                                                     ((70, 90), (30, 25), (5, 5), (7, 11))])
def test_trajectories_followed_by_separate_tasks_give_cellpose_masks(tmp_path, shape, block, halo, offset) -> None:
    """follow-flows --blocks: the trajectories of some blocks, in other processes, earlier, in any
    order (a batch followed twice keeps what is there); the dynamics take their end points and
    follow the blocks no task did. Same masks as cellpose on the whole arrays."""
    ndim = len(shape)
    dP, cellprob = synthetic(shape, 16 if ndim == 3 else 12, 5, seed=13)
    ref = cellpose_masks(dP, cellprob, do_3D=ndim == 3, **SETTINGS)
    grid = block_grid(shape, block, offset)
    rng = np.random.default_rng(4)
    ids = rng.permutation(len(grid))
    some, other = ids[: len(ids) // 2], ids[len(ids) // 2: -2]  # the last two blocks: no task followed them
    files = EndPointFiles(tmp_path, stamp="plan-a")
    kw = dict(halo=halo, niter=SETTINGS["niter"], cellprob_threshold=SETTINGS["cellprob_threshold"])
    first = follow_blocks(dP, cellprob, some, grid, files, DYN, **kw)
    assert first["followed"] == len(some) and first["kept"] == 0
    second = follow_blocks(dP, cellprob, np.concatenate([other, some[:2]]), grid, EndPointFiles(tmp_path, "plan-a"),
                           DYN, **kw)
    assert (second["followed"], second["kept"]) == (len(other), 2)
    assert len(list(tmp_path.glob("follow-*.npz"))) == len(grid) - 2
    out, report = blockwise(dP, cellprob, block, halo=halo, offset=offset, ends=files, **SETTINGS)
    assert ref.max() >= 5 and np.array_equal(out, ref)
    assert report.n_foreground == int((cellprob > 0).sum())
    assert len(list(tmp_path.glob("follow-*.npz"))) == len(grid)  # the two it followed itself are there too


def test_end_points_of_another_plan_grid_or_flows_are_refused(tmp_path) -> None:
    """End points left by a follow are taken only for the plan, core and flows they were followed
    for: another stamp or grid is refused, another source (flows predicted again) followed again,
    truncated files are corrupt, never used."""
    from pystitch.errors import PlanMismatchError, StagingError

    shape, block, halo = (60, 80), (30, 40), (5, 5)
    dP, cellprob = synthetic(shape, 10, 5, seed=21)
    grid = block_grid(shape, block)
    kw = dict(halo=halo, niter=SETTINGS["niter"], cellprob_threshold=SETTINGS["cellprob_threshold"])
    follow_blocks(dP, cellprob, range(len(grid)), grid, EndPointFiles(tmp_path, "plan-a"), DYN, **kw)
    with pytest.raises(PlanMismatchError, match="of plan plan-b at .* Got those of plan plan-a") as info:
        blockwise(dP, cellprob, block, halo=halo, ends=EndPointFiles(tmp_path, "plan-b"), **SETTINGS)
    assert "\n" not in str(info.value)
    with pytest.raises(PlanMismatchError, match="with core .* Got those of core"):
        blockwise(dP, cellprob, (30, 20), halo=halo, ends=EndPointFiles(tmp_path, "plan-a"), **SETTINGS)
    # flows predicted again since (another source): stale, followed again and replaced, never used
    other = dP.copy()
    other[:, :, : shape[1] // 2] *= -1  # trajectories of the left half end elsewhere, same foreground
    out, _ = blockwise(other, cellprob, block, halo=halo, ends=EndPointFiles(tmp_path, "plan-a", "store-2"),
                       **SETTINGS)
    assert np.array_equal(out, cellpose_masks(other, cellprob, do_3D=False, **SETTINGS))
    again = follow_blocks(other, cellprob, range(len(grid)), grid, EndPointFiles(tmp_path, "plan-a", "store-2"),
                          DYN, **kw)
    assert (again["followed"], again["kept"]) == (0, len(grid))  # rewritten for the new source
    # flows other than those followed, same source: the end points no longer fit the foreground
    with pytest.raises(StagingError, match="end points of block .* one per foreground voxel"):
        blockwise(dP, cellprob + 0.5, block, halo=halo, ends=EndPointFiles(tmp_path, "plan-a", "store-2"), **SETTINGS)
    ends = tmp_path / "ends-1.npy"
    ends.write_bytes(ends.read_bytes()[:-16])
    with pytest.raises(StagingError, match="block 1 .*(unreadable|corrupt)"):
        blockwise(dP, cellprob, block, halo=halo, ends=EndPointFiles(tmp_path, "plan-a", "store-2"), **SETTINGS)


def test_no_background_and_no_foreground() -> None:
    dP, cellprob = synthetic((50, 60), 10, 9, seed=6)
    everywhere = np.abs(cellprob) + 0.1
    ref = cellpose_masks(dP, everywhere, do_3D=False, **SETTINGS)
    out, _ = blockwise(dP, everywhere, (17, 23), halo=(4, 4), **SETTINGS)
    assert same_partition(out, ref)
    nowhere = -np.abs(cellprob) - 0.1
    out, _ = blockwise(dP, nowhere, (17, 23), halo=(4, 4), **SETTINGS)
    assert not out.any() and not cellpose_masks(dP, nowhere, do_3D=False, **SETTINGS).any()


def test_ids_do_not_depend_on_the_grid_or_the_order() -> None:
    shape = (90, 110)
    dP, cellprob = synthetic(shape, 25, 7, seed=7)
    results = [blockwise(dP, cellprob, block, halo=(h, h), seed=s, offset=o, **SETTINGS)[0]
               for block, h, s, o in [((30, 30), 3, 0, None), ((30, 30), 3, 1, (11, 29)), ((47, 19), 8, 2, None),
                                      ((90, 110), 1, 3, None)]]
    for other in results[1:]:
        assert np.array_equal(results[0], other)
    ids = np.unique(results[0])
    assert np.array_equal(ids, np.arange(ids.size))  # 0 (background) then 1..n
    first = [np.argmax(results[0].ravel() == i) for i in ids[1:]]
    assert first == sorted(first)  # numbered by first voxel in C order


# ---------------------------------------------------------------- pieces against cellpose


def test_flow_errors_equal_cellpose_bit_for_bit() -> None:
    """Per-object flow errors from single-object crops equal cellpose's whole-image ones,
    touching objects included (cellpose 4 reads the neighbours' diffusion)."""
    shape = (60, 75)
    dP, cellprob = synthetic(shape, 14, 7, seed=8)
    labels = cellpose_masks(dP, cellprob, do_3D=False, **{**SETTINGS, "flow_threshold": 0.0, "min_size": -1})
    labels, _ = fastremap.renumber(labels.astype(np.int32))
    if DYN.major == 3:
        from cellpose import metrics

        ref, _ = metrics.flow_error(labels, dP, CPU)
    else:
        ref, _ = cpdyn.flow_error(labels, dP, CPU)
    stats = object_stats(labels, (0, 0), shape)
    got = _flow_errors(stats, labels, dP, shape)
    assert np.array_equal(got, np.asarray(ref))


def _flow_errors(stats: ObjectStats, labels, dP, shape):
    from pystitch.flows import filters

    alive = np.ones(stats.labels.size, bool)

    def read_labels(lo, hi):
        return labels[tuple(slice(a, b) for a, b in zip(lo, hi))]

    def read_flows(lo, hi):
        return dP[(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))]

    return filters._flow_errors(stats, alive, stats.labels.copy(), shape, DYN, read_labels, read_flows)


@pytest.mark.skipif(DYN.major != 4, reason="cellpose 4 only")
def test_cp4_diffusion_in_float32_above_4e7_pixels() -> None:
    """cellpose 4 diffuses in float32 on images of more than 4e7 pixels; so does cp4_diffusion."""
    assert cp4_diffusion_dtype((6400, 6400)) is np.float32 and cp4_diffusion_dtype((6000, 6000)) is np.float64
    rng = np.random.default_rng(0)
    mask = ndimage.binary_dilation(rng.random((13, 17)) < 0.3, iterations=2)
    mask = ndimage.label(mask)[0] == 1
    h, w = mask.shape
    big = (6402, 6402)  # padded shape: T is allocated at this size, so float32
    padded = np.zeros((h + 2, w + 2), np.int64)
    padded[1:-1, 1:-1] = mask
    y, x = np.nonzero(padded)
    offsets = [[0, -1, 1, 0, 0, -1, -1, 1, 1], [0, 0, 0, -1, 1, -1, 1, -1, 1]]
    neighbours = torch.stack([torch.stack([torch.from_numpy(y + offsets[0][i]) for i in range(9)]),
                              torch.stack([torch.from_numpy(x + offsets[1][i]) for i in range(9)])]).int()
    isneighbour = torch.from_numpy(np.stack([padded[y + offsets[0][i], x + offsets[1][i]] > 0 for i in range(9)]))
    from pystitch.flows.filters import _cp4_centre

    cy, cx = _cp4_centre(mask)
    niter = 2 * (h + w + 2)
    mu = cpdyn._extend_centers_gpu(neighbours, torch.tensor([[cy + 1, cx + 1]]), isneighbour, big, n_iter=niter,
                                   device=CPU)
    T = cp4_diffusion(mask, niter, np.float32, tail_from=y.size - y.size % torch_sum9_block("float32"))
    dy = T[y + 1, x] - T[y - 1, x]
    dx = T[y, x + 1] - T[y, x - 1]
    assert np.array_equal(np.stack((dy, dx)), mu)


def test_seeds_are_cellposes() -> None:
    """find_seeds + rank_seeds on a histogram reproduce cellpose's seeds and their order."""
    rng = np.random.default_rng(9)
    shape = (40, 50)
    h = np.zeros(shape, np.int64)
    for _ in range(30):
        c = rng.integers(0, shape)
        h[tuple(c)] += int(rng.integers(5, 40))
    h += (rng.random(shape) < 0.2) * rng.integers(0, 4, shape)
    h[10, 10] = h[10, 11] = 25  # a plateau: two seeds with equal counts side by side
    flat = np.nonzero(h.ravel())[0]
    hist = Histogram(flat.astype(np.int64), h.ravel()[flat])
    seeds = find_seeds(hist, shape)
    hmax = h.copy()
    for axis in range(2):
        hmax = ndimage.maximum_filter1d(hmax, 5, axis=axis, mode="constant")
    expected = np.nonzero(((h - hmax) > -1e-6) & (h > 10))
    assert np.array_equal(seeds.positions, np.ravel_multi_index(expected, shape))
    labels = rank_seeds(seeds)
    order = torch.from_numpy(h[expected].astype(np.int32)).argsort().numpy()
    assert np.array_equal(labels[order], np.arange(1, order.size + 1))
    pieces = [(flat[i::3], h.ravel()[flat[i::3]]) for i in range(3)]
    merged = merge_histograms(pieces)
    assert np.array_equal(merged.positions, hist.positions) and np.array_equal(merged.counts, hist.counts)


def test_small_mask_rule_of_each_version() -> None:
    """With gaps in the labels, cellpose 3 drops the masks at small *positions*
    among the present labels, not the small masks; cellpose 4 drops the small ones."""
    values = np.array([1, 3, 4])
    counts = np.array([30, 30, 4])
    assert small_to_remove(values, counts, True, 15, by_index=False).tolist() == [4]
    assert small_to_remove(values, counts, True, 15, by_index=True).tolist() == [3]
    labels = np.zeros((20, 20), np.int32)
    labels[0:5, 0:6], labels[6:11, 0:6], labels[12:14, 0:2] = 1, 3, 4
    from cellpose import utils

    got = utils.fill_holes_and_remove_small_masks(labels.copy(), min_size=15)
    assert (got[0:5, 0:6] > 0).all() and not got[12:14, 0:2].any()
    big_one_kept = bool((got[6:11, 0:6] > 0).all())
    assert big_one_kept == (not DYN.small_masks_by_index)  # cellpose 3 loses the 30-pixel mask 3


def test_block_grid_covers_the_image_once() -> None:
    for shape, block, offset in [((10, 7), (3, 4), None), ((10, 7), (3, 4), (2, 1)), ((5, 6, 7), (5, 2, 3), (4, 1, 0))]:
        seen = np.zeros(shape, int)
        for lo, hi in block_grid(shape, block, offset):
            assert all(0 < b - a <= c for a, b, c in zip(lo, hi, block))
            seen[tuple(slice(a, b) for a, b in zip(lo, hi))] += 1
        assert (seen == 1).all()


def test_object_stats_merge_in_any_order() -> None:
    rng = np.random.default_rng(10)
    labels = rng.integers(0, 6, (30, 40))
    whole = object_stats(labels, (0, 0), labels.shape)
    pieces = [object_stats(labels[lo[0]:hi[0], lo[1]:hi[1]], lo, labels.shape)
              for lo, hi in block_grid(labels.shape, (7, 11))]
    rng.shuffle(pieces)
    merged = merge_object_stats(pieces, 2)
    for name in ("labels", "count", "first", "last", "lo", "hi"):
        assert np.array_equal(getattr(merged, name), getattr(whole, name))


def test_niter_follows_eval() -> None:
    assert niter_for(3, 1.0) == 200 and niter_for(4, 1.0) == 200
    assert niter_for(3, 30 / 17) == int(np.uint32(17 / 30 * 200)) and niter_for(4, 30 / 17) == int(200 / (30 / 17))
    assert niter_for(3, 2.0, niter=77) == 77


# ---------------------------------------------------------------- trajectories


def test_trajectories_stay_within_one_diameter() -> None:
    """The follow halo: no trajectory reads flows farther than one object diameter
    from its start (here at most about 0.8 of the largest diameter)."""
    for shape, radius in (((96, 110), 8.0), ((24, 40, 44), 6.0)):
        dP, cellprob = synthetic(shape, 30 if len(shape) == 2 else 16, radius, seed=11)
        _, report = blockwise(dP, cellprob, tuple(s // 2 for s in shape), halo=(2,) * len(shape), **SETTINGS)
        diameter = 2 * 1.3 * radius  # the largest object
        assert max(report.reach) <= diameter, (report.reach, diameter)


# ---------------------------------------------------------------- network flows


def _tiny():
    """tests/support/tiny_cellpose.py (on sys.path via conftest), imported when a test needs it."""
    import tiny_cellpose

    return tiny_cellpose


@pytest.fixture(scope="module")
def network_flows():
    """The test model's flows and cell probability on a 2-D image and a 3-D volume (computed once)."""
    tiny = _tiny()
    from cellpose import models

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = tiny.tiny_model_path()
        with tiny.model_loading_context():
            kwargs = {"use_bfloat16": False} if tiny.cellpose_major() >= 4 else {}
            model = models.CellposeModel(gpu=False, pretrained_model=str(path), **kwargs)
        diameter = tiny.TrainingParams().diameter
        out = {}
        for name, shape in (("2d", (150, 170)), ("3d", (24, 60, 64))):
            image, _ = tiny.synthetic_blobs(shape, seed=3)
            extra = {"channels": [0, 0]} if tiny.cellpose_major() < 4 else {}
            if len(shape) == 3:
                extra.update(do_3D=True, z_axis=0)
            _, flows, _ = model.eval(image, diameter=diameter, compute_masks=False, **extra)[:3]
            out[name] = (np.ascontiguousarray(flows[1], np.float32), np.ascontiguousarray(flows[2], np.float32))
        return out
    finally:
        torch.set_num_threads(threads)


@pytest.mark.cellpose
@pytest.mark.parametrize("name,block", [("2d", (40, 64)), ("2d", (150, 170)), ("3d", (12, 25, 30))])
def test_blockwise_masks_equal_cellpose_on_network_flows(network_flows, name, block) -> None:
    dP, cellprob = network_flows[name]
    ndim = cellprob.ndim
    ref = cellpose_masks(dP, cellprob, do_3D=ndim == 3, **SETTINGS)
    out, report = blockwise(dP, cellprob, block, halo=(4,) * ndim, **SETTINGS)
    assert ref.max() >= 5
    assert np.array_equal(out, ref)
