"""The Cellpose adapter on a small real model trained offline (tests/support/tiny_cellpose.py).

The model is trained once per machine and cached (``$PYSTITCH_TEST_CACHE`` or
``~/.cache/pystitch/test-models``).  Tests that need cellpose are skipped only
when cellpose cannot be imported; the others run everywhere.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import pathlib
import re
import subprocess
import sys
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from pystitch.backends import cellpose as cp
from pystitch.errors import DeviceError, InputError, InputNotFoundError

REPO = pathlib.Path(__file__).resolve().parents[1]


import tiny_cellpose as tiny  # noqa: E402  (tests/support, on sys.path via conftest)

PARAMS = tiny.TrainingParams()
DIAMETER = PARAMS.diameter


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def tiny_model() -> Iterator[pathlib.Path]:
    pytest.importorskip("cellpose", reason="cellpose is not installed")
    import torch

    # one thread: on a busy 2-core machine two OpenMP threads wait on each
    # other and run 5-10x slower than one
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield tiny.tiny_model_path()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def make_segmenter(tiny_model: pathlib.Path) -> Callable[..., cp.CellposeSegmenter]:
    def make(**kwargs) -> cp.CellposeSegmenter:
        options = {"pretrained_model": tiny_model, "diameter": DIAMETER, "device": "cpu"}
        options.update(kwargs)
        with tiny.model_loading_context(PARAMS):
            return cp.CellposeSegmenter(**options)

    return make


@pytest.fixture(scope="session")
def segmenter_2d(make_segmenter) -> cp.CellposeSegmenter:
    return make_segmenter()


@pytest.fixture()
def no_model_construction(monkeypatch) -> Iterator[None]:
    """Fail if cellpose is asked to build a model (and so possibly to download one)."""
    models = pytest.importorskip("cellpose.models")

    def refuse(*args, **kwargs):
        raise AssertionError("CellposeModel must not be constructed for invalid input")

    monkeypatch.setattr(models, "CellposeModel", refuse)
    yield


def _assert_labels(labels: np.ndarray, shape: tuple[int, ...]) -> None:
    assert labels.shape == shape
    assert labels.dtype == np.uint32
    ids = np.unique(labels)
    assert ids[0] == 0
    np.testing.assert_array_equal(ids[1:], np.arange(1, len(ids)))  # consecutive 1..n


# ---------------------------------------------------------------- segmentation


def test_2d_image_segments_to_the_true_objects(segmenter_2d) -> None:
    image, truth = tiny.synthetic_blobs((160, 160), seed=7001)
    labels = segmenter_2d(image)
    _assert_labels(labels, image.shape)
    tp, fp, fn = tiny.match_counts(truth, labels, 0.5)
    assert tp / (tp + fp + fn) >= 0.85, (tp, fp, fn)
    assert labels.max() >= 0.85 * truth.max()


def test_channel_first_block_gives_the_same_labels(make_segmenter, segmenter_2d) -> None:
    image, _ = tiny.synthetic_blobs((96, 96), seed=7002)
    channel_first = make_segmenter(channel_axis=0, channels=(1, 0))
    np.testing.assert_array_equal(channel_first(image[None]), segmenter_2d(image))


def test_3d_volume_do_3D_and_plane_stitching(make_segmenter) -> None:
    volume, truth = tiny.synthetic_blobs((24, 64, 64), fill=0.2, touching=0.0, seed=7003)
    assert truth.max() >= 3
    for options in ({"do_3D": True}, {"stitch_threshold": 0.3}):
        labels = make_segmenter(**options)(volume)
        _assert_labels(labels, volume.shape)
        tp, fp, fn = tiny.match_counts(truth, labels, 0.5)
        assert tp >= 0.8 * truth.max() and fp <= max(1, 0.2 * truth.max()), (options, tp, fp, fn)


def test_a_single_plane_3d_block_is_segmented_as_2d(segmenter_2d, make_segmenter) -> None:
    image, _ = tiny.synthetic_blobs((96, 96), seed=7004)
    stitched = make_segmenter(stitch_threshold=0.3)
    np.testing.assert_array_equal(stitched(image[None]), segmenter_2d(image)[None])


# ---------------------------------------------------------------- normalisation


def _half_empty_image(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Objects in the left half, a faintly textured background in the right half."""
    from scipy import ndimage

    image, truth = tiny.synthetic_blobs((96, 192), seed=seed)
    rng = np.random.default_rng(seed)
    texture = ndimage.gaussian_filter(rng.standard_normal(image.shape), 3.0).astype(np.float32)
    background = 0.1 + 0.02 * texture / texture.std() + 0.01 * rng.standard_normal(image.shape).astype(np.float32)
    right = np.s_[:, 96:]
    image[right] = background[right]
    truth[right] = 0
    return image, truth


def test_global_lowhigh_normalises_every_block_alike(make_segmenter) -> None:
    image, truth = _half_empty_image(seed=7005)
    lo, hi = (float(v) for v in np.percentile(image, [1.0, 99.0]))  # once, for the whole image
    global_norm = make_segmenter(lowhigh=[(lo, hi)])
    per_block = make_segmenter()

    whole = global_norm(image)
    assert tiny.average_precision(truth, whole, 0.5) >= 0.85
    empty_block = image[:, 104:]  # background only
    # normalised like the whole image, the background block stays empty ...
    assert global_norm(empty_block).max() == 0
    # ... while its own percentiles stretch the faint texture into "objects"
    assert per_block(empty_block).max() > 0


@pytest.mark.parametrize("form", ["2-D", "channel-first", "single plane", "3-D planes"])
def test_cellpose_never_changes_the_callers_block(make_segmenter, form) -> None:
    """Cellpose 4 normalises a float32 input in place: the adapter hands it a
    copy, so the caller's block (a view of a cached chunk, say) keeps its values
    and a second block over the same data segments alike."""
    image, _ = tiny.synthetic_blobs((96, 96), seed=7011)
    if form == "3-D planes":   # planes the 2-D forms find objects in, whichever build of the model
        image = np.stack([image, image[::-1], image[:, ::-1]])
    lo, hi = (float(v) for v in np.percentile(image, [1.0, 99.0]))
    options: dict = {"lowhigh": [(lo, hi)]}    # global bounds: normalising twice is not a no-op
    block = image
    if form == "channel-first":
        options.update(channel_axis=0, channels=(1, 0))
        block = image[None]
    elif form == "single plane":
        options.update(stitch_threshold=0.3)
        block = image[None]
    elif form == "3-D planes":
        options.update(stitch_threshold=0.3)
    segmenter = make_segmenter(**options)
    original = block.copy()
    first = segmenter(block)
    assert first.max() > 0
    np.testing.assert_array_equal(block, original)
    np.testing.assert_array_equal(segmenter(block), first)


def test_cellpose_module_defaults_do_not_leak_into_normalisation(segmenter_2d, monkeypatch) -> None:
    # cellpose mutates its module-level defaults when given normalize=<bool>;
    # the adapter passes every key, so such leftovers change nothing
    models = pytest.importorskip("cellpose.models")
    image, _ = tiny.synthetic_blobs((96, 96), seed=7006)
    expected = segmenter_2d(image)
    assert expected.max() > 0
    monkeypatch.setitem(models.normalize_default, "invert", True)
    monkeypatch.setitem(models.normalize_default, "normalize", False)
    monkeypatch.setitem(models.normalize_default, "percentile", [40.0, 60.0])
    np.testing.assert_array_equal(segmenter_2d(image), expected)


def test_lowhigh_must_match_the_channels(make_segmenter) -> None:
    segmenter = make_segmenter(lowhigh=[(0.0, 1.0), (0.0, 1.0)])
    with pytest.raises(InputError, match="one \\(low, high\\) pair per input channel"):
        segmenter(np.zeros((32, 32), np.float32))


# ---------------------------------------------------------------- errors


def test_missing_model_path_is_reported_before_cellpose_sees_it(tmp_path, no_model_construction) -> None:
    missing = tmp_path / "no-such-model.pth"
    with pytest.raises(InputNotFoundError, match="no-such-model.pth") as info:
        cp.CellposeSegmenter(pretrained_model=missing, device="cpu")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(InputError, match="directory"):
        cp.CellposeSegmenter(pretrained_model=tmp_path, device="cpu")


def test_a_file_that_is_no_model_is_an_input_error(tmp_path, no_model_construction) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    with pytest.raises(InputError, match=r"^Expected pretrained_model to be a Cellpose model file .* Got .*notes.txt"):
        cp.CellposeSegmenter(pretrained_model=text, device="cpu")

    torch = pytest.importorskip("torch")
    other = tmp_path / "weights.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(InputError, match="weights.pth"):
        cp.CellposeSegmenter(pretrained_model=other, device="cpu")


def test_a_model_for_the_other_major_version_is_an_input_error(tmp_path, tiny_model, no_model_construction) -> None:
    torch = pytest.importorskip("torch")
    state = torch.load(tiny_model, map_location="cpu", weights_only=True)
    installed = int(cp.cellpose_version().split(".")[0])
    if installed == 3:  # make it look like CPSAM: CP4 files carry the W2 readout
        state = {"W2": torch.zeros(1), **{f"encoder.{k}": v for k, v in state.items()}}
    else:  # make it look like CPnet
        state = {"downsample.down.res_down_0.conv.0.weight": torch.zeros(1), "output.2.weight": torch.zeros(3, 1)}
    other = tmp_path / "other-version.pth"
    torch.save(state, other)
    with pytest.raises(InputError) as info:
        cp.CellposeSegmenter(pretrained_model=other, device="cpu")
    message = str(info.value)
    assert "other-version.pth" in message and cp.cellpose_version() in message


def test_unknown_or_other_version_builtin_names_are_rejected(no_model_construction) -> None:
    installed = int(cp.cellpose_version().split(".")[0])
    with pytest.raises(InputError, match="no-such-model"):
        cp.CellposeSegmenter(model="no-such-model", device="cpu")
    other_name = "cpsam" if installed == 3 else "cyto3"
    with pytest.raises(InputError, match=other_name):
        cp.CellposeSegmenter(model=other_name, device="cpu")


@pytest.mark.parametrize("diameter", [0, -3.0, math.nan, math.inf, "big"])
def test_diameter_must_be_positive(tmp_path, diameter, no_model_construction) -> None:
    with pytest.raises(InputError, match="diameter"):
        cp.CellposeSegmenter(pretrained_model=tmp_path / "m.pth", diameter=diameter, device="cpu")


@pytest.mark.parametrize(
    "option",
    [
        {"stitch_threshold": 1.5},
        {"flow_threshold": -0.1},
        {"cellprob_threshold": 9.0},
        {"min_size": -1},
        {"batch_size": 0},
        {"channels": (1,)},
        {"channel_axis": 2},
        {"lowhigh": [(1.0, 1.0)]},
        {"anisotropy": 0},
        {"do_3D": True, "stitch_threshold": 0.3},
    ],
)
def test_invalid_options_are_rejected_before_loading(tmp_path, option, no_model_construction) -> None:
    with pytest.raises(InputError):
        cp.CellposeSegmenter(pretrained_model=tmp_path / "m.pth", device="cpu", **option)


def test_cuda_without_a_gpu_is_a_device_error(caplog, monkeypatch) -> None:
    pytest.importorskip("cellpose", reason="cellpose is not installed")
    import torch

    # the same answers on a machine with a GPU: torch sees none
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="cuda:1"):
        cp.resolve_device("cuda:1")
    with pytest.raises(DeviceError):
        cp.resolve_device("cuda")
    with caplog.at_level(logging.WARNING, logger=cp.__name__):
        assert cp.resolve_device("cuda", allow_cpu_fallback=True) == "cpu"
    assert "CPU" in caplog.text
    assert cp.resolve_device("auto") == "cpu"
    with pytest.raises(DeviceError, match="mps"):
        cp.resolve_device("mps")
    with pytest.raises(InputError, match="gpu0"):
        cp.resolve_device("gpu0")


def test_block_shape_errors(segmenter_2d) -> None:
    with pytest.raises(InputError, match="Expected a block of shape"):
        segmenter_2d(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(InputError, match="do_3D=True or stitch_threshold"):
        segmenter_2d(np.zeros((4, 32, 32), np.float32))


# ---------------------------------------------------------------- options: one place, one message style

#: one bad value per option (and the options that go together)
BAD_OPTIONS = [
    ("diameter", 0), ("diameter", -3.0), ("diameter", math.nan), ("diameter", math.inf), ("diameter", "big"),
    ("diameter", "auto"), ("do_3D", "maybe"), ("anisotropy", 0), ("anisotropy", "x"),
    ("stitch_threshold", 1.5), ("flow_threshold", -0.1), ("cellprob_threshold", 9.0), ("min_size", -1),
    ("min_size", 2.5), ("max_size_fraction", 2), ("niter", 0), ("batch_size", 0), ("batch_size", True),
    ("channels", (1,)), ("channels", "a,b"), ("channel_axis", 2), ("lowhigh", [(1.0, 1.0)]),
    ("percentile", (99, 1)), ("percentile", "5"), ("invert", "sometimes"), ("use_bfloat16", "x"),
]


@pytest.mark.parametrize(("option", "value"), BAD_OPTIONS)
def test_each_option_is_checked_in_one_place_with_one_message(tmp_path, option, value, no_model_construction) -> None:
    """check_settings is the one validator: the adapter reports its message
    unchanged, and a caller's flag spelling replaces the keyword."""
    with pytest.raises(InputError) as direct:
        cp.check_settings(**{option: value})
    message = str(direct.value)
    assert re.fullmatch(rf"Expected {option} .+\. Got .+ instead\b.*", message), message
    assert "\n" not in message and repr(value) in message
    with pytest.raises(InputError) as segmenter:
        cp.CellposeSegmenter(pretrained_model=tmp_path / "m.pth", device="cpu", **{option: value})
    assert str(segmenter.value) == message
    with pytest.raises(InputError) as flagged:
        cp.check_settings(lambda name: "--" + name.lower().replace("_", "-"), **{option: value})
    cli = "--" + option.lower().replace("_", "-")
    assert str(flagged.value) == message.replace(f"Expected {option} ", f"Expected {cli} ")


def test_options_that_exclude_each_other_and_text_values() -> None:
    with pytest.raises(InputError, match=r"^Expected either do_3D true or stitch_threshold > 0 .* Got both"):
        cp.check_settings(do_3D=True, stitch_threshold=0.3)
    with pytest.raises(InputError, match=r"^Expected exactly one of model .* and pretrained_model .* Got neither"):
        cp.check_model()
    # command-line text is read by the same validators
    assert cp.check_settings(diameter="17.5", channels="2,1", percentile="0.5,99.5", do_3D="false", min_size="20") == {
        "diameter": 17.5, "channels": (2, 1), "percentile": (0.5, 99.5), "do_3D": False, "min_size": 20}
    assert cp.check_settings(auto_diameter=True, diameter="auto")["diameter"] == cp.AUTO
    assert cp.check_settings(auto_diameter=True, diameter=0)["diameter"] == cp.AUTO


def test_defaults_are_cellposes() -> None:
    """The adapter's defaults are those of the installed cellpose's
    CellposeModel.eval, and its percentiles those of normalize_img."""
    models = pytest.importorskip("cellpose.models")
    from cellpose import transforms

    theirs = inspect.signature(models.CellposeModel.eval).parameters
    ours = inspect.signature(cp.CellposeSegmenter.__init__).parameters
    for name, value in cp.CELLPOSE_DEFAULTS.items():
        if name == "percentile":
            assert tuple(inspect.signature(transforms.normalize_img).parameters[name].default) == value
        else:
            assert theirs[name].default == value, name
        if name in ours and name != "percentile":
            assert ours[name].default == value, name


# ---------------------------------------------------------------- the model's own diameter, size estimation


def test_model_files_are_read_without_torch(tiny_model) -> None:
    torch = pytest.importorskip("torch")
    state = torch.load(tiny_model, map_location="cpu", weights_only=True)
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['cellpose'] = None\n"
        "import pystitch.backends.cellpose as m\n"
        f"f = m.inspect_model_file({str(tiny_model)!r})\n"
        "print(f.major, repr(f.diam_mean), repr(f.diam_labels))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    major, diam_mean, diam_labels = result.stdout.split()
    assert int(major) == int(cp.cellpose_version().split(".")[0])
    assert float(diam_mean) == float(state["diam_mean"][0]) and float(diam_labels) == float(state["diam_labels"][0])


def test_without_a_diameter_the_model_segments_at_its_own_scale(make_segmenter, tiny_model) -> None:
    """diameter=None is cellpose's own default: cellpose 3 rescales as for
    objects of the model's diam_labels, cellpose 4 does not rescale (as for 30 px)."""
    file = cp.inspect_model_file(tiny_model)
    own, _ = cp.model_diameter(file.major, file=file)
    assert own == (30.0 if file.major >= 4 else file.diam_labels)
    assert file.major >= 4 or own != file.diam_mean   # cellpose 3: the labels' diameter, not diam_mean
    image, _ = tiny.synthetic_blobs((96, 96), seed=7007)
    scales = {}
    for diameter in (None, own):
        segmenter = make_segmenter(diameter=diameter)
        assert segmenter.model_diameter == pytest.approx(own, rel=1e-6)
        run_net = segmenter._model._run_net

        def spy(*args, _run_net=run_net, _diameter=diameter, **kwargs):
            scales[_diameter] = float(kwargs["rescale"])
            return _run_net(*args, **kwargs)

        segmenter._model._run_net = spy
        segmenter(image)
    assert scales[None] == pytest.approx(scales[own], rel=1e-6)
    assert scales[None] == (1.0 if file.major >= 4 else pytest.approx(file.diam_mean / file.diam_labels, rel=1e-6))


def test_size_estimation_is_cellpose_3s_and_refused_by_cellpose_4(make_segmenter, tiny_model, tmp_path) -> None:
    file = cp.inspect_model_file(tiny_model)
    if file.major >= 4:
        with pytest.raises(InputError, match=r"^Expected diameter > 0 or omitted with cellpose 4\. .*no size"):
            make_segmenter(diameter=None).estimate_diameter(np.zeros((64, 64), np.float32))
        return
    alone = tmp_path / tiny_model.name          # the cache may hold its size model already
    alone.write_bytes(tiny_model.read_bytes())
    with pytest.raises(InputError, match=r"Expected a size model .*_size.npy next to .* Got no such file"):
        cp.size_model_file(None, cp.inspect_model_file(alone), 3)
    size = tiny.tiny_size_model_path()          # trained once, like the model
    assert size == pathlib.Path(f"{tiny_model}_size.npy")
    segmenter = make_segmenter(diameter=None)
    small, truth = tiny.synthetic_blobs((256, 256), seed=7008)
    big, big_truth = tiny.synthetic_blobs((384, 384), diameter_range=(24.0, 36.0), seed=7009)
    for image, lo, hi in ((small, 14.0, 22.0), (big, 24.0, 36.0)):
        estimate = segmenter.estimate_diameter(image)
        assert lo <= estimate <= hi, (estimate, lo, hi)
    with pytest.raises(InputError, match=r"Expected a 2-D image for diameter auto"):
        segmenter.estimate_diameter(np.zeros((4, 64, 64), np.float32))
    with pytest.raises(InputError, match=r"Expected a model with a size model .* Got 'tissuenet_cp3'"):
        cp.size_model_file("tissuenet_cp3", None, 3)


def test_builtin_model_diameter_comes_from_cached_weights(tmp_path, monkeypatch, tiny_model) -> None:
    """A built-in name's own diameter is read from its weights when cellpose has
    them (it reads them there too), and is unknown, said so, when it has not."""
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    assert cp.model_diameter(3, name="cyto3") == (None, (
        f"the diam_labels of built-in model 'cyto3', whose weights are not in {tmp_path} yet "
        "(cellpose downloads them on first use)"))
    file = cp.inspect_model_file(tiny_model)
    if file.major == 3:
        (tmp_path / "nucleitorch_0").write_bytes(tiny_model.read_bytes())
        assert cp.model_diameter(3, name="nuclei")[0] == file.diam_labels
    assert cp.model_diameter(4, name="cpsam")[0] == 30.0


# ---------------------------------------------------------------- reproducible test models and inference


def test_inference_is_deterministic(make_segmenter, segmenter_2d) -> None:
    image, _ = tiny.synthetic_blobs((160, 160), seed=7010)
    first = segmenter_2d(image)
    assert first.max() > 10
    np.testing.assert_array_equal(segmenter_2d(image), first)
    np.testing.assert_array_equal(make_segmenter()(image), first)   # a second model from the same file


def _x86_64_with_avx2() -> bool:
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        return " avx2 " in " " + pathlib.Path("/proc/cpuinfo").read_text().replace("\t", " ").replace("\n", " ") + " "
    except OSError:
        return False


def test_tiny_model_is_a_known_build(tiny_model) -> None:
    """Training is pinned (seeds, one thread, deterministic algorithms, fixed
    CPU code paths: tests/support/tiny_cellpose.py), so an x86-64 machine with
    AVX2 builds the reference model the F1 bounds of the tests were measured
    on, or another build known to keep them (another CPU vendor)."""
    if not _x86_64_with_avx2():
        pytest.skip("the known builds are of x86-64 CPUs with AVX2")
    major = int(cp.cellpose_version().split(".")[0])
    meta = json.loads(pathlib.Path(f"{tiny_model}.json").read_text())
    assert meta["sha256"] == tiny.sha256(tiny_model)
    known = {tiny.REFERENCE_SHA256[major]: "reference", **tiny.OTHER_BUILDS[major]}
    assert meta["sha256"] in known, (
        f"this machine trained a tiny model that is not a known build (versions {meta['versions']}): the "
        "bounds of the Cellpose tests were measured on the known builds (tiny_cellpose.REFERENCE_SHA256, "
        "OTHER_BUILDS)")


# ---------------------------------------------------------------- description and helpers


def test_info_describes_the_model(segmenter_2d, tiny_model) -> None:
    info = segmenter_2d.info()
    assert info["cellpose_version"] == cp.cellpose_version()
    assert info["device"] == "cpu"
    assert info["pretrained_model"] == str(tiny_model.resolve())
    assert info["model"] is None
    assert info["diameter"] == DIAMETER
    assert info["normalization"] == "per-block percentile"


def test_default_halo_covers_a_diameter_per_axis() -> None:
    assert cp.default_halo(17.2, None, 2) == (18, 18)
    assert cp.default_halo(20.0, 2.0, 3) == (10, 20, 20)
    assert cp.default_halo(3.0, 10.0, 3) == (1, 3, 3)
    with pytest.raises(InputError, match="diameter"):
        cp.default_halo(0.0, None, 2)


def test_the_module_imports_without_cellpose_or_torch() -> None:
    code = (
        "import sys; sys.modules['cellpose'] = None; sys.modules['torch'] = None\n"
        "import pystitch.backends.cellpose as m\n"
        "assert m.default_halo(10.0, None, 2) == (10, 10)\n"
        "try:\n"
        "    m.resolve_device('cuda')\n"
        "except m.InputError as exc:\n"
        "    print('input error:', exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "torch" in result.stdout
