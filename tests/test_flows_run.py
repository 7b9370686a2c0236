"""``pystitch run --backend cellpose --rule flows`` end to end, offline, with the small test model.

The oracle is Cellpose itself: its whole-image mask computation
(``dynamics.resize_and_compute_masks``) on the flows the run predicted (the
flow store, kept with ``keep_work``), and the adapter's own whole-image
segmentation (network + dynamics, the same global normalisation).  The run's
labels must equal them -- values included -- on 2-D and 3-D images, whatever
the block shape.  The rule is refused at plan time for other backends, and a
flow store of another plan is refused.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

cellpose = pytest.importorskip("cellpose", reason="cellpose is not installed")
torch = pytest.importorskip("torch")

import pystitch  # noqa: E402
import tiny_cellpose as tiny  # noqa: E402  (tests/support, on sys.path via conftest)
from helpers import load, save  # noqa: E402
from nf_support import nextflow  # noqa: E402,F401  (the session fixture)
from pystitch.errors import InputError, PlanMismatchError  # noqa: E402

pytestmark = [pytest.mark.cellpose, pytest.mark.filterwarnings("ignore:Sparse invariant checks"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")]

DIAMETER = 18.0


@pytest.fixture(scope="module")
def model():
    """The small test model, loadable by the stock cellpose constructor in this
    process while the module's tests run (cellpose 4: its tiny encoder)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with tiny.model_loading_context():
        yield tiny.tiny_model_path()
    torch.set_num_threads(threads)


def image(shape, seed):
    return (tiny.synthetic_blobs(shape, seed=seed, fill=0.45, touching=0.6)[0] * 1000).astype(np.uint16)


def run_flows(path, out, model, **kw):
    opts = dict(backend="cellpose", pretrained_model=str(model), diameter=DIAMETER, rule="flows", progress=False,
                pictures=False, device="cpu", workers=1)
    opts.update(kw)
    return pystitch.run(path, out, **opts)


def cellpose_masks(dP, cellprob, summary):
    """Cellpose's own mask computation on the whole arrays, with the run's settings."""
    from cellpose import dynamics
    from pystitch.flows.dynamics import installed_dynamics

    b = summary["backend"]
    extra = {"interp": True} if installed_dynamics().major == 3 else {}
    return dynamics.resize_and_compute_masks(
        dP, cellprob, device=torch.device("cpu"), resize=None, niter=summary["flows"]["niter"],
        cellprob_threshold=b["cellprob_threshold"], flow_threshold=b["flow_threshold"], min_size=b["min_size"],
        max_size_fraction=b["max_size_fraction"], do_3D=dP.shape[0] == 3, **extra)


@pytest.mark.parametrize("shape,block,halo", [((150, 170), (64, 64), None),
                                              pytest.param((24, 48, 48), (10, 32, 24), (4, 8, 8),
                                                           marks=pytest.mark.slow)])
def test_flows_rule_equals_cellpose_on_the_whole_image(model, tmp_path, shape, block, halo) -> None:
    import zarr
    from pystitch.backends.cellpose import CellposeSegmenter

    img = image(shape, seed=4)
    path = save(tmp_path / "img.zarr", img)
    summary = run_flows(path, tmp_path / "out.zarr", model, block_shape=block, halo=halo, work_dir=tmp_path / "work",
                        keep_work=True)
    labels = load(tmp_path / "out.zarr")
    store = zarr.open_group(str(tmp_path / "work" / "flows.zarr"), mode="r")
    dP, cellprob = store["dP"][:], store["cellprob"][:]
    assert not np.isnan(dP).any() and not np.isnan(cellprob).any()  # every block predicted
    ref = cellpose_masks(dP, cellprob, summary)
    assert ref.max() >= (10 if len(shape) == 2 else 3)
    assert np.array_equal(labels, ref)
    assert summary["objects"] == ref.max() and summary["rule"] == "flows"
    # and the adapter on the whole image: network and dynamics, the plan's normalisation
    b = summary["backend"]
    whole = CellposeSegmenter(pretrained_model=str(model), diameter=DIAMETER, do_3D=len(shape) == 3,
                              lowhigh=b["lowhigh"], device="cpu")(img)
    assert np.array_equal(labels, whole)
    # a normal pystitch output: the regions table counts every object
    regions = (tmp_path / "out_report" / "regions.csv").read_text().splitlines()
    assert len(regions) == 1 + ref.max()
    assert not summary["seam_qc"]["flagged"]  # objects that touch at a seam are not a seam


def test_two_block_shapes_give_the_same_labels(model, tmp_path) -> None:
    """The network's tiles follow the whole image, not the blocks: no blending
    difference at all between block shapes (bit-identical flows, equal labels);
    nor between one process and the trajectories followed by two workers
    (which take the dynamics' steps from the flow store, never the model)."""
    path = save(tmp_path / "img.zarr", image((150, 170), seed=7))
    run_flows(path, tmp_path / "a.zarr", model, block_shape=(64, 64))
    summary = run_flows(path, tmp_path / "b.zarr", model, block_shape=(48, 100), workers=2)
    a, b = load(tmp_path / "a.zarr"), load(tmp_path / "b.zarr")
    assert a.max() >= 10
    assert np.array_equal(a, b)
    assert summary["workers"] == 2 and "follow" in summary["timings_seconds"]


def test_flows_rule_with_another_backend_is_refused_at_plan_time(tmp_path) -> None:
    path = save(tmp_path / "img.zarr", image((64, 64), seed=1))
    with pytest.raises(InputError, match="Expected --backend cellpose for --rule flows") as info:
        pystitch.run(path, tmp_path / "out.zarr", backend="threshold", threshold=500, rule="flows",
                     block_shape=32, progress=False, pictures=False, workers=1)
    assert "\n" not in str(info.value) and "Got --backend threshold" in str(info.value)
    assert not (tmp_path / "out.zarr").exists()
    assert not (tmp_path / "out_report").exists()
    assert not list(tmp_path.glob("**/plan.json"))


def flows_cli(model, *extra):
    return ["--backend", "cellpose", "--pretrained-model", str(model), "--diameter", str(DIAMETER),
            "--rule", "flows", *extra]


def test_the_flows_steps_run_by_hand_equal_pystitch_run(model, tmp_path, capsys, caplog, monkeypatch) -> None:
    """plan-blocks, predict-flows, follow-flows --blocks, follow-flows, apply-lut
    and finalize (what the pipeline runs as tasks) give the labels of
    ``pystitch run --rule flows``; a
    rerun of follow-flows after apply-lut reuses its lut and keeps the output
    apply-lut wrote (it never recreates it empty)."""
    from pystitch.cli import main

    path = save(tmp_path / "img.zarr", image((96, 120), seed=3))
    run_flows(path, tmp_path / "run.zarr", model, block_shape=(40, 48))
    assert main(["plan-blocks", path, str(tmp_path / "out.zarr"), "--block-shape", "40,48",
                 "--work-dir", str(tmp_path / "work"), *flows_cli(model)]) == 0
    plan = capsys.readouterr().out.strip().splitlines()[-1]
    # two batches of blocks, as two pipeline tasks write the flow store; follow-flows waits for both
    assert main(["predict-flows", plan, "--blocks", "0-4", "--device", "cpu"]) == 0
    predicted = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert predicted["blocks"] == 5 and predicted["flows"].endswith("flows.zarr")
    assert 0 < predicted["peak_tiles_held"] <= predicted["tiles"] and predicted["batches"] > 0
    assert main(["follow-flows", plan]) == 1  # refused: the flow store is not complete
    assert not (tmp_path / "work" / "lut.zarr").exists()
    assert main(["follow-flows", plan, "--blocks", "0-3"]) == 1  # nor its trajectories
    assert main(["predict-flows", plan, "--blocks", "5-8", "--device", "cpu"]) == 0
    import zarr

    flows = zarr.open_group(str(tmp_path / "work" / "flows.zarr"), mode="r+")
    niter = flows.attrs["niter"]  # recorded with complete, by the task that completed the store
    assert flows.attrs["complete"] and niter > 0
    flows.attrs.put({k: v for k, v in flows.attrs.asdict().items() if k != "niter"})  # a store of an older version
    assert main(["predict-flows", plan, "--blocks", "0", "--device", "cpu"]) == 0  # complete: records it only
    assert zarr.open_group(str(tmp_path / "work" / "flows.zarr"), mode="r").attrs["niter"] == niter
    capsys.readouterr()
    # the dynamics take the steps predict recorded in the complete store: the network is never loaded again
    from pystitch.plan import Plan

    monkeypatch.setattr(Plan, "make_backend", lambda self: pytest.fail("the dynamics loaded the model"))
    # the trajectories of two batches as two tasks; the blocks of the second follow-flows does itself
    assert main(["follow-flows", plan, "--blocks", "0-3", "--out", str(tmp_path / "lut.zarr")]) == 1  # no lut
    assert "Expected --out without --blocks" in caplog.text and not (tmp_path / "work" / "flows-ends").exists()
    assert main(["follow-flows", plan, "--blocks", "0-3"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["blocks"] == first["followed"] == 4 and first["kept"] == 0 and first["foreground_voxels"] > 0
    assert main(["follow-flows", plan, "--blocks", "2-5"]) == 0  # a rerun keeps what is there
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (again["followed"], again["kept"]) == (2, 2)
    assert len(list((tmp_path / "work" / "flows-ends").glob("follow-*.npz"))) == 6
    assert main(["follow-flows", plan]) == 0
    resolved = json.loads((tmp_path / "work" / "resolve.json").read_text())
    assert resolved["flows"]["foreground_voxels"] > first["foreground_voxels"]
    assert not (tmp_path / "work" / "flows-scratch").exists()  # the dynamics' scratch files are gone
    assert not (tmp_path / "work" / "flows-ends").exists()  # and the end points it consumed
    monkeypatch.undo()
    assert main(["apply-lut", plan, "--blocks", "all"]) == 0
    assert main(["follow-flows", plan]) == 0  # rerun: nothing to do
    assert main(["finalize", plan, "--nopictures"]) == 0
    labels, reference = load(tmp_path / "out.zarr"), load(tmp_path / "run.zarr")
    # objects to compare, whichever known build of the tiny model (8 with the AMD EPYC build of Cellpose 3)
    assert reference.max() >= 5 and resolved["objects"] == reference.max()
    assert np.array_equal(labels, reference)
    assert json.loads((tmp_path / "work" / "resolve.json").read_text()) == resolved  # the first one's


def fixed_flows_plan(model, tmp_path, dP, cellprob, block, settings):
    """A plan of the flows rule whose complete flow store holds ``dP`` and
    ``cellprob`` (no network): what the dynamics' steps make of it must be
    Cellpose's own masks of those arrays."""
    from pystitch.storage.flowstore import FlowStore

    shape = cellprob.shape
    path = save(tmp_path / "img.zarr", ((cellprob > 0) * 900 + 100).astype(np.uint16))
    options = {"pretrained_model": str(model), "diameter": DIAMETER,
               **{k: v for k, v in settings.items() if k != "niter"}}
    plan = pystitch.plan_blocks(path, tmp_path / "out.zarr", block_shape=block, halo=(6,) * len(shape),
                                backend="cellpose", rule="flows", work_dir=tmp_path / "work", skip_empty=False,
                                backend_options=options)
    store = FlowStore.create(plan.flows_uri, plan.shape, plan.block_shape, plan.hash)
    for b in range(plan.n_blocks):
        core = plan.grid.core(b)
        store.write(core, dP[(slice(None), *core)], cellprob[core], block=b)
    store.mark_complete(niter=settings["niter"])
    return plan


SETTINGS = {"niter": 200, "cellprob_threshold": 0.0, "flow_threshold": 0.4, "min_size": 15, "max_size_fraction": 0.4}
#: name: (shape, objects, radius, seed, block); flows whose masks exercise every filter: the flow check (2-D), holes
#: filled across block borders, a fill taking voxels of another object (3-D, seed 2)
FIXED = {
    "2-D": ((80, 100), 30, 8, 4, (27, 33)),
    "3-D": ((20, 36, 40), 16, 5, 4, (10, 16, 20)),
    "3-D, fills over small blocks": ((20, 36, 40), 16, 5, 2, (7, 12, 14)),
}


def fixed_arrays(name):
    from flow_arrays import synthetic

    shape, n, radius, seed, block = FIXED[name]
    dP, cellprob = synthetic(shape, n, radius, seed=seed)
    return np.asarray(dP, np.float32), np.asarray(cellprob, np.float32), block, SETTINGS


@pytest.mark.parametrize("name", list(FIXED))
def test_the_dynamics_tasks_equal_cellpose_on_fixed_flows(model, tmp_path, capsys, caplog, name) -> None:
    """follow-flows --blocks, seed-flows, assign-flows --blocks, follow-flows,
    apply-lut and finalize (the pipeline's tasks) on a flow store fed from
    fixed arrays give Cellpose's masks of the whole arrays, values included,
    and a regions table of exactly those objects. assign-flows before
    seed-flows is refused; a rerun keeps the blocks already assigned; the
    blocks no task did are done by follow-flows."""
    from flow_arrays import cellpose_masks
    from pystitch.cli import main

    dP, cellprob, block, settings = fixed_arrays(name)
    ref = cellpose_masks(dP, cellprob, do_3D=cellprob.ndim == 3, **settings)
    assert ref.max() >= 5
    plan = fixed_flows_plan(model, tmp_path, dP, cellprob, block, settings)
    path, n = str(plan.plan_path), plan.n_blocks
    assert n >= 8
    assert main(["follow-flows", path, "--blocks", f"0-{n - 3}"]) == 0  # the last two: follow-flows does them
    capsys.readouterr()
    assert main(["assign-flows", path, "--blocks", "0-3"]) == 1  # no region map yet: refused, nothing written
    assert "run seed-flows on this plan first" in caplog.text
    assert not list((tmp_path / "work" / "flows-ends").glob("assign-*"))
    assert main(["seed-flows", path]) == 0
    seeds = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert seeds["followed_here"] == 2 and seeds["seeds"] >= ref.max()
    assert main(["assign-flows", path, "--blocks", "0-3"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (first["assigned"], first["kept"]) == (4, 0)
    assert main(["assign-flows", path, "--blocks", "2-5"]) == 0  # a rerun keeps what is there
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (again["assigned"], again["kept"]) == (2, 2)
    assert main(["follow-flows", path]) == 0  # assigns blocks 6.. itself
    assert not (tmp_path / "work" / "flows-ends").exists() and not (tmp_path / "work" / "flows-scratch").exists()
    assert main(["apply-lut", path, "--blocks", "all"]) == 0
    assert main(["finalize", path, "--nopictures"]) == 0
    out = load(tmp_path / "out.zarr")
    assert np.array_equal(out, ref)
    regions = (tmp_path / "out_report" / "regions.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in regions[1:]] == list(range(1, int(ref.max()) + 1))
    removed = json.loads((tmp_path / "work" / "resolve.json").read_text())["flows"]["removed"]
    if cellprob.ndim == 2:
        assert removed["flow_threshold"] > 0  # the flow check dropped objects
    else:  # holes filled; with seed 2 one takes a voxel of another object
        assert removed["filled_voxels"] > 0 and (removed["voxels_taken_by_fills"] > 0) == name.endswith("blocks")


def test_a_follow_flows_killed_after_filling_holes_gives_the_same_labels(model, tmp_path, monkeypatch) -> None:
    """follow-flows writes the voxels of filled holes into the staging labels of
    their blocks before it writes the lut; killed in between, its rerun must
    not take those labels for seed labels."""
    from flow_arrays import cellpose_masks
    from pystitch.steps import flows_rule

    dP, cellprob, block, settings = fixed_arrays("3-D, fills over small blocks")
    ref = cellpose_masks(dP, cellprob, do_3D=True, **settings)
    plan = fixed_flows_plan(model, tmp_path, dP, cellprob, block, settings)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as m:
        m.setattr(flows_rule, "write_lut", killed)
        with pytest.raises(KeyboardInterrupt):
            flows_rule.follow_step(plan.plan_path)
    assert not (tmp_path / "work" / "lut.zarr").exists()
    summary = flows_rule.follow_step(plan.plan_path)
    assert summary["flows"]["removed"]["filled_voxels"] > 0
    pystitch.apply_lut(plan.plan_path, "all")
    pystitch.finalize(plan.plan_path, pictures=False)
    assert np.array_equal(load(tmp_path / "out.zarr"), ref)


def test_a_run_killed_while_writing_the_output_resumes_without_predicting_again(model, tmp_path, caplog) -> None:
    """The lut and output that follow-flows made are what a resumed `pystitch run`
    finishes: predict and the dynamics are not run again."""
    import logging

    from pystitch.resources import resources
    from pystitch.steps.flows_rule import follow_step, predict_step

    path = save(tmp_path / "img.zarr", image((96, 120), seed=3))
    run_flows(path, tmp_path / "ref.zarr", model, block_shape=(40, 48))
    options = {"pretrained_model": str(model), "diameter": DIAMETER}
    plan = pystitch.plan_blocks(path, tmp_path / "out.zarr", block_shape=(40, 48), backend="cellpose", rule="flows",
                                work_dir=tmp_path / "work", backend_options=options)
    predict_step(plan.plan_path, device="cpu")
    follow_step(plan.plan_path)
    pystitch.apply_lut(plan.plan_path, [0, 1, 2])  # killed after three blocks
    with caplog.at_level(logging.INFO, logger="pystitch"):
        run_flows(path, tmp_path / "out.zarr", model, block_shape=(40, 48), work_dir=tmp_path / "work",
                  skip_empty=True)
    assert "predict and dynamics skipped" in caplog.text
    assert "stage predict" not in caplog.text
    assert np.array_equal(load(tmp_path / "out.zarr"), load(tmp_path / "ref.zarr"))
    # the pipeline's per-image tasks of the rule get requests (a plan of another rule has none)
    from pystitch.backends.cellpose_backend import BASE_BYTES

    estimates = resources(plan, 4)
    assert all(estimates[step]["memory_mb"] * 2 ** 20 >= BASE_BYTES for step in ("predict-flows", "follow-flows"))
    assert "predict-flows" not in resources(pystitch.plan_blocks(path, tmp_path / "e.zarr", block_shape=32, halo=2,
                                                                 backend_options={"threshold": 1}), 4)


def test_a_predict_killed_halfway_goes_on_with_the_blocks_it_did_not_write(model, tmp_path) -> None:
    """The blocks a killed predict-flows marked written are kept; the others are
    predicted again, with only the network work they need, into the same flows
    bit for bit."""
    import zarr

    from pystitch.steps.flows_rule import predict_step
    from pystitch.storage.flowstore import DONE, FlowStore

    path = save(tmp_path / "img.zarr", image((640, 480), seed=5))
    plan = pystitch.plan_blocks(path, tmp_path / "out.zarr", block_shape=(160, 240), backend="cellpose",
                                rule="flows", backend_options={"pretrained_model": str(model), "diameter": DIAMETER})
    first = predict_step(plan.plan_path, device="cpu")
    assert first["blocks_resumed"] == 0 and plan.n_blocks == 8 and first["batches"] >= 2
    whole = zarr.open_group(plan.flows_uri, mode="r")
    dP, cellprob = whole["dP"][:], whole["cellprob"][:]
    # as a predict killed before it wrote the top two blocks leaves the store: unmarked and unwritten
    store = FlowStore.open(plan.flows_uri, plan.hash)
    store.group.attrs["complete"] = False
    for b in (0, 1):
        (tmp_path / "out_work" / "flows.zarr" / DONE / str(b)).unlink()
        core = plan.grid.core(b)
        store.write(core, np.full(dP.shape, np.nan)[(slice(None), *core)], np.full(cellprob.shape, np.nan)[core])
    assert store.blocks_done() == set(range(2, 8))
    again = predict_step(plan.plan_path, device="cpu")
    assert again["blocks_resumed"] == 6
    assert 0 < again["batches"] < first["batches"]  # only the network work the two blocks need
    store = FlowStore.open(plan.flows_uri, plan.hash)
    assert store.complete and store.blocks_done() == set(range(plan.n_blocks))
    assert np.array_equal(store.dP[:], dP) and np.array_equal(store.cellprob[:], cellprob)


def test_follow_flows_refuses_an_unfinished_flow_store(model, tmp_path) -> None:
    from pystitch.errors import StagingError
    from pystitch.steps.flows_rule import follow_step, predict_step
    from pystitch.storage.flowstore import FlowStore

    path = save(tmp_path / "img.zarr", image((64, 64), seed=1))
    plan = pystitch.plan_blocks(path, tmp_path / "out.zarr", block_shape=32, backend="cellpose", rule="flows",
                                backend_options={"pretrained_model": str(model), "diameter": DIAMETER})
    assert FlowStore.open(plan.flows_uri, plan.hash).blocks_done() == set()  # created by plan-blocks, empty
    with pytest.raises(StagingError, match="Expected a complete flow store") as info:
        follow_step(plan.plan_path)
    assert "\n" not in str(info.value) and "run predict-flows on this plan first" in str(info.value)
    assert not (tmp_path / "out_work" / "lut.zarr").exists() and not list(tmp_path.glob("**/lut.zarr"))
    shutil.rmtree(plan.flows_uri)  # and none at all
    with pytest.raises(StagingError, match="Expected the flow store of this plan at .*Got nothing there: run "
                                           "predict-flows on this plan first"):
        follow_step(plan.plan_path)
    # and a plan of another rule is refused by both steps
    other = pystitch.plan_blocks(path, tmp_path / "exact.zarr", block_shape=32, halo=2,
                                 backend_options={"threshold": 1})
    for call, step in ((predict_step, "predict-flows"), (follow_step, "follow-flows")):
        with pytest.raises(InputError, match=f"Expected a plan of rule flows for {step}. Got a plan of rule exact"):
            call(other.plan_path)


def test_a_flow_store_of_another_plan_is_refused(model, tmp_path) -> None:
    from pystitch.steps.flows_rule import predict_flows
    from pystitch.storage.flowstore import FlowStore

    path = save(tmp_path / "img.zarr", image((64, 64), seed=1))
    settings = {"pretrained_model": str(model), "diameter": DIAMETER}
    a = pystitch.plan_blocks(path, tmp_path / "a.zarr", work_dir=tmp_path / "wa", block_shape=32, backend="cellpose",
                             rule="flows", backend_options=settings)
    b = pystitch.plan_blocks(path, tmp_path / "b.zarr", work_dir=tmp_path / "wb", block_shape=32, backend="cellpose",
                             rule="flows", backend_options={**settings, "min_size": 5})
    assert a.hash != b.hash and a.backend["min_size"] != b.backend["min_size"]  # the dynamics settings are planned
    FlowStore.create(b.flows_uri, b.shape, b.block_shape, a.hash)  # plan a's store where plan b keeps its own
    with pytest.raises(PlanMismatchError, match="was produced for plan") as info:
        predict_flows(b, segmenter=None)
    assert "\n" not in str(info.value)
    assert FlowStore.open(b.flows_uri, a.hash).group.attrs["plan_hash"] == a.hash  # refused, not replaced


@pytest.mark.parametrize("shape,options,expected", [
    ((64, 64), {"normalize": "block"}, "Expected --normalize global for --rule flows"),
    ((12, 32, 32), {"do_3d": False}, "Expected --do-3d true for --rule flows on a 3-D image"),
])
def test_what_the_flows_rule_cannot_follow_is_refused_at_plan_time(model, tmp_path, shape, options, expected) -> None:
    path = save(tmp_path / "img.zarr", image(shape, seed=1))
    with pytest.raises(InputError, match=expected) as info:
        pystitch.plan_blocks(path, tmp_path / "out.zarr", block_shape=32, halo=4, backend="cellpose", rule="flows",
                             backend_options={"pretrained_model": str(model), "diameter": DIAMETER, **options})
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out.zarr").exists() and not list(tmp_path.glob("**/plan.json"))


def test_the_per_block_steps_refuse_a_flows_plan(model, tmp_path) -> None:
    path = save(tmp_path / "img.zarr", image((64, 64), seed=1))
    plan = pystitch.plan_blocks(path, tmp_path / "out.zarr", block_shape=32, backend="cellpose", rule="flows",
                                backend_options={"pretrained_model": str(model), "diameter": DIAMETER})
    for step, call in (("segment-block", pystitch.segment_blocks), ("face-pairs", pystitch.face_pairs)):
        with pytest.raises(InputError, match=f"Expected a plan of rule exact, match or none for {step}"):
            call(plan.plan_path, [0])
    with pytest.raises(InputError, match="Expected a plan of rule exact, match or none for resolve"):
        pystitch.resolve(plan.plan_path)
    assert not list(tmp_path.glob("**/manifests/*"))



@pytest.mark.slow
@pytest.mark.nextflow
def test_the_pipeline_runs_the_flows_rule_as_tasks(model, nextflow, tmp_path) -> None:
    """``nextflow run main.nf --backend cellpose --rule flows``: predict-flows in
    batches of blocks (writing one flow store side by side), the trajectories
    in batches, seed-flows once per image, assign-flows in batches,
    follow-flows once per image, apply-lut in batches; the published labels and regions table
    are byte for byte those of ``pystitch run --rule flows`` on the same image;
    -resume caches every task."""
    from nf_support import assert_same_labels, ok, reference_run, step, summary_of, trace_rows

    path = save(tmp_path / "img.zarr", image((96, 120), seed=3))
    settings = ["--backend", "cellpose", "--pretrained_model", model, "--diameter", DIAMETER, "--rule", "flows",
                "--block_shape", "40,48", "--halo", "8,8"]
    launch, outdir = tmp_path / "launch", tmp_path / "results"
    ok(nextflow(launch, "-profile", "test", "--input", path, *settings, "--outdir", outdir,
                "-with-trace", launch / "trace.txt", parser="v2"))
    rows = trace_rows(launch / "trace.txt")
    counts = {s: sum(step(r) == s for r in rows) for s in {step(r) for r in rows}}
    assert counts == {"PLAN_BLOCKS": 1, "PREDICT_FLOWS": 3, "FOLLOW_BLOCKS": 3, "SEED_FLOWS": 1, "ASSIGN_BLOCKS": 3,
                      "FOLLOW_FLOWS": 1, "APPLY_LUT": 3, "FINALIZE": 1}

    reference_run(path, tmp_path / "run.zarr", *[str(a).replace("_", "-") if str(a).startswith("--") else a
                                                 for a in settings])
    labels = assert_same_labels(outdir / "img" / "labels.zarr", tmp_path / "run.zarr")
    assert labels.max() >= 5   # objects to compare, whichever known build (8 with the AMD EPYC build of Cellpose 3)
    # what the dynamics measured reaches the published summary, as in the local run's
    flows = summary_of(outdir, "img")["flows"]
    assert flows == json.loads((tmp_path / "run_report" / "summary.json").read_text())["flows"]
    assert flows["objects"] == labels.max() and flows["seeds"] >= flows["objects"]

    ok(nextflow(launch, "-profile", "test", "--input", path, *settings, "--outdir", outdir,
                "-resume", "-with-trace", launch / "trace2.txt", parser="v2"))
    assert {r["status"] for r in trace_rows(launch / "trace2.txt")} == {"CACHED"}
    np.testing.assert_array_equal(load(outdir / "img" / "labels.zarr"), labels)
