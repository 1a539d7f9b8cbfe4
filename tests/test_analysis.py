"""Figure analyses (plane, line, rays, FGE, trajectory, CLI) on a tiny synthetic SWA run, on CPU."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from swa_repro import layout
from swa_repro.analysis.__main__ import ANALYSIS_CONF_DIR, EXIT_USER_ERROR, main
from swa_repro.analysis.common import POINTS_PER_PASS, AnalysisError
from swa_repro.analysis.fge import FGESchedule, compute_fge
from swa_repro.analysis.line import compute_line
from swa_repro.analysis.plane import compute_plane, plane_basis
from swa_repro.analysis.points import METRICS, load_context
from swa_repro.analysis.rays import compute_rays, ray_direction
from swa_repro.analysis.specs import load_point
from swa_repro.analysis.trajectory import compute_trajectory
from swa_repro.checkpoint import load_checkpoint
from swa_repro.layout import RunPaths

RUN_OVERRIDES = [
    "experiment=synthetic/small_cnn_swa",
    "data.train_size=256",
    "data.test_size=128",
    "epochs=5",
    "budget=3",
    "method.swa_start=3",
    "optim.batch_size=64",
    "progress=false",
    "device=cpu",
    "checkpoint.keep_epochs=[2,5]",
    "swag.samples=2",
]


@pytest.fixture(scope="session")
def run_dir(trained_run):
    """An SWA run keeping epochs 2, 5 (asked), 3, 4 (budget readings); averaging from epoch 3.
    From here on one thread, in the module fixtures as in the tests (one summation order)."""
    torch.set_num_threads(1)
    return trained_run(RUN_OVERRIDES, "analysis_run")


@pytest.fixture(scope="session")
def ctx(run_dir):
    return load_context(run_dir, device="cpu", seed=0)


@pytest.fixture(scope="session")
def points(run_dir, ctx):
    """w0 = SGD iterate at epoch 2 (before averaging), w1 = final SGD iterate, w2 = final SWA average."""
    last = RunPaths(run_dir).last
    return (
        load_point(f"{RunPaths(run_dir).kept(2)}:model", ctx.model),
        load_point(f"{last}:model", ctx.model),
        load_point(f"{last}:swa", ctx.model),
    )


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")

# several points per pass agree with one point per pass up to floating-point summation order
RTOL, ATOL = 1e-5, 1e-6


def _assert_same_arrays(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key == "config":
            continue
        assert np.array_equal(a[key], b[key], equal_nan=a[key].dtype.kind == "f"), key


def _load(path) -> dict:
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def _assert_close_metrics(a: dict, b: dict) -> None:
    """Every metric of a and b (arrays or scalars) within RTOL / ATOL."""
    for m in METRICS:
        np.testing.assert_allclose(a[m], b[m], rtol=RTOL, atol=ATOL, err_msg=m)


# --------------------------------------------------------------------------- plane


def test_plane_basis_is_orthonormal_and_places_the_points():
    gen = torch.Generator().manual_seed(0)
    w0, w1, w2 = (torch.randn(1000, generator=gen) for _ in range(3))
    basis = plane_basis(w0, w1, w2)
    assert float(basis.u.norm()) == pytest.approx(1.0, abs=1e-12)
    assert float(basis.v.norm()) == pytest.approx(1.0, abs=1e-12)
    assert abs(float(basis.u @ basis.v)) < 1e-6
    assert basis.project(w0) == (0.0, 0.0)
    x1, y1 = basis.project(w1)
    assert x1 == pytest.approx(float((w1.double() - w0.double()) @ basis.u), abs=1e-9)
    assert y1 == pytest.approx(basis.dy, abs=1e-9)
    x2, y2 = basis.project(w2)
    assert (x2, y2) == (pytest.approx(basis.dx, abs=1e-9), pytest.approx(0.0, abs=1e-9))
    assert basis.dx == pytest.approx(float((w2.double() - w0.double()).norm()))
    with pytest.raises(AnalysisError, match="collinear"):
        plane_basis(w0, w0 + 2 * (w2 - w0), w2)


def test_plane_grid_nodes_and_metrics(ctx, points, tmp_path):
    w0, w1, w2 = points
    out = tmp_path / "plane.npz"
    res = compute_plane(
        ctx, w0, w1, w2, {"SWA again": w2}, out, grid_points=8, margin=0.2, progress=False
    )
    saved = _load(out)
    _assert_same_arrays(res, saved)
    config = json.loads(str(saved["config"]))
    dx, dy = config["dx"], config["dy"]
    assert config["grid_points"] == 8 and config["margin"] == 0.2 and config["inputs_hash"]
    # alpha nodes -0.2, 0, 0.2, ..., 1.2: w0 at [1, 1], w2 at [6, 1], w1 at height dy (beta = 1)
    np.testing.assert_allclose(saved["x"], np.linspace(-0.2, 1.2, 8) * dx)
    np.testing.assert_allclose(saved["y"], np.linspace(-0.2, 1.2, 8) * dy)
    assert saved["x"].dtype == np.float64 and saved["x"].shape == (8,)
    xy = saved["point_xy"]
    assert list(saved["point_names"]) == ["w0", "w1", "w2", "SWA again"]
    np.testing.assert_allclose(xy[0], [saved["x"][1], saved["y"][1]], atol=1e-9)
    np.testing.assert_allclose(xy[2], [saved["x"][6], saved["y"][1]], atol=1e-9)
    np.testing.assert_allclose(xy[3], xy[2], atol=1e-9)
    assert xy[1][1] == pytest.approx(saved["y"][6], abs=1e-9)
    assert saved["done"].shape == (8, 8) and saved["done"].all()
    _assert_close_metrics({m: saved[m][1, 1] for m in METRICS}, ctx.evaluate(w0))
    for m in METRICS:
        assert saved[m].shape == (8, 8)
        assert np.isfinite(saved[m]).all()


@contextlib.contextmanager
def interrupted_after(points: int, ctx, monkeypatch):
    """ctx.evaluate raises KeyboardInterrupt once `points` points were evaluated (one at a time)."""
    evaluate, calls = ctx.evaluate, []

    def interrupted(vector):
        if len(calls) == points:
            raise KeyboardInterrupt
        calls.append(1)
        return evaluate(vector)

    monkeypatch.setattr(ctx, "evaluate", interrupted)
    try:
        yield
    finally:
        monkeypatch.undo()


def test_plane_resumes_to_identical_arrays_and_refuses_other_inputs(
    ctx, points, tmp_path, monkeypatch
):
    """One point per pass (ctx.evaluate); for chunks see test_chunked_grid_resumes_..."""
    w0, w1, w2 = points
    one = {"progress": False, "points_per_pass": 1}
    full = compute_plane(ctx, w0, w1, w2, {}, tmp_path / "full.npz", 4, 1.0, **one)

    out = tmp_path / "partial.npz"
    with interrupted_after(5, ctx, monkeypatch), pytest.raises(KeyboardInterrupt):
        compute_plane(ctx, w0, w1, w2, {}, out, 4, 1.0, **one)
    partial = _load(out)
    assert partial["done"].sum() == 5 and partial["done"].ravel()[:5].all()
    assert np.isnan(partial["test_err"][~partial["done"]]).all()
    assert np.isfinite(partial["test_err"][partial["done"]]).all()

    resumed = compute_plane(ctx, w0, w1, w2, {}, out, 4, 1.0, **one)
    _assert_same_arrays(full, resumed)
    _assert_same_arrays(full, _load(out))

    with pytest.raises(ValueError, match="different inputs"):
        compute_plane(ctx, w0, w1, w2, {}, out, 4, 0.5, progress=False)
    with pytest.raises(ValueError, match="different inputs"):
        compute_plane(ctx, w0, w2, w1, {}, out, 4, 1.0, progress=False)


# --------------------------------------------------------------------------- chunks of points

GRID = {"grid_points": 4, "margin": 0.5, "progress": False}  # 16 points, C order


@pytest.fixture(scope="module")
def plane_one_by_one(ctx, points, tmp_path_factory):
    """The 4 x 4 plane evaluated one point per pass (ctx.evaluate): the reference."""
    out = tmp_path_factory.mktemp("plane_one_by_one") / "plane.npz"
    return compute_plane(ctx, *points, {}, out, **GRID, points_per_pass=1)


def _chunk_recorder(ctx, monkeypatch, fail_on_call: int | None = None) -> list[torch.Tensor]:
    """Record the vectors of each ctx.evaluate_many call; raise KeyboardInterrupt on call
    number `fail_on_call` (1-based). ctx.evaluate must not be called."""
    evaluate_many, chunks = ctx.evaluate_many, []

    def recording(vectors, **options):
        if len(chunks) + 1 == fail_on_call:
            raise KeyboardInterrupt
        chunks.append(vectors.clone())
        return evaluate_many(vectors, **options)

    def per_point(vector):
        raise AssertionError("ctx.evaluate called by a chunked grid")

    monkeypatch.setattr(ctx, "evaluate_many", recording)
    monkeypatch.setattr(ctx, "evaluate", per_point)
    return chunks


def test_chunked_grid_equals_one_point_per_pass(
    ctx, points, plane_one_by_one, tmp_path, monkeypatch
):
    chunks = _chunk_recorder(ctx, monkeypatch)
    chunked = compute_plane(ctx, *points, {}, tmp_path / "p.npz", **GRID, points_per_pass=3)
    monkeypatch.undo()
    assert [len(c) for c in chunks] == [3, 3, 3, 3, 3, 1]
    assert chunked["done"].all()
    _assert_close_metrics(chunked, plane_one_by_one)
    # the same numbers, not merely the same shape: the grid spans a real range of losses
    assert np.ptp(plane_one_by_one["train_loss"]) > 1e-3
    assert np.array_equal(chunked["test_err"], plane_one_by_one["test_err"])
    for key in ("x", "y", "point_xy"):
        assert np.array_equal(chunked[key], plane_one_by_one[key]), key


def test_chunked_grid_resumes_after_the_last_saved_chunk(ctx, points, tmp_path, monkeypatch):
    full = compute_plane(ctx, *points, {}, tmp_path / "full.npz", **GRID, points_per_pass=3)

    out = tmp_path / "partial.npz"
    _chunk_recorder(ctx, monkeypatch, fail_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        compute_plane(ctx, *points, {}, out, **GRID, points_per_pass=3)
    monkeypatch.undo()
    partial = _load(out)
    assert partial["done"].sum() == 3 and partial["done"].ravel()[:3].all()
    assert np.isnan(partial["train_loss"].ravel()[3:]).all()

    chunks = _chunk_recorder(ctx, monkeypatch)
    resumed = compute_plane(ctx, *points, {}, out, **GRID, points_per_pass=3)
    monkeypatch.undo()
    # the first chunk is not recomputed: the rerun starts at point 3 of the C order
    assert [len(c) for c in chunks] == [3, 3, 3, 3, 1]
    basis = plane_basis(*points)
    x, y = full["x"], full["y"]
    torch.testing.assert_close(chunks[0][0], basis.point(x[0], y[3]), rtol=0, atol=1e-6)
    for m in METRICS:
        assert np.array_equal(resumed[m].ravel()[:3], partial[m].ravel()[:3]), m
    # same chunks as the uninterrupted run, so the same numbers exactly
    _assert_same_arrays(full, resumed)
    _assert_same_arrays(full, _load(out))


def test_points_per_pass_is_not_an_input(ctx, points, plane_one_by_one, tmp_path, monkeypatch):
    """A plane started one point per pass resumes with chunks of 4 under the same inputs_hash."""
    out = tmp_path / "plane.npz"
    with interrupted_after(5, ctx, monkeypatch), pytest.raises(KeyboardInterrupt):
        compute_plane(ctx, *points, {}, out, **GRID, points_per_pass=1)
    started = _load(out)
    assert started["done"].sum() == 5

    chunks = _chunk_recorder(ctx, monkeypatch)
    resumed = compute_plane(ctx, *points, {}, out, **GRID, points_per_pass=4)
    monkeypatch.undo()
    assert [len(c) for c in chunks] == [4, 4, 3]  # the 11 points not done
    digest = json.loads(str(started["config"]))["inputs_hash"]
    assert json.loads(str(resumed["config"]))["inputs_hash"] == digest
    assert json.loads(str(plane_one_by_one["config"]))["inputs_hash"] == digest
    for m in METRICS:
        assert np.array_equal(resumed[m].ravel()[:5], plane_one_by_one[m].ravel()[:5]), m
    _assert_close_metrics(resumed, plane_one_by_one)


def test_bad_chunk_settings_are_refused(ctx, points, tmp_path):
    out = tmp_path / "plane.npz"
    with pytest.raises(AnalysisError, match="points_per_pass"):
        compute_plane(ctx, *points, {}, out, **GRID, points_per_pass=0)
    with pytest.raises(AnalysisError, match="multipoint_mode"):
        compute_plane(ctx, *points, {}, out, **GRID, multipoint_mode="gpu")
    assert not out.exists()


# --------------------------------------------------------------------------- line and rays


def test_line_at_distance_zero_is_the_swa_point(ctx, points, tmp_path):
    _, w_sgd, w_swa = points
    res = compute_line(ctx, w_swa, w_sgd, tmp_path / "line.npz", -1.0, 2.0, 4, progress=False)
    saved = _load(tmp_path / "line.npz")
    _assert_same_arrays(res, saved)
    norm = float((w_sgd.double() - w_swa.double()).norm())
    np.testing.assert_allclose(saved["t"], [-1.0, 0.0, 1.0, 2.0])
    np.testing.assert_allclose(saved["distance"], saved["t"] * norm)
    assert float(saved["sgd_distance"]) == pytest.approx(norm)
    _assert_close_metrics({m: saved[m][1] for m in METRICS}, ctx.evaluate(w_swa))
    for m in METRICS:
        assert saved[m].shape == (4,)
    assert json.loads(str(saved["config"]))["n_points"] == 4


def test_ray_directions_are_unit_and_seeded():
    a = ray_direction(3, 0, 500)
    assert float(a.norm()) == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(a, ray_direction(3, 0, 500))
    assert not torch.equal(a, ray_direction(3, 1, 500))
    assert not torch.equal(a, ray_direction(4, 0, 500))


def test_rays_share_directions_and_start_at_the_origins(ctx, points, tmp_path, monkeypatch):
    _, w_sgd, w_swa = points
    seen, chunks = [], []
    evaluate_many = ctx.evaluate_many

    def recording(vectors, **options):
        seen.extend(vectors.double())
        chunks.append(len(vectors))
        return evaluate_many(vectors, **options)

    monkeypatch.setattr(ctx, "evaluate_many", recording)
    origins = {"swa": w_swa, "sgd": w_sgd}
    out = tmp_path / "rays.npz"
    compute_rays(ctx, origins, out, n_directions=2, max_distance=2.0, n_distances=3, seed=7,
                 progress=False, points_per_pass=5)  # fmt: skip
    monkeypatch.undo()
    assert chunks == [5, 5, 2]  # 12 points; chunks cross the rays' boundaries
    saved = _load(out)
    np.testing.assert_allclose(saved["distances"], [0.0, 1.0, 2.0])
    assert list(saved["origins"]) == ["swa", "sgd"]
    config = json.loads(str(saved["config"]))
    assert (config["n_directions"], config["seed"], config["max_distance"]) == (2, 7, 2.0)
    # evaluation order (origin, direction, distance): recover each direction from the points
    seen = torch.stack(seen).view(2, 2, 3, -1)
    for o, w in enumerate(origins.values()):
        for r in range(2):
            direction = (seen[o, r, 2] - w.double()) / 2.0
            expected = ray_direction(7, r, w.numel())
            torch.testing.assert_close(direction, expected, atol=1e-6, rtol=0)
            assert float(direction.norm()) == pytest.approx(1.0, abs=1e-5)
    for o, w in enumerate(origins.values()):
        expected = ctx.evaluate(w)
        for m in METRICS:
            assert saved[m].shape == (2, 2, 3)
            np.testing.assert_allclose(saved[m][o, :, 0], expected[m], rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- FGE


def test_fge_learning_rate_triangle():
    lr1, lr2, spe = 0.05, 0.01, 4
    schedule = FGESchedule(lr1, lr2, cycle_epochs=2)

    def formula(t):
        return (
            (1 - 2 * t) * lr1 + 2 * t * lr2 if t <= 0.5 else (2 - 2 * t) * lr2 + (2 * t - 1) * lr1
        )

    for cycle in range(2):  # the second cycle repeats the first
        e = 2 * cycle
        assert schedule(e, 0, spe) == pytest.approx(formula(1 / 8), abs=1e-15)  # start
        assert schedule(e, 3, spe) == pytest.approx(lr2, abs=1e-15)  # midpoint: lr2
        assert schedule(e + 1, 1, spe) == pytest.approx(formula(6 / 8), abs=1e-15)
        assert schedule(e + 1, 3, spe) == pytest.approx(lr1, abs=1e-15)  # end: lr1
    assert [schedule.samples_after(e) for e in range(4)] == [True, False, True, False]
    assert [FGESchedule(lr1, lr2, 4).samples_after(e) for e in range(4)] == [0, 1, 0, 0]


def test_fge_samples_and_ensemble(ctx, run_dir, tmp_path):
    last = RunPaths(run_dir).last
    out, samples = tmp_path / "fge.npz", tmp_path / "fge_samples.pt"
    res = compute_fge(ctx, last, out, samples, lr1=0.05, lr2=0.01, cycle_epochs=2, epochs=4,
                      progress=False)  # fmt: skip
    saved = _load(out)
    _assert_same_arrays(res, saved)
    assert saved["sample_test_acc"].shape == (2,) and saved["ensemble_test_acc"].shape == (2,)
    assert saved["ensemble_test_acc"][0] == saved["sample_test_acc"][0]
    config = json.loads(str(saved["config"]))
    assert (config["lr1"], config["lr2"], config["cycle_epochs"], config["epochs"]) == (
        0.05, 0.01, 2, 4)  # fmt: skip
    assert config["checkpoint"] == str(last)
    state = load_checkpoint(samples)
    assert state["vectors"].shape == (2, sum(p.numel() for p in ctx.model.parameters()))
    assert state["epochs"] == [6, 8]  # the run ended at epoch 5
    for k in range(2):
        metrics = ctx.evaluate(state["vectors"][k])
        assert saved["sample_test_acc"][k] == pytest.approx(100 - metrics["test_err"], abs=1e-9)
        assert saved["test_err"][k] == metrics["test_err"]
    mean = load_point(f"{samples}:mean", ctx.model)
    torch.testing.assert_close(mean, state["vectors"].mean(dim=0))
    with pytest.raises(ValueError, match="even"):
        compute_fge(ctx, last, out, samples, cycle_epochs=3, epochs=3, progress=False)


# --------------------------------------------------------------------------- trajectory


def test_trajectory_plane_through_first_middle_last(ctx, run_dir, tmp_path):
    out = tmp_path / "trajectory.npz"
    compute_trajectory(ctx, run_dir, out, grid_points=3, margin=0.0, progress=False)
    saved = _load(out)
    assert list(saved["trajectory_epochs"]) == [2, 3, 4, 5]
    assert list(saved["point_names"]) == [
        "epoch 2", "epoch 3", "epoch 5", "epoch 4", "average (SWA)"]  # fmt: skip
    traj, xy = saved["trajectory_xy"], saved["point_xy"]
    config = json.loads(str(saved["config"]))
    np.testing.assert_allclose(traj[0], [0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(traj[3], [config["dx"], 0.0], atol=1e-9)
    assert traj[1][1] == pytest.approx(config["dy"], abs=1e-9)
    np.testing.assert_allclose(traj[[0, 1, 3, 2]], xy[:4], atol=1e-12)
    np.testing.assert_allclose(xy[4], traj.mean(axis=0), atol=1e-6)
    assert saved["done"].all() and saved["test_err"].shape == (3, 3)
    with pytest.raises(ValueError, match="at least 3"):
        compute_trajectory(ctx, run_dir, tmp_path / "t2.npz", epochs=[2, 5], progress=False)


# --------------------------------------------------------------------------- CLI


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error:"), lines[0]
    return lines[0]


def test_cli_bad_run_dir_exits_2_with_one_line(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "swa_repro.analysis", "plane", f"run_dir={tmp_path / 'nope'}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == EXIT_USER_ERROR, proc.stderr[-2000:]
    assert "not a run directory" in _one_error_line(proc.stderr)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["nope"], "unknown"),
        (["line", "swa={epoch2}:swa"], "holds no swa yet"),
        (["line", "swa={epoch9}:swa"], "cannot read checkpoint"),
        (["line", "sgd={last}:weights"], "unknown selector"),
        (["line", "n_points=1"], "n_points"),
        (["line", "points_per_pass=0"], "points_per_pass"),
        (["line", "multipoint_mode=gpu"], "multipoint_mode"),
        (["rays", "no_such_key=1"], "no_such_key"),
        (["fge", "cycle_epochs=3"], "cycle_epochs"),
        (["plane", "w0={epoch2}:model", "margin=abc"], "margin must be a number"),
        (["trajectory", "margin=abc"], "margin must be a number, got 'abc'"),
        (["line", "t_max=abc"], "t_max must be a number, got 'abc'"),
        (["rays", "max_distance=abc"], "max_distance must be a number, got 'abc'"),
        (["fge", "lr2=abc"], "lr2 must be a number, got 'abc'"),
        (["line", "device=mps"], "device must be auto, cpu, cuda or cuda:N, got 'mps'"),
        (["line", "seed=abc"], "seed must be an integer >= 0, got 'abc'"),
        (["line", "seed=-1"], "seed must be an integer >= 0, got -1"),
        (["line", "eval_batch_size=0"], "eval_batch_size must be a positive integer, got 0"),
        pytest.param(["line", "device=cuda"], "CUDA is not available", marks=NO_CUDA),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(run_dir, tmp_path, capsys, argv, needle):
    paths = RunPaths(run_dir)
    kept = {"epoch2": paths.kept(2), "epoch9": paths.kept(9), "last": paths.last}
    common = [
        f"run_dir={run_dir}",
        f"sgd_run={run_dir}",
        f"sgd_solution={paths.last}",
        f"swa_run={run_dir}",
        f"out_dir={tmp_path}",
        "device=cpu",
    ]
    name, *overrides = (a.format(**kept) for a in argv)
    args = [name, *(common if name != "nope" else []), *overrides]  # overrides win
    assert main(args) == EXIT_USER_ERROR
    assert needle in _one_error_line(capsys.readouterr().err)


def test_config_chunk_defaults_are_the_python_defaults():
    base = OmegaConf.load(Path(ANALYSIS_CONF_DIR) / "base.yaml")
    assert base.points_per_pass == POINTS_PER_PASS and base.multipoint_mode == "auto"


def test_cli_line_writes_its_output(run_dir, tmp_path, capsys):
    argv = [
        "line",
        f"swa_run={run_dir}",
        f"sgd_run={run_dir}",
        f"sgd_solution={RunPaths(run_dir).last}",
        f"out_dir={tmp_path}",
        "n_points=2",
        "device=cpu",
        "progress=false",
    ]
    assert main(argv) == 0
    out = tmp_path / "line.npz"
    assert f"results in {out}" in capsys.readouterr().out
    saved = _load(out)
    assert saved["done"].all()
    settings = json.loads(str(saved["config"]))["settings"]
    assert settings["sgd"] == f"{RunPaths(run_dir).last}:model"


def test_missing_default_runs_name_the_command_that_trains_them(run_dir, tmp_path, capsys):
    """The defaults read the set-up's Table 1 runs, then the figures' SGD solution: when one is
    missing, the error says which command makes it."""
    runs = tmp_path / "runs"
    assert main(["line", f"runs={runs}", "device=cpu"]) == EXIT_USER_ERROR
    swa_run = layout.run_dir(runs, "cifar100", "preresnet164", "swa", 0)
    assert _one_error_line(capsys.readouterr().err) == (
        f"error: {swa_run} does not exist; make it first: "
        f"make reproduce-cifar100 MODELS=preresnet164 SEEDS=0 RUNS={runs}"
    )
    swa_run.parent.mkdir(parents=True)
    swa_run.symlink_to(run_dir)  # the Table 1 SWA run exists now; the SGD solution does not
    assert main(["line", f"runs={runs}", "device=cpu"]) == EXIT_USER_ERROR
    solution = RunPaths(layout.run_dir(runs, "cifar100", "preresnet164", "sgd_from_epoch125", 0))
    assert _one_error_line(capsys.readouterr().err) == (
        f"error: {solution.last} does not exist; make it first: "
        f"python -m swa_repro.figures --setup cifar100/preresnet164 --runs {runs} --seed 0"
    )
    assert main(["plane", f"runs={runs}", "setup=synthetic/small_cnn", "run_seed=3"]) == 2
    assert _one_error_line(capsys.readouterr().err).endswith(
        f"make it first: python -m swa_repro.figures --demo --runs {runs} --seed 3"
    )
