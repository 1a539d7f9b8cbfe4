"""End-to-end sweeps: `python -m swa_repro.sweep` through the real Hydra multirun, its
skip / resume behaviour, the submitit local launcher, and the make targets that call the sweep.

The sweep's --extra overrides reach the SGD and the SWA experiment alike, so `epochs=` cannot
shrink them separately (it would give the SGD run the SWA run's length and move the "SGD" column
off 1 budget). The runs keep the experiments' epochs (SGD 20, SWA 30, budget 20, swa_start 16)
and are made small through the data and batch size instead: about 0.2 s per epoch on one core.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import computed_once
from swa_repro import layout
from swa_repro import sweep as swa_sweep
from swa_repro.compose import compose_config
from swa_repro.layout import RunPaths
from swa_repro.train import train

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "data.train_size=128",
    "data.test_size=64",
    "optim.batch_size=64",
    "progress=false",
    "eval_every=1",
    "swag.samples=2",  # the end's SWAG model average: 2 samples, not 30
    "ema.decays=[0.999]",  # one EMA: the table reads SGD and SWA
]
SEEDS = (0, 1)
METHODS = ("sgd", "swa")
COLUMNS = {  # CSV column -> (method, reading): "final_sgd" or a budget label
    "SGD": ("sgd", "final_sgd"),
    "SWA 1 budget": ("swa", "1"),
    "SWA 1.25 budgets": ("swa", "1.25"),
    "SWA 1.5 budgets": ("swa", "1.5"),
}
README_TEXT = "# scratch README\n\nNo results markers here.\n"
TIMEOUT = 300


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        args, cwd=cwd, env=env(), capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    proc.output = proc.stdout + proc.stderr  # type: ignore[attr-defined]
    return proc


def sweep_command(root: Path, runs: Path) -> list[str]:
    return [
        sys.executable, "-m", "swa_repro.sweep", "table1",
        "--dataset", "synthetic", "--models", "small_cnn", "--seeds", ",".join(map(str, SEEDS)),
        "--runs", str(runs), "--out", str(root / "results"), "--readme", str(root / "README.md"),
        "--extra", " ".join(TINY),
    ]  # fmt: skip


def run_dir(runs: Path, method: str, seed: int) -> Path:
    return layout.run_dir(runs, "synthetic", "small_cnn", method, seed)


def summary(runs: Path, method: str, seed: int) -> dict:
    return json.loads(RunPaths(run_dir(runs, method, seed)).summary.read_text())


def snapshot(runs: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of every run's summary.json and checkpoints."""
    out = {}
    for method in METHODS:
        for seed in SEEDS:
            d = RunPaths(run_dir(runs, method, seed))
            for path in [d.summary, *sorted(d.checkpoints.iterdir())]:
                out[str(path.relative_to(runs))] = (path.read_bytes(), path.stat().st_mtime_ns)
    return out


def without_times(value):
    """A summary or metrics record without its wall-clock fields."""
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k not in ("wall_time_s", "time_s")}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def plan_states(output: str) -> dict[tuple[str, int], str]:
    """(experiment, seed) -> state, from the plan table the sweep prints."""
    states = {}
    for line in output.splitlines():
        m = re.match(r"^(\S+/\S+_(?:sgd|swa))\s+(\d+)\s+(.+?)\s+[\d.]+  (FLOPs|measured)", line)
        if m:
            states[(m.group(1), int(m.group(2)))] = m.group(3)
    return states


@pytest.fixture(scope="session")
def sweep(shared_dir):
    """The synthetic Table 1 sweep, run once per session (every pytest-xdist worker reads the same
    one): 2 methods x 2 seeds through the Hydra multirun."""

    def run_sweep(root: Path) -> None:
        (root / "README.md").write_text(README_TEXT)
        proc = run(sweep_command(root, root / "runs"), cwd=root)
        (root / "sweep.json").write_text(json.dumps([proc.returncode, proc.stdout, proc.stderr]))

    root = computed_once(shared_dir, "sweep", run_sweep)
    code, out, err = json.loads((root / "sweep.json").read_text())
    proc = subprocess.CompletedProcess(sweep_command(root, root / "runs"), code, out, err)
    proc.output = out + err  # type: ignore[attr-defined]
    return {"root": root, "runs": root / "runs", "proc": proc}


def test_sweep_runs_all_and_aggregates(sweep):
    proc, root, runs = sweep["proc"], sweep["root"], sweep["runs"]
    assert proc.returncode == 0, proc.output[-4000:]
    assert "4 of 4 runs left" in proc.stdout
    assert "swa_repro.train -m" in proc.stdout
    found = sorted(runs.glob("*/*/*/*/summary.json"))
    expected = sorted(RunPaths(run_dir(runs, m, s)).summary for m in METHODS for s in SEEDS)
    assert found == expected

    for method in METHODS:
        for seed in SEEDS:
            s = summary(runs, method, seed)
            assert (s["status"], s["method"], s["seed"], s["synthetic"]) == (
                "finished",
                method,
                seed,
                True,
            )
            assert s["epochs"] == {"sgd": 20, "swa": 30}[method] and s["budget"] == 20
            if method == "swa":
                assert {k: (r["epoch"], r["model"]) for k, r in s["budgets"].items()} == {
                    "1": (20, "swa"),
                    "1.25": (25, "swa"),
                    "1.5": (30, "swa"),
                }

    md, csv_path = (
        root / "results" / "table1_synthetic.md",
        root / "results" / "table1_synthetic.csv",
    )
    assert md.is_file() and csv_path.is_file()
    with open(csv_path, newline="") as f:
        rows = {r["column"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(COLUMNS)
    for column, (method, reading) in COLUMNS.items():
        accs = []
        for seed in SEEDS:
            s = summary(runs, method, seed)
            accs.append(
                s["final"]["sgd"]["acc"]
                if reading == "final_sgd"
                else s["budgets"][reading]["test_acc"]
            )
        row = rows[column]
        assert (row["dataset"], row["model"], row["n"], row["pending"]) == (
            "synthetic",
            "small_cnn",
            "2",
            "",
        )
        assert float(row["acc_mean"]) == pytest.approx(statistics.fmean(accs), rel=1e-12, abs=1e-12)
        assert float(row["acc_std"]) == pytest.approx(statistics.stdev(accs), rel=1e-9, abs=1e-12)
        assert math.isfinite(float(row["nll_mean"])) and math.isfinite(float(row["ece_mean"]))
    table = md.read_text()
    assert table.count("(n=2)") == len(COLUMNS)
    assert "missing" not in table and "running" not in table
    assert (root / "README.md").read_text() == README_TEXT  # no markers: left as it was


def test_second_sweep_runs_nothing(sweep):
    assert sweep["proc"].returncode == 0, sweep["proc"].output[-4000:]
    root, runs = sweep["root"], sweep["runs"]
    results = [root / "results" / f"table1_synthetic.{ext}" for ext in ("md", "csv")]
    before = snapshot(runs)
    results_before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in results}

    proc = run(sweep_command(root, runs), cwd=root)
    assert proc.returncode == 0, proc.output[-4000:]
    assert "0 of 4 runs left" in proc.stdout
    assert "swa_repro.train -m" not in proc.output
    assert "+ " + shlex.quote(sys.executable) not in proc.output
    assert set(plan_states(proc.stdout).values()) == {"finished"}
    assert snapshot(runs) == before
    for path, (content, mtime) in results_before.items():
        assert path.read_bytes() == content
        assert path.stat().st_mtime_ns > mtime  # rewritten, with the same content
    assert (root / "README.md").read_text() == README_TEXT


def test_sweep_resumes_the_one_unfinished_run(sweep, tmp_path):
    assert sweep["proc"].returncode == 0, sweep["proc"].output[-4000:]
    runs = tmp_path / "runs"
    shutil.copytree(sweep["runs"], runs)
    (tmp_path / "README.md").write_text(README_TEXT)
    target = run_dir(runs, "swa", 1)
    files = RunPaths(target)
    original = json.loads(files.summary.read_text())
    original_metrics = files.metrics.read_text().splitlines()
    # Back to the state after epoch 20 (the 1-budget checkpoint): no summary, no last.pt,
    # last.prev.pt = epoch 20. metrics.jsonl still shows epoch 30, as after a crash.
    files.summary.unlink()
    files.last.unlink()
    shutil.copy2(files.kept(20), files.previous)
    others = {(m, s): run_dir(runs, m, s) for m in METHODS for s in SEEDS if (m, s) != ("swa", 1)}
    before = {
        p: p.read_bytes()
        for d in others.values()
        for p in [RunPaths(d).summary, *RunPaths(d).checkpoints.iterdir()]
    }

    proc = run(sweep_command(tmp_path, runs), cwd=tmp_path)
    assert proc.returncode == 0, proc.output[-4000:]
    states = plan_states(proc.stdout)
    assert len(states) == 4
    assert states.pop(("synthetic/small_cnn_swa", 1)).startswith("running")
    assert set(states.values()) == {"finished"}
    assert "1 of 4 runs left" in proc.stdout
    assert "swa_repro.train -m" in proc.stdout
    assert f"resuming {target} at epoch 21 from {files.previous}" in proc.stdout
    assert proc.stdout.count("resuming ") == 1
    # the multirun covers what is left only: the finished runs are not even looked at
    assert "experiment=synthetic/small_cnn_swa seed=1 " in proc.stdout
    assert "already finished, nothing to do" not in proc.stdout

    resumed = json.loads(files.summary.read_text())
    assert without_times(resumed) == without_times(original)  # exact resume: bitwise equal
    assert resumed["budgets"]["1.5"]["test_acc"] == original["budgets"]["1.5"]["test_acc"]
    metrics = files.metrics.read_text().splitlines()
    assert [without_times(json.loads(x)) for x in metrics] == [
        without_times(json.loads(x)) for x in original_metrics
    ]
    assert {p: p.read_bytes() for p in before} == before
    assert (tmp_path / "README.md").read_text() == README_TEXT


def test_a_sweep_whose_runs_fail_exits_nonzero(tmp_path):
    """The multirun itself exits 0 past failing cells; the sweep reads the run directories."""
    (tmp_path / "README.md").write_text(README_TEXT)
    command = sweep_command(tmp_path, tmp_path / "runs")
    command[command.index("--extra") + 1] += " optim.lr_init=-1"
    proc = run(command, cwd=tmp_path)
    assert proc.returncode == 1, proc.output[-3000:]
    assert proc.output.count("error: optim.lr_init must be a positive number") == 2 * len(SEEDS)
    for method in METHODS:
        for seed in SEEDS:
            assert (
                f"not finished: synthetic/small_cnn_{method} seed {seed} (failed: optim.lr_init "
                "must be a positive number"
            ) in proc.stdout
    assert f"{2 * len(SEEDS)} of {2 * len(SEEDS)} runs not finished" in proc.stdout
    assert (tmp_path / "results" / "table1_synthetic.md").is_file()  # still aggregated


def test_a_plain_multirun_with_a_failing_cell_exits_1_naming_it(tmp_path):
    """`python -m swa_repro.train -m` goes on past a failing cell (the SGD cell finishes) and
    then exits 1, naming the failed cell with its error (swa_repro.multirun)."""
    runs = tmp_path / "runs"
    proc = run(
        [
            sys.executable,
            "-m",
            "swa_repro.train",
            "-m",
            "experiment=synthetic/small_cnn_sgd,synthetic/small_cnn_swa",
            *TINY,
            "epochs=2",
            "budget=2",
            "checkpoint.keep_epochs=[]",
            "method.swa_start=3",
            f"paths.runs={runs}",
        ],  # fmt: skip
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.output[-3000:]
    assert RunPaths(run_dir(runs, "sgd", 0)).summary.is_file()
    failed = [line for line in proc.stderr.splitlines() if line.startswith("not finished: ")]
    assert len(failed) == 1 and "experiment=synthetic/small_cnn_swa" in failed[0], proc.stderr
    assert failed[0].endswith(
        f"(failed: method.swa_start must lie in 1..epochs=2, got 3) in {run_dir(runs, 'swa', 0)}"
    )
    assert proc.stderr.strip().splitlines()[-1].startswith("error: 1 cell(s) of the multirun")


def test_a_hand_run_in_a_sweep_cell_is_named_and_the_sweep_exits_1(
    sweep, tmp_path, capsys, monkeypatch
):
    """A run trained by hand with overrides sits in a finished sweep's cell directory (it has
    the same name): the sweep names it with the keys that differ, launches nothing (it would
    be refused), leaves it as it is, counts only the cell's own runs, and exits 1."""
    assert sweep["proc"].returncode == 0, sweep["proc"].output[-4000:]
    runs = tmp_path / "runs"
    shutil.copytree(sweep["runs"], runs)
    (tmp_path / "README.md").write_text(README_TEXT)
    cell = run_dir(runs, "swa", 0)
    shutil.rmtree(cell)
    hand = ["experiment=synthetic/small_cnn_swa", *TINY, "epochs=4", "method.swa_start=3"]
    hand = compose_config([*hand, "checkpoint.keep_epochs=[]", f"paths.runs={runs}", "seed=0"])
    assert Path(hand.paths.runs) / hand.name == cell
    train(hand, cell)
    before = {p: p.read_bytes() for p in cell.rglob("*") if p.is_file()}

    def no_launch(*args, **kwargs):
        raise AssertionError("the sweep launched training")

    monkeypatch.setattr(swa_sweep.subprocess, "run", no_launch)
    with pytest.raises(SystemExit) as info:
        swa_sweep.main(sweep_command(tmp_path, runs)[3:])
    assert info.value.code == 1
    out = capsys.readouterr().out
    differs = "holds a run of another config (differs in: epochs, method.swa_start)"
    assert plan_states(out)[("synthetic/small_cnn_swa", 0)] == "other config"
    assert f"  synthetic/small_cnn_swa seed 0: {cell} {differs}" in out
    assert f"not finished: synthetic/small_cnn_swa seed 0 ({differs}) in {cell}" in out
    assert "1 of 4 runs not finished" in out
    assert {p: p.read_bytes() for p in cell.rglob("*") if p.is_file()} == before
    with open(tmp_path / "results" / "table1_synthetic.csv", newline="") as f:
        rows = {r["column"]: r for r in csv.DictReader(f)}
    assert rows["SGD"]["n"] == "2" and rows["SWA 1 budget"]["n"] == "1"
    assert rows["SWA 1 budget"]["pending"] == f"seed 0: {cell} {differs}"


def test_submitit_local_launcher(sweep, tmp_path):
    runs = tmp_path / "runs"
    proc = run(
        [
            sys.executable,
            "-m",
            "swa_repro.train",
            "-m",
            "hydra/launcher=submitit_local",
            "experiment=synthetic/small_cnn_sgd",
            "seed=0,1",
            *TINY,
            f"paths.runs={runs}",
            "hydra.launcher.timeout_min=5",
        ],  # fmt: skip
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.output[-4000:]
    assert "Submitit 'local' sweep output dir" in proc.output
    assert list((runs / ".submitit").glob("*/*_result.pkl"))  # the jobs ran through submitit
    for seed in SEEDS:
        s = summary(runs, "sgd", seed)
        assert (s["status"], s["method"], s["seed"], s["epochs"]) == ("finished", "sgd", seed, 20)
        if sweep["proc"].returncode == 0:  # same config as the sweep's run: same numbers
            assert without_times(s) == without_times(summary(sweep["runs"], "sgd", seed))


def test_slurm_launcher_config_composes(tmp_path):
    proc = run(
        [
            sys.executable,
            "-m",
            "swa_repro.train",
            "hydra/launcher=slurm",
            "hydra.launcher.partition=gpu",
            "--cfg",
            "hydra",
        ],  # fmt: skip
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.output[-4000:]
    launcher = OmegaConf.create(proc.stdout).hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu"
    assert launcher.signal_delay_s == 120
    assert launcher.max_num_timeout == 20
    assert launcher.gpus_per_node == 1
    assert not (tmp_path / "runs").exists()  # --cfg runs nothing


def test_make_reproduce_cifar100_dry_run(tmp_path):
    proc = subprocess.run(
        [
            "make",
            "-n",
            "reproduce-cifar100",
            "MODELS=vgg16",
            "SEEDS=0",
            "DRY_RUN=1",
            f"RUNS={tmp_path}",
        ],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "-m swa_repro.sweep" in line]
    assert len(lines) == 1, proc.stdout
    args = shlex.split(lines[0])
    assert args[1:3] == ["-m", "swa_repro.sweep"]
    assert args[args.index("--models") + 1] == "vgg16"
    assert args[args.index("--seeds") + 1] == "0"
    assert "--dry-run" in args and "--wandb" in args
    assert args[args.index("--dataset") + 1] == "cifar100" and "table1" in args
    assert "logger=wandb" in shlex.split(args[args.index("--extra") + 1])

    # The printed command parses and plans (dry run: nothing trains, nothing is written).
    plan = run([sys.executable, *args[1:]], cwd=REPO)
    assert plan.returncode == 0, plan.output[-4000:]
    assert set(plan_states(plan.stdout)) == {("cifar100/vgg16_sgd", 0), ("cifar100/vgg16_swa", 0)}
    assert "2 of 2 runs left" in plan.stdout
    assert not any(tmp_path.iterdir())
