"""Compiled kernels against their numpy/scipy references (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pystitch import reference
from pystitch.errors import InputError
from pystitch._core import apply_lut_array, contingency, union_find
from pystitch.steps.apply_lut import block_regions
from pystitch.steps.resolve import final_lut

UINTS = [np.uint8, np.uint16, np.uint32, np.uint64]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- lut apply


@st.composite
def labels_and_lut(draw):
    label_dtype = draw(st.sampled_from(UINTS))
    value_dtype = draw(st.sampled_from(UINTS))
    n = draw(st.integers(1, min(300, int(np.iinfo(label_dtype).max) + 1)))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=12))
    # runs are typical of label images: draw values then repeat some
    labels = draw(hnp.arrays(label_dtype, shape, elements=st.integers(0, n - 1)))
    lut = draw(hnp.arrays(value_dtype, n, elements=st.integers(0, int(np.iinfo(value_dtype).max))))
    return labels, lut


@SETTINGS
@given(labels_and_lut(), st.booleans(), st.booleans())
def test_lut_matches_fancy_indexing(data, readonly, strided):
    labels, lut = data
    if strided and labels.ndim and labels.shape[-1] > 1:
        labels = labels[..., ::2]
    if readonly:
        labels.flags.writeable = False
        lut.flags.writeable = False
    out = apply_lut_array(labels, lut)
    expected = reference.lut_apply(labels, lut)
    assert out.dtype == lut.dtype
    np.testing.assert_array_equal(out, expected)


@SETTINGS
@given(st.sampled_from(UINTS), st.lists(st.tuples(st.integers(0, 40), st.integers(1, 90)), min_size=1, max_size=40),
       st.integers(0, 39), st.booleans())
def test_lut_long_runs_and_first_bad_label(dtype, runs, bad_run, corrupt):
    """Images long enough for the kernel's stretch-wise path: runs of every
    length, and a label outside the table reported at its first position."""
    labels = np.concatenate([np.full(length, value, dtype) for value, length in runs])
    lut = (np.arange(41, dtype=np.uint64) * 7 + 1).astype(np.uint32)
    if not corrupt:
        np.testing.assert_array_equal(apply_lut_array(labels, lut), lut[labels])
        return
    value, length = runs[bad_run % len(runs)]
    start = sum(r[1] for r in runs[:bad_run % len(runs)])
    labels[start:start + length] = 41 + value % 3
    first = int(np.flatnonzero(labels >= 41)[0])
    with pytest.raises(InputError, match=f"Label {int(labels[first])} is outside the lut"):
        apply_lut_array(labels, lut)


def test_lut_runs_and_label_outside_table():
    labels = np.repeat(np.array([0, 3, 3, 1, 2, 2, 2, 0], np.uint32), 5)
    lut = np.array([0, 10, 20, 30], np.uint32)
    np.testing.assert_array_equal(apply_lut_array(labels, lut), lut[labels])
    with pytest.raises(InputError, match="Label 7 is outside the lut"):
        apply_lut_array(np.array([1, 7, 7], np.uint32), lut)
    with pytest.raises(InputError, match="Expected unsigned integer labels"):
        apply_lut_array(np.array([1.0]), lut)
    assert apply_lut_array(np.zeros((0, 3), np.uint16), lut).shape == (0, 3)


# --------------------------------------------------------------------------- union-find


@st.composite
def graphs(draw):
    n = draw(st.integers(0, 200))
    if n == 0:
        return 0, np.zeros(0, np.int64), np.zeros(0, np.int64)
    m = draw(st.integers(0, 3 * n))
    left = draw(hnp.arrays(np.int64, m, elements=st.integers(0, n - 1)))
    right = draw(hnp.arrays(np.int64, m, elements=st.integers(0, n - 1)))
    return n, left, right


@SETTINGS
@given(graphs(), st.sampled_from([np.int32, np.int64, np.uint32, np.uint64]))
def test_union_find_matches_connected_components(graph, dtype):
    n, left, right = graph
    roots, merges = union_find(left.astype(dtype), right.astype(dtype), n)
    expected = reference.union_find_roots(left, right, n)
    np.testing.assert_array_equal(roots, expected)
    assert merges == n - len(np.unique(expected))


@SETTINGS
@given(graphs(), st.randoms(use_true_random=False))
def test_union_find_independent_of_order_and_duplicates(graph, rnd):
    n, left, right = graph
    roots, _ = union_find(left, right, n)
    idx = list(range(len(left))) * 2          # every pair twice
    rnd.shuffle(idx)
    swap = np.array([rnd.random() < 0.5 for _ in idx], bool)
    l2, r2 = left[idx].copy(), right[idx].copy()
    l2[swap], r2[swap] = right[idx][swap], left[idx][swap]
    l2.flags.writeable = False
    roots2, _ = union_find(l2, r2, n)
    np.testing.assert_array_equal(roots, roots2)


def test_union_find_rejects_bad_indices():
    with pytest.raises(InputError, match=r"indices in \[0, 3\)"):
        union_find(np.array([0, 3]), np.array([1, 1]), 3)
    with pytest.raises(InputError, match="equal length"):
        union_find(np.array([0, 1]), np.array([1]), 3)


@SETTINGS
@given(st.integers(0, 300), st.data(), st.integers(1, 64), st.sampled_from([0, 1 << 40]))
def test_final_lut_sequential_by_smallest_id(n_prov, data, chunk, dense_max):
    """Both lut shapes (sparse: dense_max 0; dense) against the reference."""
    m = data.draw(st.integers(0, 2 * n_prov)) if n_prov else 0
    pairs = data.draw(hnp.arrays(np.uint64, (m, 2), elements=st.integers(1, max(1, n_prov)))) if n_prov else \
        np.zeros((0, 2), np.uint64)
    pieces, n_final, merges = final_lut(n_prov, pairs, chunk=chunk, dense_max=dense_max)
    lut = np.concatenate(list(pieces))
    assert len(lut) == n_prov + 1 and lut[0] == 0
    # reference: components of 1..n_prov numbered in order of their smallest member
    roots = reference.union_find_roots(pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64), n_prov + 1)
    comp_order = {r: i + 1 for i, r in enumerate(sorted(set(roots[1:].tolist())))}
    expected = np.array([0] + [comp_order[r] for r in roots[1:]], dtype=np.uint64)
    np.testing.assert_array_equal(lut, expected)
    assert n_final == (len(comp_order) if n_prov else 0)
    assert merges == n_prov - n_final


# --------------------------------------------------------------------------- contingency


@SETTINGS
@given(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=15), st.data(),
       st.sampled_from([np.uint8, np.uint16, np.uint32, np.int32, np.int64]))
def test_contingency_matches_unique(shape, data, dtype):
    hi = data.draw(st.integers(0, 40))
    a = data.draw(hnp.arrays(dtype, shape, elements=st.integers(0, hi)))
    b = data.draw(hnp.arrays(dtype, shape, elements=st.integers(0, hi)))
    a.flags.writeable = False
    got = contingency(a, b)
    exp = reference.contingency(a, b)
    for g, e in zip(got, exp):
        np.testing.assert_array_equal(g, e)


def test_contingency_large_labels_and_errors():
    a = np.array([4_000_000_000, 4_000_000_000, 0, 5], np.uint32)
    b = np.array([7, 7, 3, 4_000_000_001], np.uint32)
    la, lb, c = contingency(a, b)
    assert la.tolist() == [5, 4_000_000_000] and lb.tolist() == [4_000_000_001, 7] and c.tolist() == [1, 2]
    with pytest.raises(InputError, match="one shape"):
        contingency(np.zeros(3, np.uint32), np.zeros(4, np.uint32))
    with pytest.raises(InputError, match="non-negative"):
        contingency(np.array([-1, 2]), np.array([1, 2]))


# --------------------------------------------------------------------------- region statistics


@SETTINGS
@given(hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=14), st.data())
def test_block_regions_match_ndimage(shape, data):
    n = data.draw(st.integers(1, 12))
    local = data.draw(hnp.arrays(np.uint32, shape, elements=st.integers(0, n)))
    present = np.unique(local[local > 0])
    # renumber densely as staging labels are
    dense = np.searchsorted(present, local).astype(np.uint32) + 1
    dense[local == 0] = 0
    n = len(present)
    if n == 0:
        return
    final_ids = data.draw(hnp.arrays(np.uint64, n, elements=st.integers(1, 5)))
    origin = tuple(data.draw(st.integers(0, 1000)) for _ in shape)
    got = block_regions(dense, n, origin, final_ids)
    # reference: relabel with the final ids, then scipy on that
    lut = np.concatenate([[0], final_ids]).astype(np.uint64)
    final = lut[dense].astype(np.int64)
    ids = np.unique(final[final > 0])
    np.testing.assert_array_equal(got["id"], ids)
    remap = np.searchsorted(ids, final) + 1
    remap[final == 0] = 0
    counts, lo, hi, sums = reference.region_stats(remap, len(ids))
    np.testing.assert_array_equal(got["count"], counts)
    np.testing.assert_array_equal(got["lo"], lo + origin)
    np.testing.assert_array_equal(got["hi"], hi + origin)
    np.testing.assert_array_equal(got["sum"], sums + counts[:, None] * np.array(origin))


def test_region_stats_rejects_label_above_count():
    from pystitch._core._regions import region_stats_3d
    with pytest.raises(ValueError, match="label 3 is greater"):
        region_stats_3d(np.array([[[1, 3]]], np.uint32), 2)


def test_lut_slices_across_chunks(tmp_path):
    """apply-lut reads its blocks' slices through a small chunk cache."""
    import zarr

    from pystitch.storage.lut import Lut

    values = np.arange(1000, dtype=np.uint32) * 3
    group = zarr.open_group(str(tmp_path / "lut.zarr"), mode="w")
    group.create_array("lut", shape=values.shape, chunks=(7,), dtype=values.dtype)[:] = values
    group.create_array("offsets", shape=(2,), dtype=np.uint64)[:] = [0, 999]
    group.attrs.update(dtype="uint32", plan_hash="x", n_objects=999)
    lut = Lut(group=group, uri=str(tmp_path / "lut.zarr"))
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = int(rng.integers(0, 1000))
        b = int(rng.integers(a, 1001))
        np.testing.assert_array_equal(lut.read(a, b), values[a:b])


@SETTINGS
@given(st.data())
def test_match_is_one_to_one_and_symmetric(data):
    """The match rule pairs each object with at most one object of the
    neighbour, and gives the same pairs whichever block is called a."""
    from pystitch.steps.face_pairs import match_pairs, pair_iou

    shape = data.draw(hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=10))
    a = data.draw(hnp.arrays(np.uint32, shape, elements=st.integers(0, 6)))
    b = data.draw(hnp.arrays(np.uint32, shape, elements=st.integers(0, 6)))
    threshold = data.draw(st.sampled_from([0.05, 0.2, 0.5]))
    la, lb, count = contingency(a, b)
    keep = match_pairs(la, lb, pair_iou(la, lb, count, a, b), threshold)
    pairs = set(zip(la[keep].tolist(), lb[keep].tolist()))
    assert len({x for x, _ in pairs}) == len(pairs) == len({y for _, y in pairs})
    lb2, la2, count2 = contingency(b, a)
    keep2 = match_pairs(lb2, la2, pair_iou(lb2, la2, count2, b, a), threshold)
    assert {(y, x) for x, y in zip(lb2[keep2].tolist(), la2[keep2].tolist())} == pairs
    # every kept pair is above the threshold and each is the other's best
    iou = pair_iou(la, lb, count, a, b)
    for x, y, v in zip(la[keep], lb[keep], iou[keep]):
        assert v >= threshold
        assert v >= iou[la == x].max() and v >= iou[lb == y].max()


# --------------------------------------------------------------------------- connected components


@st.composite
def masks_and_cores(draw):
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=14))
    density = draw(st.sampled_from([0.2, 0.5, 0.8]))
    seed = draw(st.integers(0, 2**32 - 1))
    mask = np.random.default_rng(seed).random(shape) < density
    core = []
    for n in shape:
        lo = draw(st.integers(0, n))
        core.append(slice(lo, draw(st.integers(lo, n))))
    return mask, tuple(core), draw(st.integers(1, len(shape)))


@SETTINGS
@given(masks_and_cores())
def test_label_foreground_matches_ndimage_then_renumbering(data):
    from scipy import ndimage

    from pystitch._core import label_foreground
    from pystitch.steps.segment_block import renumber_local

    mask, core, conn = data
    labels, _ = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, conn))
    want, n_want, m_want = renumber_local(labels, core, "test")
    got, n, m, fg = label_foreground(mask, conn, core)
    assert got.dtype == np.uint32 and (n, m) == (n_want, m_want) and fg == int(mask[core].sum())
    np.testing.assert_array_equal(got, want)


def test_label_foreground_long_runs_and_diagonals():
    from scipy import ndimage

    from pystitch._core import label_foreground
    from pystitch.steps.segment_block import renumber_local

    rng = np.random.default_rng(7)
    mask = np.zeros((40, 50, 300), bool)
    for _ in range(400):  # long runs along x, touching only diagonally at some ends
        z, y, x = rng.integers(0, 40), rng.integers(0, 50), rng.integers(0, 280)
        mask[z, y, x:x + rng.integers(1, 20)] = True
    core = (slice(5, 35), slice(3, 47), slice(10, 290))
    for conn in (1, 2, 3):
        labels, _ = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, conn))
        want, n_want, m_want = renumber_local(labels, core, "test")
        got, n, m, _ = label_foreground(mask, conn, core)
        assert (n, m) == (n_want, m_want)
        np.testing.assert_array_equal(got, want)
    with pytest.raises(InputError, match="boolean mask"):
        label_foreground(mask.astype(np.uint8), 1, core)


# --------------------------------------------------------------------------- threshold foreground

INTS = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64]


@SETTINGS
@given(st.sampled_from(INTS), st.data(), st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(-300.5, 300.5),
    st.integers(-2 ** 64, 2 ** 64).map(float),
    st.sampled_from([-0.5, 0.0, 0.5, 254.5, 255.0, 2.0 ** 53, 2.0 ** 60 + 2 ** 8, 2.0 ** 63, -2.0 ** 63 - 4096, 2.0 ** 64])))
def test_threshold_foreground_is_exact_for_integer_images(dtype, data, threshold):
    """The threshold backend's foreground of an integer block, compared in the
    block's own type, is exactly ``value > threshold`` as Python compares an
    integer with a float (no rounding of either), at the type's limits too."""
    from pystitch.backends.threshold import above

    info = np.iinfo(dtype)
    near = [math.floor(threshold), math.floor(threshold) + 1, math.ceil(threshold)]  # where rounding would show
    edges = [info.min, info.max] + [min(max(v, info.min), info.max) for v in near]
    values = data.draw(hnp.arrays(dtype, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
                                  elements=st.one_of(st.integers(info.min, info.max), st.sampled_from(edges))))
    got = above(values, threshold)
    expected = np.array([int(v) > threshold for v in values.ravel().tolist()], dtype=bool).reshape(values.shape)
    assert got.dtype == bool and got.shape == values.shape
    np.testing.assert_array_equal(got, expected)
    floats = values.astype(np.float64)
    np.testing.assert_array_equal(above(floats, threshold), floats > threshold)  # other types: numpy's comparison


@pytest.mark.parametrize("dtype, values, threshold", [
    (np.int64, [2 ** 53, 2 ** 53 + 1, 2 ** 53 + 2], 2.0 ** 53),
    (np.uint64, [2 ** 60 + 2 ** 8, 2 ** 60 + 2 ** 8 + 1, 2 ** 64 - 1], 2.0 ** 60 + 2 ** 8),
    (np.uint8, [0, 1, 255], -1e300),
    (np.int16, [-32768, 0, 32767], 1e300),
])
def test_threshold_foreground_does_not_round_large_integers(dtype, values, threshold):
    """Integers beyond 2**53 are not rounded to the threshold (numpy's own
    comparison with a float converts them and calls 2**53 + 1 > 2**53 false)."""
    from pystitch.backends.threshold import above

    data = np.array(values, dtype=dtype)
    np.testing.assert_array_equal(above(data, threshold), [v > threshold for v in values])
