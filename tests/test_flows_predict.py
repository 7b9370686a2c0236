"""The flows rule's predict step against ``CellposeModel.eval`` on the whole image.

Each block computes only the forward batches it owns (:meth:`Geometry.owned`)
and blends its core from the tiles over it; the flows and cell probability of
every block core must equal, bit for bit, what ``eval`` (``compute_masks=False``)
returns for the whole image -- 2-D with the rescale factor above and below 1,
3-D (three orientations), block shapes that do not divide the image.  The
network is the small test model (``tests/support/tiny_cellpose.py``).  Run in
both environments (cellpose 3.1 and 4.x).
"""

from __future__ import annotations


import numpy as np
import pytest

cellpose = pytest.importorskip("cellpose", reason="cellpose is not installed")
torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

from pystitch.flows.blockwise import block_grid  # noqa: E402
from pystitch.flows.predict import (  # noqa: E402
    Geometry, ModelFacts, Pass, apply_passes, batch_input, blend, calibrate_resize, prepare,
)


pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks")


def _tiny():
    """tests/support/tiny_cellpose.py (on sys.path via conftest), imported when a test needs it."""
    import tiny_cellpose

    return tiny_cellpose


# ---------------------------------------------------------------- resizing


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_resize_form_reproduces_cv2(channels) -> None:
    assert calibrate_resize(channels) in ("lerp", "muladd")


@pytest.mark.parametrize("src,dst", [((61, 77), (101, 128)), ((101, 128), (61, 77)), ((50, 50), (50, 90)),
                                     ((150, 170), (562, 637))])  # row 140's position is 37 - 1e-14 in cv2
def test_any_box_of_a_resize_equals_the_whole_resize(src, dst) -> None:
    rng = np.random.default_rng(5)
    img = rng.normal(size=(*src, 3)).astype(np.float32)
    whole = cv2.resize(img, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
    passes = [p for p in (Pass(1, src[1], dst[1], "h", 3), Pass(0, src[0], dst[0], "v", 3)) if p.src != p.dst]
    for lo, hi in block_grid(dst, (23, 31), offset=(7, 5)):
        out = apply_passes(img, (0, 0), passes, (lo, hi))
        assert np.array_equal(out, whole[lo[0]:hi[0], lo[1]:hi[1]]), (lo, hi)


def test_resizes_of_random_sizes_equal_cv2_or_are_refused() -> None:
    """Sizes and factors as cellpose meets them (1-4 channels, up and down);
    exactly 2x down on both axes may take cv2's area code: refused, never wrong."""
    from pystitch.flows.dynamics import KernelMismatchError

    rng = np.random.default_rng(1)
    refused = 0
    for t in range(120):
        ch = 1 + t % 4
        src = tuple(int(v) for v in rng.integers(20, 160, 2))
        k = rng.choice([0.25, 0.5, 1.5, 2.25, 3.75, 4 / 3, 2.0])
        dst = tuple(max(2, int(s * k)) for s in src)
        img = rng.normal(size=(*src, ch)).astype(np.float32)
        ref = cv2.resize(img, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR).reshape(*dst, ch)
        passes = [p for p in (Pass(1, src[1], dst[1], "h", ch), Pass(0, src[0], dst[0], "v", ch)) if p.src != p.dst]
        try:
            out = apply_passes(img, (0, 0), passes, ((0, 0), dst))
        except KernelMismatchError:
            assert src == tuple(2 * d for d in dst), (src, dst, ch)
            refused += 1
            continue
        assert np.array_equal(out, ref), (src, dst, ch)
    assert refused <= 12


# ---------------------------------------------------------------- the network's output per block


@pytest.fixture(scope="module")
def tiny_model():
    tiny = _tiny()
    from cellpose import models

    with tiny.model_loading_context():
        kwargs = {"use_bfloat16": False} if tiny.cellpose_major() >= 4 else {}
        model = models.CellposeModel(gpu=False, pretrained_model=str(tiny.tiny_model_path()), **kwargs)
    return tiny.cellpose_major(), model


def _eval_flows(major, model, img, bounds, diameter):
    three = img.ndim == 3
    normalize = {"lowhigh": bounds.tolist(), "percentile": [1.0, 99.0], "normalize": True, "norm3D": True,
                 "sharpen_radius": 0, "smooth_radius": 0, "tile_norm_blocksize": 0, "tile_norm_smooth3D": 1,
                 "invert": False}
    kwargs = dict(batch_size=8, channel_axis=img.ndim, z_axis=0 if three else None, normalize=normalize,
                  diameter=diameter, do_3D=three, compute_masks=False)
    if major == 3:
        kwargs["channels"] = [1, 0]
    flows = model.eval(img[..., None], **kwargs)[1]
    return np.asarray(flows[1]), np.asarray(flows[2])


def _blockwise_flows(major, model, img, bounds, diameter, block, geometry_shape=None):
    from cellpose import core

    rescale = (model.diam_mean / diameter) if major == 3 else 30.0 / diameter
    facts = ModelFacts(major=major, bsize=224 if major == 3 else 256, nchan=2 if major == 3 else 3, nout=3,
                       rescale=float(rescale), anisotropy=None, batch_size=8)
    tiles = {}
    dP = np.full((img.ndim, *img.shape), np.nan, np.float32)
    cellprob = np.full(img.shape, np.nan, np.float32)
    grid = block_grid(img.shape, block)
    geometry = Geometry(img.shape if geometry_shape is None else geometry_shape, facts)
    computed = 0
    for lo, hi in grid:
        for batch in geometry.owned(lo, hi):
            def read(box):
                return prepare(img[tuple(slice(a, b) for a, b in zip(*box))][..., None], major, bounds, False)

            y = core._forward(model.net, batch_input(geometry, batch, read))[0]
            computed += len(batch.members)
            for k, member in enumerate(batch.members):
                tiles[(batch.orientation, *member)] = y[k]
    for lo, hi in grid:
        d, c = blend(geometry, (lo, hi), lambda o, q, j, i: tiles[(o, q, j, i)])
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        dP[(slice(None), *box)] = d
        cellprob[box] = c
    return dP, cellprob, computed, geometry


@pytest.mark.cellpose
@pytest.mark.parametrize("shape,diameter,block", [
    ((150, 170), 8.0, (64, 50)),     # network space larger than the image (2.25x in cellpose 3)
    ((150, 170), 40.0, (150, 90)),   # smaller
    pytest.param((20, 40, 36), 12.0, (8, 25, 20), marks=pytest.mark.slow),  # 3-D: three orientations
])
def test_blockwise_prediction_equals_eval(tiny_model, shape, diameter, block) -> None:
    major, model = tiny_model
    tiny = _tiny()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        img = tiny.synthetic_blobs(shape, seed=2)[0].astype(np.float32)
        bounds = np.array([[0.0, 1.0]] * (2 if major == 3 else 1))
        ref_dP, ref_prob = _eval_flows(major, model, img, bounds, diameter)
        dP, prob, computed, geometry = _blockwise_flows(major, model, img, bounds, diameter, block)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(dP, ref_dP)
    assert np.array_equal(prob, ref_prob)
    # every tile once: the blocks' shares add up to the whole image's work
    assert computed == sum(o.n_planes * o.ntiles for o in geometry.orientations)


@pytest.mark.cellpose
def test_a_block_layout_of_its_own_is_not_eval(tiny_model) -> None:
    """The control: tiling a block by itself (what a per-block eval does) changes the flows."""
    major, model = tiny_model
    tiny = _tiny()
    img = tiny.synthetic_blobs((150, 170), seed=2)[0].astype(np.float32)
    bounds = np.array([[0.0, 1.0]] * (2 if major == 3 else 1))
    ref_dP, _ = _eval_flows(major, model, img, bounds, 8.0)
    crop = img[:100, :110]
    dP, _, _, _ = _blockwise_flows(major, model, crop, bounds, 8.0, (100, 110))
    assert not np.array_equal(dP, ref_dP[:, :100, :110])


@pytest.mark.cellpose
@pytest.mark.parametrize("factor,block,offset", [(0.7, (64, 50), (0, 0)), (1.3, (48, 80), (20, 7))])
def test_predict_and_follow_by_blocks_equal_eval_masks(tiny_model, factor, block, offset) -> None:
    """End to end, no whole-image step but the seed ranking and the filters'
    table: the network per block (its own batches), then the blockwise
    dynamics; the labels equal ``eval``'s masks, values included, on any grid."""
    from pystitch.flows.blockwise import masks_blockwise
    from pystitch.flows.dynamics import installed_dynamics, niter_for

    major, model = tiny_model
    tiny = _tiny()
    diameter = factor * tiny.TrainingParams().diameter  # objects the model finds, scaled up and down
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        img = tiny.synthetic_blobs((150, 170), seed=4)[0].astype(np.float32)
        bounds = np.array([[0.0, 1.0]] * (2 if major == 3 else 1))
        normalize = {"lowhigh": bounds.tolist(), "percentile": [1.0, 99.0], "normalize": True, "norm3D": True,
                     "sharpen_radius": 0, "smooth_radius": 0, "tile_norm_blocksize": 0, "tile_norm_smooth3D": 1,
                     "invert": False}
        kwargs = dict(batch_size=8, channel_axis=2, normalize=normalize, diameter=diameter)
        if major == 3:
            kwargs["channels"] = [1, 0]
        ref = np.asarray(model.eval(img[..., None], **kwargs)[0])
        dP, prob, _, geometry = _blockwise_flows(major, model, img, bounds, diameter, block)
    finally:
        torch.set_num_threads(threads)
    niter = niter_for(major, geometry.facts.rescale)
    order = np.random.default_rng(1).permutation(len(block_grid(img.shape, block, offset)))
    out, _, _ = masks_blockwise(dP, prob, block, installed_dynamics(), halo=(int(2 * diameter),) * 2, niter=niter,
                                order=order, offset=offset)
    assert ref.max() >= 10
    assert np.array_equal(out, ref)


@pytest.mark.cellpose
@pytest.mark.parametrize("shape,block", [((150, 170), (64, 90)),
                                         pytest.param((20, 40, 36), (10, 20, 36), marks=pytest.mark.slow)])
def test_the_adapters_settings_by_blocks_equal_its_whole_image_labels(shape, block) -> None:
    """The backend adapter's own tiling facts, network input and forward pass,
    then the blockwise dynamics with its thresholds: its labels on the whole image."""
    from pystitch.backends.cellpose import CellposeSegmenter
    from pystitch.flows.blockwise import masks_blockwise
    from pystitch.flows.dynamics import installed_dynamics, niter_for

    tiny = _tiny()
    with tiny.model_loading_context():
        seg = CellposeSegmenter(pretrained_model=str(tiny.tiny_model_path()),
                                diameter=0.8 * tiny.TrainingParams().diameter, do_3D=len(shape) == 3, lowhigh=[(0.0, 1.0)], device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        img = tiny.synthetic_blobs(shape, seed=6)[0].astype(np.float32)
        ref = seg(img)
        geometry = Geometry(shape, seg.model_facts())
        tiles = {}
        for lo, hi in block_grid(shape, block):
            for batch in geometry.owned(lo, hi):
                y = seg.forward(batch_input(geometry, batch, lambda box: seg.network_input(
                    img[tuple(slice(a, b) for a, b in zip(*box))])))
                tiles.update({(batch.orientation, *m): y[k] for k, m in enumerate(batch.members)})
        dP = np.zeros((len(shape), *shape), np.float32)
        prob = np.zeros(shape, np.float32)
        for lo, hi in block_grid(shape, block):
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            dP[(slice(None), *box)], prob[box] = blend(geometry, (lo, hi), lambda o, q, j, i: tiles[(o, q, j, i)])
    finally:
        torch.set_num_threads(threads)
    out, _, _ = masks_blockwise(dP, prob, block, installed_dynamics(), halo=(20,) * len(shape),
                                niter=niter_for(seg.major, geometry.facts.rescale, niter=seg.niter),
                                cellprob_threshold=seg.cellprob_threshold, flow_threshold=seg.flow_threshold,
                                min_size=seg.min_size, max_size_fraction=seg.max_size_fraction)
    assert ref.max() >= (10 if len(shape) == 2 else 2)
    assert np.array_equal(out, ref)


@pytest.mark.cellpose
def test_network_input_without_global_bounds_is_refused() -> None:
    from pystitch.backends.cellpose import CellposeSegmenter
    from pystitch.errors import InputError

    tiny = _tiny()
    with tiny.model_loading_context():
        seg = CellposeSegmenter(pretrained_model=str(tiny.tiny_model_path()), device="cpu")
    with pytest.raises(InputError, match="Expected lowhigh") as info:
        seg.network_input(np.zeros((8, 8), np.float32))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- blocks in turn, tiles on demand


def _facts(bsize=32, rescale=1.0, batch_size=8):
    return ModelFacts(major=3, bsize=bsize, nchan=2, nout=3, rescale=rescale, anisotropy=None,
                      batch_size=batch_size)


def _fake_forward(geometry):
    """A stand-in network: each batch's output a fixed function of its orientation and number."""
    def forward(batch):
        o = geometry.orientations[batch.orientation]
        rng = np.random.default_rng([batch.orientation, batch.number])
        return rng.standard_normal((len(batch.members), 3, *o.tile), dtype=np.float32)
    return forward


@pytest.mark.parametrize("shape,block,rescale", [((90, 110), (32, 45), 1.3), ((20, 70, 64), (8, 24, 30), 0.8)])
def test_tiles_for_are_the_tiles_blend_reads(shape, block, rescale) -> None:
    geometry = Geometry(shape, _facts(rescale=rescale))
    zeros = {o.index: np.zeros((3, *o.tile), np.float32) for o in geometry.orientations}
    for core in block_grid(shape, block, offset=(5,) * len(shape)):
        read = []
        blend(geometry, core, lambda o, q, j, i: read.append((o, q, j, i)) or zeros[o])
        assert geometry.tiles_for(core) == read, core


@pytest.mark.parametrize("shape,block", [((130, 150), (40, 64)), ((96, 96, 96), (32, 32, 32))])
def test_streamed_blocks_equal_blending_from_every_tile(shape, block) -> None:
    """Each batch runs once, outputs equal to holding every tile, and in 3-D with
    planes of many tiles far fewer tile outputs held than the image has."""
    from pystitch.flows.predict import StreamReport, stream_blocks

    geometry = Geometry(shape, _facts(bsize=16))
    forward = _fake_forward(geometry)
    every = {}
    for o in geometry.orientations:
        for batch in geometry.batches(o.index):
            y = forward(batch)
            every.update({(o.index, *m): y[k] for k, m in enumerate(batch.members)})
    cores = block_grid(shape, block)
    report = StreamReport()
    seen = []
    for index, dP, prob in stream_blocks(geometry, cores, forward, report):
        ref_dP, ref_prob = blend(geometry, cores[index], lambda o, q, j, i: every[(o, q, j, i)])
        assert np.array_equal(dP, ref_dP) and np.array_equal(prob, ref_prob), cores[index]
        seen.append(index)
    assert seen == list(range(len(cores)))
    assert report.batches == sum(geometry.n_batches(o.index) for o in geometry.orientations)
    assert report.tiles == len(every)
    assert report.tile_bytes == 3 * 16 * 16 * 4
    if len(shape) == 3:
        assert report.peak_tiles <= 0.5 * len(every), (report.peak_tiles, len(every))
