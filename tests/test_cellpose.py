"""The cellpose backend through the whole pipeline, offline, with a small real
model trained by tests/support/tiny_cellpose.py: stitched Cellpose against
whole-image Cellpose on the same image (object F1 at IoU 0.5), a real nuclei
image, global normalisation, halo defaults, device and model errors."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import pathlib

import numpy as np
import pytest
import tifffile

import pystitch
from helpers import assert_partition_equivalent, load, save
from pystitch.errors import DeviceError, InputError, InputNotFoundError

pytestmark = pytest.mark.cellpose
cellpose = pytest.importorskip("cellpose", reason="the cellpose extra is not installed (make test installs it)")

import tiny_cellpose as tiny  # noqa: E402  (tests/support, on sys.path via conftest)
from pystitch.backends.cellpose import CellposeSegmenter  # noqa: E402

DIAMETER = 18.0   # the tiny model is trained on disks of 14-22 px


@pytest.fixture(scope="module")
def model() -> pathlib.Path:
    import torch

    torch.set_num_threads(1)   # see tests/test_cellpose_adapter.py: faster on a busy 2-core machine
    return tiny.tiny_model_path()


def f1(reference: np.ndarray, result: np.ndarray) -> float:
    tp, fp, fn = tiny.match_counts(reference, result, 0.5)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def run(image, out, model, **kw):
    opts = dict(backend="cellpose", pretrained_model=str(model), diameter=DIAMETER, progress=False, pictures=False,
                device="cpu")
    opts.update(kw)
    return pystitch.run(image, out, **opts)


def touching_image(seed: int = 2) -> np.ndarray:
    """Dense, touching synthetic cells (256 x 256) beside a band of faintly
    textured background (64 px wide), as uint16."""
    from scipy import ndimage

    cells, _ = tiny.synthetic_blobs((256, 256), seed=seed, fill=0.45, touching=0.6)
    rng = np.random.default_rng(seed)
    texture = ndimage.gaussian_filter(rng.standard_normal((256, 64)), 3.0)
    band = (0.1 + 0.02 * texture / texture.std() + 0.01 * rng.standard_normal((256, 64))).astype(np.float32)
    return (np.concatenate([cells, band], axis=1) * 1000).astype(np.uint16)


@pytest.fixture(scope="module")
def touching(tmp_path_factory, model):
    """The touching cells and whole-image Cellpose on them (same global normalisation)."""
    d = tmp_path_factory.mktemp("touching")
    img = touching_image()
    path = save(d / "img.zarr", img)
    lowhigh = [np.percentile(img, [1, 99]).tolist()]
    whole = CellposeSegmenter(pretrained_model=model, diameter=DIAMETER, lowhigh=lowhigh, device="cpu")(img)
    return d, path, img, whole, lowhigh


# Bounds on the object F1 (IoU 0.5) of stitched against whole-image Cellpose, each with its margin.
# Measured 2026-12-02 on a 2-core Intel Xeon (AVX-512, KVM), cellpose 3.1.1.3, torch 2.14.1, on the
# reference build of the tiny model (tiny_cellpose.REFERENCE_SHA256, what that Intel Xeon
# trains) and on builds of the same recipe that took other CPU code paths (oneDNN at AVX2, MKL at AVX2,
# oneDNN on as before determinism: what another machine trained then) -- the spread to expect where
# the build differs (another architecture, other pins):
#   test image, block 64, halo 18 (1 diameter), match:  0.967 reference; 0.960-0.995 other builds
#   test image, block 96, halo 36 (2 diameters), match: 0.978 reference; 0.975-0.990 other builds
#   test image, block 64, halo 18, exact rule:          0.919 reference; 0.845-0.954 other builds
#   other images (seeds 1, 3, no background band), reference, halo 1 / 2 diameters: 0.960-0.973 / 0.967-0.994
# The bounds sit a margin below the lowest value measured for the configuration (about two to four
# objects' worth of errors among ~90-100); the exact rule, which merges touching cells where blocks
# disagree by a pixel, falls below the first bound in four of the five builds and 0.04-0.12 below match
# in all of them (asserted below).
F1_HALO_1 = 0.93   # lowest measured 0.960: margin 0.03
F1_HALO_2 = 0.95   # lowest measured 0.975: margin 0.025
# 3-D, 24 x 80 x 80 balls (seed 4), blocks 24 x 48 x 48, halo (0, 18, 18), same builds: planes segmented in 2-D
# and joined at IoU 0.3 are fragile (the z-chains of 35-42 objects change with a pixel):
#   planes, match: 0.805 reference; 0.789-0.911 other builds;  rule none (blocks not stitched): 0.653 reference
#   do_3D, match:  0.923 reference (12 of 13 objects); 1.0 other builds;  rule none: 0.750 reference
F1_PLANES = 0.70   # lowest measured 0.789: margin 0.09
F1_DO_3D = 0.80    # lowest measured 0.923: margin 0.12 (one object of 13 is 0.04)


def test_stitched_cellpose_equals_whole_image(touching, model, tmp_path):
    d, path, img, whole, lowhigh = touching
    cases = {
        "halo 1 diameter": dict(block_shape=64),
        "halo 2 diameters": dict(block_shape=96, halo=36),
        "exact rule": dict(block_shape=64, rule="exact"),
    }
    table = {}
    for name, kw in cases.items():
        out = tmp_path / f"{name.replace(' ', '-')}.zarr"
        s = run(path, out, model, **kw)
        np.testing.assert_allclose(s["stats"]["lowhigh"], lowhigh)  # the whole image is sampled here
        table[name] = f1(whole, load(out))
    print("\nstitched vs whole-image Cellpose, object F1 at IoU 0.5:")
    for k, v in table.items():
        print(f"  {k}: {v:.3f}")
    assert whole.max() > 60
    assert table["halo 1 diameter"] >= F1_HALO_1
    assert table["halo 2 diameters"] >= F1_HALO_2
    # touching-merge joins distinct touching cells where blocks disagree by a pixel (0.05-0.12 lower)
    assert table["exact rule"] < table["halo 1 diameter"] - 0.02


F1_NUCLEI = 0.93   # against whole-image Cellpose on the nuclei image below: lowest measured 0.966, margin 0.036


def test_real_nuclei_image(model, tmp_path):
    """stardist's 2-D nuclei image with manual labels (shipped in its wheel)."""
    images = pathlib.Path(importlib.util.find_spec("stardist").submodule_search_locations[0]) / "data" / "images"
    img, manual = tifffile.imread(images / "img2d.tif"), tifffile.imread(images / "mask2d.tif")
    path = save(tmp_path / "nuclei.zarr", img)
    s = run(path, tmp_path / "out.zarr", model, block_shape=256, diameter=24)
    out = load(tmp_path / "out.zarr")
    n_manual = len(np.unique(manual)) - 1
    # a model trained only on synthetic disks: plausible, not expert. Measured (builds as above): 72 objects
    # for 125 manual nuclei with the reference, 72-81 with other builds; F1 against the manual labels 0.690,
    # 0.690-0.748; against whole-image Cellpose 0.966, 0.966-0.987 (margins 9 objects, 0.19, 0.036)
    assert 0.5 * n_manual <= s["objects"] <= 1.4 * n_manual
    assert f1(manual, out) >= 0.5
    whole = CellposeSegmenter(pretrained_model=model, diameter=24, lowhigh=s["stats"]["lowhigh"], device="cpu")(img)
    assert f1(whole, out) >= F1_NUCLEI



def test_3d_per_plane_and_do_3d(model, tmp_path):
    img, truth = tiny.synthetic_blobs((24, 80, 80), seed=4, fill=0.3, touching=0.3)
    img = (img * 1000).astype(np.uint16)
    path = save(tmp_path / "vol.zarr", img)
    lowhigh = [np.percentile(img, [1, 99]).tolist()]
    for kw, bound in (({"do_3D": False, "stitch_threshold": 0.3}, F1_PLANES), ({"do_3D": True}, F1_DO_3D)):
        whole = CellposeSegmenter(pretrained_model=model, diameter=DIAMETER, lowhigh=lowhigh, device="cpu", **kw)(img)
        assert whole.max() > 10
        found = {}
        for rule in ("match", "none"):
            out_path = tmp_path / f"out-{kw['do_3D']}-{rule}.zarr"
            s = run(path, out_path, model, block_shape=(24, 48, 48), halo=(0, 18, 18), rule=rule, **kw)
            assert s["backend"]["do_3D"] == kw["do_3D"]
            found[rule] = f1(whole, load(out_path))
        print(f"\n3-D do_3D={kw['do_3D']}: object F1 against whole-image Cellpose {found}")
        assert found["match"] >= bound
        assert found["none"] < found["match"] - 0.1   # unstitched blocks split the objects on seams


def test_normalisation_is_one_for_all_blocks(model, tmp_path):
    img, _ = tiny.synthetic_blobs((128, 256), seed=5, fill=0.4)
    img = (img * 1000).astype(np.uint16)
    img[:, 128:] = img[:, 128:] // 4           # a dim region: per-block percentiles would stretch it
    img[:, 192:] = 0                            # and an empty margin
    path = save(tmp_path / "img.zarr", img)
    plan = pystitch.plan_blocks(path, tmp_path / "out.zarr", block_shape=64, backend="cellpose",
                                backend_options={"pretrained_model": str(model), "diameter": DIAMETER})
    lowhigh = plan.stats["lowhigh"]
    np.testing.assert_allclose(lowhigh, [np.percentile(img, [1, 99])], rtol=0.05)
    pystitch.segment_blocks(plan, "all", device="cpu")
    infos = [json.loads(p.read_text())["backend"] for p in sorted(plan.manifest_dir.glob("block-*.json"))]
    used = [i["lowhigh"] for i in infos if "lowhigh" in i]
    assert len(used) >= 6 and all(u == lowhigh for u in used)
    # blocks at or below the low bound are empty end to end (here: the background margin)
    assert plan.empty_blocks and all(plan.grid.core(b)[1].start >= 192 for b in plan.empty_blocks)


def test_model_loaded_once_per_task(model, tmp_path, monkeypatch):
    made = []
    real_init = CellposeSegmenter.__init__

    def counting_init(self, *a, **k):
        made.append(1)
        real_init(self, *a, **k)

    monkeypatch.setattr(CellposeSegmenter, "__init__", counting_init)
    img, _ = tiny.synthetic_blobs((128, 128), seed=6)
    path = save(tmp_path / "img.zarr", (img * 1000).astype(np.uint16))
    plan = pystitch.plan_blocks(path, tmp_path / "o.zarr", block_shape=64, backend="cellpose",
                                backend_options={"pretrained_model": str(model), "diameter": DIAMETER})
    pystitch.segment_blocks(plan, "all", device="cpu")
    assert plan.n_blocks == 4 and len(made) == 1


def test_halo_defaults_to_one_diameter_respecting_anisotropy(model, tmp_path):
    from pystitch.example import write_example

    img = write_example(tmp_path / "img.zarr", shape=(16, 96, 96))   # voxels 2.0 x 0.5 x 0.5 um
    plan = pystitch.plan_blocks(str(img), tmp_path / "o.zarr", block_shape=(8, 48, 48), backend="cellpose",
                                backend_options={"pretrained_model": str(model), "diameter": 20})
    assert plan.backend["anisotropy"] == 4.0
    assert plan.halo == (5, 20, 20)
    assert plan.rule == "match"


def test_block_shape_auto(model, tmp_path):
    img = save(tmp_path / "img.zarr", np.zeros((64, 512, 512), np.uint16))
    opts = {"pretrained_model": str(model), "diameter": 20}
    small = pystitch.plan_blocks(img, tmp_path / "a.zarr", block_shape="auto", memory_gb=3, backend="cellpose",
                                 backend_options=opts)
    big = pystitch.plan_blocks(img, tmp_path / "b.zarr", block_shape="auto", memory_gb=8, backend="cellpose",
                               backend_options=opts)
    assert np.prod(small.block_shape) < np.prod(big.block_shape)
    for plan, gb in ((small, 3), (big, 8)):
        ext = np.prod([b + 2 * h for b, h in zip(plan.block_shape, plan.halo)])
        assert 1.5 * 2 ** 30 + 1000 * ext <= gb * 1e9            # the memory model of the backend
        assert all(b % 16 == 0 or b == n for b, n in zip(plan.block_shape[1:], (512, 512)))
        assert all(b >= 2 * h for b, h in zip(plan.block_shape, plan.halo))
    with pytest.raises(InputError, match=r"Expected at least .* GB per segmentation task .* Got 1.0 GB"):
        pystitch.plan_blocks(img, tmp_path / "c.zarr", block_shape="auto", memory_gb=1, backend="cellpose",
                             backend_options=opts)


def test_errors(model, tmp_path):
    img = save(tmp_path / "img.zarr", np.zeros((64, 64), np.uint16))
    with pytest.raises(InputNotFoundError, match=r"^Expected --pretrained-model to be a Cellpose model file\. "
                                                 r"Got no such file: .*nope.pth instead\.$"):
        pystitch.plan_blocks(img, tmp_path / "o.zarr", block_shape=32, backend="cellpose",
                             backend_options={"pretrained_model": str(tmp_path / "nope.pth")})
    with pytest.raises(InputError, match=r"^Expected --diameter to be a number > 0 .* Got -3 instead\.$"):
        pystitch.plan_blocks(img, tmp_path / "o.zarr", block_shape=32, backend="cellpose",
                             backend_options={"pretrained_model": str(model), "diameter": -3})
    not_a_model = tmp_path / "notes.pth"
    not_a_model.write_text("hello")
    # seen at plan time now: the file is read without torch, before any block
    with pytest.raises(InputError, match=r"^Expected --pretrained-model to be a Cellpose model file .*notes.pth"):
        pystitch.plan_blocks(img, tmp_path / "o.zarr", block_shape=32, halo=4, backend="cellpose",
                             skip_empty=False, backend_options={"pretrained_model": str(not_a_model)})
    ok = pystitch.plan_blocks(img, tmp_path / "p.zarr", block_shape=32, halo=4, backend="cellpose", skip_empty=False,
                              backend_options={"pretrained_model": str(model)})
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="Expected device 'cuda' to be available"):
            pystitch.segment_blocks(ok, [0], device="cuda")
        assert pystitch.segment_blocks(ok, [0], device="cuda", allow_cpu_fallback=True) == [0]
    assert not (tmp_path / "o.zarr").exists()


# ---------------------------------------------------------------- Cellpose's defaults


def test_diameter_omitted_means_the_models_own_as_in_cellpose(model, tmp_path, caplog):
    """Without --diameter pystitch segments as plain Cellpose does with its
    defaults (CellposeModel.eval: diameter=None, percentiles 1 and 99): here an
    image of one block gives Cellpose's labels exactly, and the plan, the log
    and the summary say which diameter that is."""
    from cellpose import models

    img, _ = tiny.synthetic_blobs((160, 160), seed=8, fill=0.4, touching=0.5)
    img = (img * 1000).astype(np.uint16)
    path = save(tmp_path / "img.zarr", img)
    own = float(torch_load(model)["diam_labels"][0])
    with caplog.at_level(logging.INFO, logger="pystitch"):
        s = pystitch.run(path, tmp_path / "out.zarr", backend="cellpose", pretrained_model=str(model),
                         block_shape=160, progress=False, pictures=False, device="cpu")
    assert s["backend"]["diameter"] is None
    assert s["backend"]["model_diameter"] == pytest.approx(own)
    assert s["backend"]["diameter_source"].startswith("the model's own: diam_labels of ")
    assert s["halo"] == [math.ceil(own)] * 2
    assert f"no --diameter: segmenting at the model's own scale, as cellpose does: {own:.4g} px" in caplog.text
    plain = models.CellposeModel(gpu=False, pretrained_model=str(model)).eval(img, channels=[0, 0])[0]
    assert plain.max() > 10
    assert_partition_equivalent(load(tmp_path / "out.zarr"), plain)


def test_diameter_auto_is_cellposes_size_estimation(model, tmp_path, caplog):
    """--diameter auto (or 0) runs Cellpose 3's size model once, at plan time:
    the diameter it finds is Cellpose's own estimate, drives the halo and is
    recorded; images of larger objects get a larger diameter."""
    from cellpose import models

    size_model = tiny.tiny_size_model_path()
    found = {}
    for scale, (lo, hi) in (("small", (14.0, 22.0)), ("large", (26.0, 40.0))):
        img, _ = tiny.synthetic_blobs((320, 320), seed=9, diameter_range=(lo, hi))
        img = (img * 1000).astype(np.uint16)
        path = save(tmp_path / f"{scale}.zarr", img)
        with caplog.at_level(logging.INFO, logger="pystitch"):
            plan = pystitch.plan_blocks(path, tmp_path / f"{scale}-out.zarr", block_shape=160, backend="cellpose",
                                        backend_options={"pretrained_model": str(model), "diameter": "auto"})
        d = plan.backend["diameter"]
        assert lo <= d <= hi, (scale, d)
        assert plan.backend["diameter_source"] == \
            "estimated by cellpose's size model on the central 320x320 region at 0,0"
        assert plan.halo == (math.ceil(d),) * 2
        assert f"--diameter auto: diameter {d:.4g} px" in caplog.text
        # Cellpose's own estimate: its SizeModel on the same image, normalised by its defaults
        cp_model = models.CellposeModel(gpu=False, pretrained_model=str(model))
        ref, _ = models.SizeModel(cp_model=cp_model, pretrained_size=str(size_model)).eval(img, channels=[0, 0])
        assert d == pytest.approx(float(ref), rel=1e-6)
        found[scale] = d
    assert found["large"] > 1.5 * found["small"]
    plan0 = pystitch.plan_blocks(tmp_path / "small.zarr", tmp_path / "zero.zarr", block_shape=160, backend="cellpose",
                                 backend_options={"pretrained_model": str(model), "diameter": 0})
    assert plan0.backend["diameter"] == found["small"]


def test_diameter_defaults_that_cannot_be_met_are_one_line_errors(model, tmp_path, monkeypatch):
    img = save(tmp_path / "img.zarr", np.zeros((64, 64), np.uint16))
    vol = save(tmp_path / "vol.zarr", np.zeros((8, 64, 64), np.uint16))
    bare = tmp_path / "bare.pth"                      # the tiny model without its size model
    bare.write_bytes(model.read_bytes())
    cases = [
        (img, {"pretrained_model": str(bare), "diameter": "auto"},
         r"^Expected a size model bare.pth_size.npy next to .*bare.pth for --diameter auto .* Got no such file"),
        (vol, {"pretrained_model": str(model), "diameter": "auto"},
         r"^Expected a 2-D image for --diameter auto .* Got a 3-D image instead"),
        (img, {"model": "tissuenet_cp3", "diameter": 0},
         r"^Expected a model with a size model \(cyto, cyto2, cyto3, nuclei\) for --diameter auto\. "
         r"Got 'tissuenet_cp3'"),
        (img, {"model": "cyto3"},
         r"^Expected --diameter in pixels or --halo: .* the model's own diameter is the diam_labels of built-in "
         r"model 'cyto3', whose weights are not in .*empty-models yet .*\. Got neither instead\.$"),
    ]
    if "tissuenet_cp3" not in cellpose_names():
        cases.pop(2)
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path / "empty-models"))
    for image, options, message in cases:
        with pytest.raises(InputError, match=message) as info:
            pystitch.plan_blocks(image, tmp_path / "o.zarr", block_shape=32, backend="cellpose",
                                 backend_options=options)
        assert "\n" not in str(info.value)
    # with a halo, the built-in model's own diameter is left to cellpose at task time
    plan = pystitch.plan_blocks(img, tmp_path / "p.zarr", block_shape=32, halo=8, backend="cellpose",
                                backend_options={"model": "cyto3"})
    assert plan.backend["diameter"] is None and plan.backend["model_diameter"] is None
    assert not (tmp_path / "o.zarr").exists()


def cellpose_names() -> set[str]:
    from cellpose import models

    return set(models.MODEL_NAMES)


def torch_load(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
