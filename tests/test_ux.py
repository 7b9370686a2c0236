"""What a microscopist meets around the results: live progress, a CLI without
surprises, the API taking arrays, metadata carried through, a report that
stands on its own, quick start-up."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from scipy import ndimage

import pystitch
from helpers import load, save
from pystitch.example import blobs
from pystitch.report.regions import read_csv_table

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SEG = str(Path(__file__).parent / "segmenters.py")
PROGRESS = re.compile(r"pystitch\.progress: ([\w-]+): (\d+)/(\d+) blocks \((\d+)%\).*ETA")


def sh(*args, env=None, cwd=None, check=True) -> subprocess.CompletedProcess:
    """A console script of this environment, as a user (or a workflow task) runs it: no terminal."""
    full = dict(os.environ, **(env or {}))
    res = subprocess.run([str(a) for a in args], env=full, cwd=cwd, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"{args} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def progress_records(stderr: str) -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = {}
    for m in PROGRESS.finditer(stderr):
        out.setdefault(m.group(1), []).append((int(m.group(2)), int(m.group(3))))
    return out


# --------------------------------------------------------------------------- 1. live progress


def test_two_workers_report_progress_per_block_and_their_block_lines(tmp_path):
    """Off a terminal (a SLURM log), a 2-worker run logs one-line progress
    records that count blocks as workers finish them (not whole tasks), the
    workers' per-block lines reach the log at --verbose, and the last line
    gives the wall time and the objects."""
    img = save(tmp_path / "img.zarr", blobs((16, 64, 64), seed=2, sigma=2.0, fraction=0.2))
    res = sh(VENV_BIN / "pystitch", "run", img, tmp_path / "out.zarr", "--block-shape", "8,16,16", "--halo", "1",
             "--threshold", "500", "--workers", "2", "--verbose", env={"PYSTITCH_PROGRESS_SECONDS": "0"})
    records = progress_records(res.stderr)
    assert set(records) >= {"segment", "face-pairs", "apply-lut"}, res.stderr[-3000:]
    seg = records["segment"]
    assert {total for _, total in seg} == {32}                      # 2 x 4 x 4 blocks
    done = [d for d, _ in seg]
    assert done == sorted(done) and done[-1] == 32
    # a task is a row of 4 blocks: counts between whole tasks come from the workers' reports per block
    assert any(d % 4 for d in done) and len(set(done)) >= 16, done
    for step in ("face-pairs", "apply-lut"):
        assert records[step][-1][0] == records[step][-1][1]
    # the workers' per-block lines (DEBUG, in the worker processes) reach this log
    assert len(re.findall(r"DEBUG pystitch\.steps\.segment_block: segmented block", res.stderr)) == 32
    assert "DEBUG zarr" not in res.stderr            # --verbose is pystitch's detail, not every library's
    assert "2 worker processes (given)" in res.stderr
    last = [line for line in res.stderr.splitlines() if "pystitch.runner" in line][-1]
    objects = int(load(tmp_path / "out.zarr").max())
    assert re.search(rf"done in [\d.:]+( s)?: {objects} objects in ", last), last


def test_step_clis_log_progress_for_a_workflow_task_log(tmp_path):
    """The step CLIs as Nextflow runs them (stderr kept in .command.err): a
    progress record in blocks, ending at 100 %."""
    img = save(tmp_path / "img.zarr", blobs((16, 64, 64), seed=2, sigma=2.0, fraction=0.2))
    plan = sh(VENV_BIN / "plan-blocks", img, tmp_path / "o.zarr", "--block-shape", "8,16,16", "--halo", "1",
              "--threshold", "500").stdout.strip()
    res = sh(VENV_BIN / "segment-block", plan, "--blocks", "0-9")
    assert re.search(r"pystitch\.progress: segment: 10/10 blocks \(100%\)", res.stderr), res.stderr
    sh(VENV_BIN / "segment-block", plan, "--blocks", "10-31")
    res = sh(VENV_BIN / "face-pairs", plan, "--blocks", "all")
    assert re.search(r"face-pairs: 32/32 blocks \(100%\)", res.stderr), res.stderr


def test_api_draws_no_bar_off_a_terminal(tmp_path, capsys, caplog):
    """pystitch.run checks isatty itself: captured stderr gets no bar, the log gets records."""
    import logging

    img = save(tmp_path / "img.zarr", blobs((16, 48, 48), seed=2, sigma=2.0, fraction=0.2))
    with caplog.at_level(logging.INFO, logger="pystitch"):
        pystitch.run(img, tmp_path / "out.zarr", block_shape=(8, 16, 16), halo=1, threshold=500, workers=1,
                     progress=True, pictures=False)
    err = capsys.readouterr().err
    assert "\r" not in err and "it/s" not in err and "block/s" not in err, err[-500:]
    assert any(r.name == "pystitch.progress" and "segment: 18/18 blocks" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- 2. a CLI without surprises


def _plan_record(shape, block, halo, backend: dict) -> "pystitch.Plan":
    return pystitch.Plan(image=None, shape=shape, dtype="uint16", axes="zyx"[-len(shape):], block_shape=block,
                         halo=halo, backend=backend, rule="exact", work_dir="w", output="o", report_dir="r")


def test_workers_auto_is_bounded_by_cores_memory_and_tasks():
    from pystitch.runner import available_memory, choose_workers, usable_cores

    threshold = {"name": "threshold", "threshold": 500.0, "sigma": [], "connectivity": 1, "truncate": 4.0}
    small = _plan_record((64, 256, 256), (32, 64, 64), (2, 4, 4), threshold)
    n, why = choose_workers("auto", small, tasks=100)
    assert n == max(1, min(usable_cores(), available_memory() // (128 * 2 ** 20 + 80 * 36 * 72 * 72
                                                                    + 256 * 2 ** 20)))
    assert why.startswith("auto: ") and "cores" in why and "GiB available" in why
    assert choose_workers("auto", small, tasks=1)[0] == 1               # never more workers than tasks
    assert choose_workers(3, small, tasks=1) == (3, "given")
    # blocks whose segmentation needs more than this machine has: one worker
    huge = _plan_record((4096, 4096, 4096), (2048, 2048, 2048), (8, 8, 8), threshold)
    assert choose_workers("auto", huge, tasks=8)[0] == 1
    # cellpose: its memory model (1.5 GiB + ~1000 bytes per voxel in 3-D) bounds the count
    cellpose = {"name": "cellpose", "model": "cyto3", "pretrained_model": None, "diameter": 17.0, "do_3D": True,
                "anisotropy": 1.0, "stitch_threshold": 0.0, "flow_threshold": 0.4, "cellprob_threshold": 0.0,
                "min_size": 15, "max_size_fraction": 0.4, "niter": None, "batch_size": 8, "channels": None,
                "invert": False, "normalize": "global", "percentile": [1.0, 99.0], "skip_below": None,
                "lowhigh": [[0.0, 1.0]], "n_channels": 1, "ndim": 3}
    big = _plan_record((256, 1024, 1024), (128, 512, 512), (16, 32, 32), cellpose)
    per_worker = int(1.5 * 2 ** 30) + 1000 * 160 * 576 * 576 + 256 * 2 ** 20
    assert choose_workers("auto", big, tasks=100, device="cpu")[0] == max(
        1, min(usable_cores(), available_memory() // per_worker))


def test_workers_default_is_auto_and_the_count_is_logged():
    from pystitch.params import for_command

    for command in ("run", "plan-blocks"):
        workers = next(p for p in for_command(command) if p.name == "workers")
        assert workers.default == "auto" and workers.parse("auto") == "auto" and workers.parse("3") == 3
    assert "--workers N|auto" in sh(VENV_BIN / "pystitch", "run", "--help").stdout


def test_a_script_without_a_main_guard_can_use_workers(tmp_path):
    """Worker processes do not run the caller's script again."""
    img = save(tmp_path / "img.zarr", blobs((16, 48, 48), seed=2, sigma=2.0, fraction=0.2))
    script = tmp_path / "analysis.py"
    script.write_text(
        "import pystitch\n"
        f"s = pystitch.run({img!r}, {str(tmp_path / 'out.zarr')!r}, block_shape=(8, 16, 16), halo=1,\n"
        "                 threshold=500, workers=2, pictures=False)\n"
        "print('objects', s['objects'], s['workers'])\n")
    res = sh(sys.executable, script, env={"PYTHONPATH": os.pathsep.join(sys.path)})
    assert res.stdout.count("objects") == 1 and res.stdout.split()[-1] == "2", res.stdout + res.stderr


# --------------------------------------------------------------------------- 3. arrays in, arrays out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    image = blobs((16, 48, 48), seed=7, sigma=2.0, fraction=0.2)
    path = str(d / "img.zarr")
    zarr.create_array(path, shape=image.shape, dtype=image.dtype, chunks=(8, 16, 16))[:] = image
    pystitch.run(path, d / "out.zarr", block_shape=(8, 16, 16), halo=1, threshold=500, workers=1, pictures=False)
    return image, path, load(d / "out.zarr"), (d / "out_report" / "regions.csv").read_bytes()


@pytest.mark.parametrize("kind, workers", [("numpy", 1), ("numpy", 2), ("dask", 2), ("zarr-memory", 1),
                                           ("zarr-local", 2)])
def test_array_inputs_equal_the_path_route(reference, tmp_path, kind, workers, caplog):
    import logging

    image, path, expected, regions = reference
    if kind == "numpy":
        given = image
    elif kind == "dask":
        import dask.array as da

        given = da.from_array(image, chunks=(5, 20, 20))   # chunks unlike the blocks
    elif kind == "zarr-memory":
        given = zarr.create_array(store=zarr.storage.MemoryStore(), shape=image.shape, dtype=image.dtype,
                                  chunks=(8, 16, 16))
        given[:] = image
    else:
        given = zarr.open_array(path, mode="r")
    with caplog.at_level(logging.INFO, logger="pystitch"):
        summary = pystitch.run(given, tmp_path / "out.zarr", block_shape=(8, 16, 16), halo=1, threshold=500,
                               workers=workers, pictures=False)
    np.testing.assert_array_equal(load(tmp_path / "out.zarr"), expected)
    assert (tmp_path / "out_report" / "regions.csv").read_bytes() == regions
    copied = any("copied the in-memory image" in r.getMessage() for r in caplog.records)
    if kind == "zarr-local":
        assert summary["image"] == path and not copied       # read in place, by path: a plan like any other
    else:
        assert summary["image"].startswith("memory://") and copied == (workers > 1)
    assert not (tmp_path / "out_work").exists()            # the copy went with the work directory


def test_in_memory_identity_is_the_content(tmp_path):
    image = blobs((16, 48, 48), seed=7, sigma=2.0, fraction=0.2)
    kw = dict(block_shape=(8, 16, 16), halo=1, threshold=500, workers=1, pictures=False)
    a = pystitch.run(image, tmp_path / "a.zarr", **kw)
    b = pystitch.run(image.copy(), tmp_path / "b.zarr", **kw)
    changed = image.copy()
    changed[0, 0, 0] += 1
    c = pystitch.run(changed, tmp_path / "c.zarr", **kw)
    assert a["plan_hash"] == b["plan_hash"] != c["plan_hash"]      # resumable: same content, same plan
    assert a["image"] == b["image"] and a["image"].startswith("memory://sha256-")


def test_a_step_cli_cannot_read_another_process_memory(tmp_path):
    image = blobs((16, 48, 48), seed=7, sigma=2.0, fraction=0.2)
    pystitch.run(image, tmp_path / "o.zarr", block_shape=(8, 16, 16), halo=1, threshold=500, workers=1,
                 pictures=False, keep_work=True)
    res = sh(VENV_BIN / "segment-block", tmp_path / "o_work" / "plan.json", "--blocks", "0", check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "in-memory array" in res.stderr


def test_segment_returns_a_zarr_array_or_writes_a_path(reference, tmp_path):
    image, path, expected, _ = reference
    labels = pystitch.segment(image, block_shape=(8, 16, 16), halo=1, threshold=500, workers=1)
    assert isinstance(labels, zarr.Array) and isinstance(labels.store, zarr.storage.MemoryStore)
    np.testing.assert_array_equal(labels[:], expected)
    assert labels.attrs["pystitch"]["objects"] == expected.max()
    written = pystitch.segment(path, tmp_path / "l.zarr", block_shape=(8, 16, 16), halo=1, threshold=500,
                               workers=1, pictures=False)
    np.testing.assert_array_equal(written[:], expected)
    assert Path(str(written.store.root)) == tmp_path / "l.zarr"


# --------------------------------------------------------------------------- 4. metadata in, metadata out


def _validate_labels(path: Path, version: str = "0.4"):
    """ome-zarr-models' validation of a label image (raises on invalid metadata)."""
    if version == "0.4":
        from ome_zarr_models.v04.image_label import ImageLabel
    else:
        from ome_zarr_models.v05.image_label import ImageLabel
    return ImageLabel.from_zarr(zarr.open_group(str(path), mode="r"))


def _ome_image(path: Path, levels: list[np.ndarray], transforms: list[list[dict]], zarr_format: int = 2) -> str:
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    for k, data in enumerate(levels):
        root.create_array(str(k), shape=data.shape, dtype=data.dtype, chunks=(8, 16, 16))[:] = data
    root.attrs["multiscales"] = [{
        "version": "0.4", "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
        "datasets": [{"path": str(k), "coordinateTransformations": t} for k, t in enumerate(transforms)]}]
    return str(path)


@pytest.mark.parametrize("level", [0, 1])
def test_translation_and_scale_round_trip(tmp_path, level):
    """The chosen level's scale and translation go to the labels (every
    pyramid level) and to the regions table's physical columns; pystitch reads
    them back from the labels; ome-zarr-models validates the output."""
    from pystitch.storage.images import open_image

    full = blobs((16, 96, 96), seed=3, sigma=2.0, fraction=0.2)
    t0, t1 = [100.0, -7.5, 20.0], [100.0, -7.25, 20.25]        # level 1 halves y, x: its voxel 0 moves by half
    img = _ome_image(tmp_path / "img.zarr", [full, full[:, ::2, ::2]],
                     [[{"type": "scale", "scale": [2.0, 0.5, 0.5]}, {"type": "translation", "translation": t0}],
                      [{"type": "scale", "scale": [2.0, 1.0, 1.0]}, {"type": "translation", "translation": t1}]])
    scale, shift = ([2.0, 0.5, 0.5], t0) if level == 0 else ([2.0, 1.0, 1.0], t1)
    out = tmp_path / "labels.ome.zarr"
    summary = pystitch.run(img, out, level=level, block_shape=(8, 16, 16), halo=1, threshold=500, workers=1,
                           pictures=False, pyramid_levels=2)
    model = _validate_labels(out)
    datasets = model.attributes.multiscales[0].datasets
    for k, ds in enumerate(datasets):
        s, t = ds.coordinateTransformations
        factor = summary["plan"]["pyramid"][k]
        assert s.scale == [v * f for v, f in zip(scale, factor)] and t.translation == shift
    back = open_image(str(out))
    assert back.voxel_size == tuple(scale) and back.translation == tuple(shift) and back.unit == "micrometer"
    labels = load(out)
    table = read_csv_table(tmp_path / "labels_report" / "regions.csv")
    n = int(labels.max())
    com = np.array(ndimage.center_of_mass(np.ones_like(labels), labels, np.arange(1, n + 1)))
    boxes = ndimage.find_objects(labels)
    for i, ax in enumerate("zyx"):
        np.testing.assert_allclose(table[f"centroid_{ax}_physical"], com[:, i] * scale[i] + shift[i], atol=1e-9)
        np.testing.assert_allclose(table[f"{ax}_min_physical"], [b[i].start * scale[i] + shift[i] for b in boxes])
        np.testing.assert_allclose(table[f"{ax}_max_physical"], [b[i].stop * scale[i] + shift[i] for b in boxes])
    np.testing.assert_allclose(table["volume_physical"], table["voxels"] * np.prod(scale))
    assert set(table["unit"]) == {"micrometer"}


def test_voxel_size_and_unit_for_an_image_without_metadata(tmp_path):
    img = save(tmp_path / "img.zarr", blobs((16, 48, 48), seed=2, sigma=2.0, fraction=0.2))
    res = sh(VENV_BIN / "pystitch", "run", img, tmp_path / "out.zarr", "--block-shape", "8,16,16", "--halo", "1",
             "--threshold", "500", "--voxel-size", "3,0.25,0.25", "--unit", "nanometer", "--nopictures")
    assert re.search(r"\d+ worker process(es)? \(auto: \d+ cores", res.stderr), res.stderr   # the default, logged
    model = _validate_labels(tmp_path / "out.zarr")
    ms = model.attributes.multiscales[0]
    assert [a.unit for a in ms.axes] == ["nanometer"] * 3
    assert ms.datasets[0].coordinateTransformations[0].scale == [3.0, 0.25, 0.25]
    table = read_csv_table(tmp_path / "out_report" / "regions.csv")
    np.testing.assert_allclose(table["volume_physical"], table["voxels"] * 3 * 0.25 * 0.25)
    assert set(table["unit"]) == {"nanometer"}
    with pytest.raises(pystitch.InputError, match="Expected --voxel-size with 3 values"):
        pystitch.run(img, tmp_path / "bad.zarr", block_shape=8, halo=1, threshold=500, voxel_size="1,2")
    assert not (tmp_path / "bad.zarr").exists()


@pytest.mark.parametrize("channels", [None, "0,1"])
def test_intensity_statistics_per_object_and_channel(tmp_path, channels):
    first = blobs((16, 48, 48), seed=4, sigma=2.0, fraction=0.2)
    second = blobs((16, 48, 48), seed=5, sigma=2.0, fraction=0.5).astype(np.uint16)
    if channels is None:
        img = save(tmp_path / "img.zarr", first)
        kw = dict(threshold=500)
    else:
        img = save(tmp_path / "img.zarr", np.stack([first, second]))
        kw = dict(channel_axis=0, channel=channels, backend="callable", function=f"{SEG}:first_channel_threshold",
                  rule="exact")
    pystitch.run(img, tmp_path / "out.zarr", block_shape=(8, 16, 16), halo=1, workers=2, pictures=False,
                 intensity_stats=True, **kw)
    labels = load(tmp_path / "out.zarr")
    table = read_csv_table(tmp_path / "out_report" / "regions.csv")
    index = np.arange(1, int(labels.max()) + 1)
    for name, data in ([("", first)] if channels is None else [("_c0", first), ("_c1", second)]):
        data = data.astype(np.float64)
        np.testing.assert_allclose(table[f"intensity_sum{name}"], ndimage.sum_labels(data, labels, index))
        np.testing.assert_allclose(table[f"intensity_max{name}"], ndimage.maximum(data, labels, index))
        np.testing.assert_allclose(table[f"intensity_mean{name}"], ndimage.mean(data, labels, index))


# --------------------------------------------------------------------------- 5. a report that stands on its own


def test_report_holds_every_setting_derived_value_and_the_run(tmp_path):
    img = save(tmp_path / "img.zarr", blobs((16, 64, 64), seed=9, sigma=2.0, fraction=0.2))
    s = pystitch.run(img, tmp_path / "out.zarr", block_shape=(8, 32, 32), halo=(1, 2, 2), threshold="otsu",
                     sigma=0.7, workers=2, voxel_size="2,0.5,0.5")
    md = (tmp_path / "out_report" / "summary.md").read_text()
    html = (tmp_path / "out_report" / "summary.html").read_text()
    otsu = s["stats"]["threshold"]
    for text in (md, re.sub(r"<[^>]+>", " | ", html)):
        assert f"{otsu:.12g} (computed from otsu)" in text                 # the derived value and how
        assert "0.7,0.7,0.7" in text and "threshold_sample_size" not in text
        assert "derived: threshold sample size" in text and re.search(r"workers\W+2 \(given\)", text)
        for step in ("plan", "segment", "face-pairs", "resolve", "apply-lut", "finalize", "total (wall time)"):
            assert re.search(rf"{re.escape(step)}\W+[\d.]+ s", text), step
        for name in ("pystitch", "numpy", "zarr", "python"):
            assert f"version: {name}" in text
        assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", text) and "CPUs" in text
    # the command that computes the same plan again, run: same hash, same labels
    command = re.search(r"```bash\n(.*)\n```", md).group(1)
    assert "--threshold otsu" in command and "--sigma 0.7,0.7,0.7" in command
    again = command.replace(str(tmp_path / "out.zarr"), str(tmp_path / "again.zarr")).split()
    sh(VENV_BIN / again[0], *again[1:], "--nopictures")
    assert json.loads((tmp_path / "again_report" / "summary.json").read_text())["plan_hash"] == s["plan_hash"]
    np.testing.assert_array_equal(load(tmp_path / "again.zarr"), load(tmp_path / "out.zarr"))


def test_report_of_a_callable_names_the_function_and_its_kwargs(tmp_path):
    image = blobs((16, 48, 48), seed=2, sigma=2.0, fraction=0.2)
    path = save(tmp_path / "img.zarr", image)
    pystitch.run(path, tmp_path / "out.zarr", block_shape=(8, 16, 16), halo=1, backend="callable",
                 function=f"{SEG}:counting", kwargs={"log": str(tmp_path / "calls.txt")}, workers=1,
                 pictures=False)
    md = (tmp_path / "out_report" / "summary.md").read_text()
    assert f"| backend: function | {SEG}:counting |" in md
    assert "| backend: kwargs | {\"log\":\"" in md and "--kwargs " in md


def test_pictures_have_scale_bars_axis_names_and_seam_crops_on_crossing_objects(tmp_path):
    import imagecodecs

    from pystitch.report.qc import STRIP

    img = save(tmp_path / "img.zarr", blobs((16, 128, 128), seed=6, sigma=3.0, fraction=0.25))
    s = pystitch.run(img, tmp_path / "out.zarr", block_shape=(8, 32, 32), halo=1, threshold=500, workers=1,
                     voxel_size="2,0.5,0.5")
    labels = load(tmp_path / "out.zarr")
    pics = s["report"]["pictures"]
    crops = [p for p in pics if p["file"].startswith("seam-")]
    assert len(crops) >= 3
    for p in pics:
        rgb = imagecodecs.png_decode((tmp_path / "out_report" / p["file"]).read_bytes())
        bar = p["scale_bar"]
        assert bar["unit"] == "µm" and bar["label"] == f"{bar['length']:g} µm" and bar["label"] in p["caption"]
        strip = rgb[-STRIP:]
        white_rows = (strip == 255).all(axis=-1).sum(axis=1)
        assert white_rows.max() >= bar["pixels"], p["file"]                 # the bar is drawn, that long
        assert len(p["axes"]) == 2 and all(a in "zyx" for a in p["axes"])
    for p in crops:
        region = tuple(slice(a, b) for a, b in p["region"])
        axis = "zyx".index(p["seam"]["axis"])
        at = p["seam"]["at"]
        # the object it is centred on is foreground on both sides of the seam, inside the crop
        before, after = [np.take(labels, i, axis=axis) for i in (at - 1, at)]
        sub = tuple(s for i, s in enumerate(region) if i != axis)
        assert (before[sub] == p["object"]).any() and (after[sub] == p["object_after"]).any()
        assert f"at {p['seam']['axis']} = {at}" in p["caption"] and re.search(r"plane [zyx] = \d+", p["caption"])


def test_flagged_seam_qc_states_the_remedy_with_numbers(tmp_path, caplog):
    """A segmenter that is wrong near the edge of what it sees, with a halo far
    below the objects' size: the warning names the halo to try, from the
    objects' extents in the regions table."""
    import logging

    truth = ndimage.label(blobs((24, 128, 128), seed=6, sigma=2.5, fraction=0.25) > 500)[0].astype(np.uint32)
    path = save(tmp_path / "truth.zarr", truth)
    with caplog.at_level(logging.WARNING, logger="pystitch"):
        s = pystitch.run(path, tmp_path / "out.zarr", block_shape=(8, 32, 32), halo=1, backend="callable",
                         function=f"{SEG}:border_dilating", rule="match", min_iou=0.9, workers=1, pictures=False)
    qc = s["seam_qc"]
    assert qc["flagged"]
    table = read_csv_table(tmp_path / "out_report" / "regions.csv")
    extent = [int(np.ceil(np.median(table[f"{a}_max"] - table[f"{a}_min"]))) for a in "zyx"]
    assert min(extent) > 1
    assert f"try --halo {','.join(map(str, extent))}" in qc["remedy"] or \
        (len(set(extent)) == 1 and f"try --halo {extent[0]}" in qc["remedy"])
    assert "halo 1 is below one object diameter" in qc["remedy"]
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "seam QC" in r.getMessage()]
    assert warning and qc["remedy"] in warning[0]
    assert qc["remedy"] in (tmp_path / "out_report" / "summary.md").read_text()
    # a run that does not stitch is told to choose a rule
    none = pystitch.run(path, tmp_path / "none.zarr", block_shape=(8, 32, 32), halo=1, backend="callable",
                        function=f"{SEG}:identity", rule="none", workers=1, pictures=False)["seam_qc"]
    assert none["flagged"] and "--rule match" in none["remedy"]


# --------------------------------------------------------------------------- 6. quick to start


def test_cli_and_step_modules_import_nothing_heavy():
    """--version and --help import no numerical library; a step that needs no
    scipy or torch does not import them."""
    code = ("import sys, importlib; importlib.import_module(sys.argv[1]); "
            "print(' '.join(sorted(m for m in ('torch', 'cellpose', 'scipy', 'zarr', 'numpy', 'dask', 'tqdm') "
            "if m in sys.modules)))")
    heavy = {}
    for module in ("pystitch", "pystitch.cli", "pystitch.steps.face_pairs", "pystitch.steps.resolve",
                   "pystitch.steps.apply_lut", "pystitch.runner"):
        heavy[module] = sh(sys.executable, "-c", code, module).stdout.split()
    assert heavy["pystitch"] == [] and heavy["pystitch.cli"] == []
    for module in ("pystitch.steps.face_pairs", "pystitch.steps.resolve", "pystitch.steps.apply_lut",
                   "pystitch.runner"):
        assert "scipy" not in heavy[module] and "torch" not in heavy[module], (module, heavy[module])
    assert "tqdm" not in heavy["pystitch.runner"]
    res = sh(VENV_BIN / "pystitch", "run", "--help", env={"PYTHONPROFILEIMPORTTIME": "1"})
    imported = {line.split("|")[-1].strip() for line in res.stderr.splitlines() if "|" in line}
    assert not imported & {"numpy", "zarr", "scipy", "torch"}, sorted(imported & {"numpy", "zarr", "scipy"})
