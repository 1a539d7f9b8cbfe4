"""W&B logging: offline runs, failures never stop training, resumed runs continue the same W&B run."""

from __future__ import annotations

import json

import pytest
import torch.nn.functional as F
import wandb

from swa_repro.checkpoint import load_checkpoint
from swa_repro.compose import compose_config
from swa_repro.layout import RunPaths
from swa_repro.logger import wandb_mode
from swa_repro.train import train

TINY = [
    "data.train_size=256",
    "data.test_size=128",
    "epochs=3",
    "budget=2",
    "method.swa_start=2",
    "eval_every=1",
    "optim.batch_size=64",
    "progress=false",
    "swag.samples=2",  # the end's SWAG model average: 2 samples, not 30
]


def compose_cfg(*overrides: str):
    return compose_config([*TINY, "logger=wandb", *overrides])


class FakeRun:
    def __init__(self, fail_on_log_call: int | None = None):
        self.logged: list[tuple[dict, int]] = []
        self.image_logs: list[dict] = []
        self.summary: dict = {}
        self.finished = False
        self.fail_on_log_call = fail_on_log_call

    def log(self, record, step=None):
        if step is None:  # images are logged without a step
            self.image_logs.append(record)
            return
        if self.fail_on_log_call is not None and len(self.logged) + 1 == self.fail_on_log_call:
            raise ConnectionError("lost connection to W&B")
        self.logged.append((dict(record), step))

    def finish(self):
        self.finished = True


class InitCalls(list):
    """(kwargs, run) of every wandb.init call; runs fail on log call `fail_on_log_call` if set."""

    fail_on_log_call: int | None = None


@pytest.fixture
def fake_wandb(monkeypatch):
    calls = InitCalls()

    def init(**kwargs):
        run = FakeRun(fail_on_log_call=calls.fail_on_log_call)
        calls.append((kwargs, run))
        return run

    monkeypatch.setattr(wandb, "init", init)
    return calls


def test_wandb_receives_config_metrics_and_budget_summary(tmp_path, fake_wandb):
    summary = train(compose_cfg("logger.mode=offline"), tmp_path)
    ((kwargs, run),) = fake_wandb
    assert kwargs["group"] == "synthetic/small_cnn/swa"
    assert kwargs["name"] == "synthetic-small_cnn-swa-seed0"
    assert kwargs["mode"] == "offline" and kwargs["resume"] == "allow"
    assert kwargs["config"]["method"]["swa_start"] == 2 and kwargs["config"]["epochs"] == 3
    metrics = [json.loads(line) for line in RunPaths(tmp_path).metrics.read_text().splitlines()]
    assert [step for _, step in run.logged] == [m["epoch"] for m in metrics] == [1, 2, 3]
    assert [record for record, _ in run.logged] == metrics
    for label, reading in summary["budgets"].items():
        assert run.summary[f"budget_{label}/test_acc"] == reading["test_acc"]
    assert isinstance(run.image_logs[-1]["convergence"], wandb.Image)
    assert (tmp_path / "convergence.png").stat().st_size > 0
    assert run.finished
    assert load_checkpoint(RunPaths(tmp_path).last)["logger_run_id"] == kwargs["id"]


def test_failing_wandb_init_does_not_stop_training(tmp_path, monkeypatch, capsys):
    def broken_init(**kwargs):
        raise RuntimeError("api_key not configured (no-tty)\ncall wandb.login")

    monkeypatch.setattr(wandb, "init", broken_init)
    summary = train(compose_cfg("logger.mode=online"), tmp_path)
    assert summary["status"] == "finished"
    warnings = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: W&B")
    ]
    assert len(warnings) == 1 and "api_key not configured" in warnings[0]


def test_wandb_losing_its_connection_mid_run_does_not_stop_training(tmp_path, fake_wandb, capsys):
    fake_wandb.fail_on_log_call = 2
    summary = train(compose_cfg("logger.mode=offline"), tmp_path)
    assert summary["status"] == "finished"
    ((_, run),) = fake_wandb
    assert [step for _, step in run.logged] == [
        1
    ]  # logging stopped at the failure, training did not
    assert "lost connection to W&B" in capsys.readouterr().out
    assert len(RunPaths(tmp_path).metrics.read_text().splitlines()) == 3  # local log complete


def test_resumed_run_continues_the_same_wandb_run(tmp_path, fake_wandb, monkeypatch):
    real_cross_entropy = F.cross_entropy
    calls = {"n": 0}

    def crash_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # 4 steps per epoch: step 2 of epoch 2
            raise KeyboardInterrupt
        return real_cross_entropy(*args, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(compose_cfg("logger.mode=offline"), tmp_path)
    monkeypatch.setattr(F, "cross_entropy", real_cross_entropy)
    train(compose_cfg("logger.mode=offline"), tmp_path)
    (first, first_run), (second, _) = fake_wandb
    assert first_run.finished  # the crashed run was closed cleanly
    assert second["id"] == first["id"] and second["resume"] == "allow"


def test_real_offline_run_writes_its_files_under_the_run_directory(tmp_path):
    summary = train(compose_cfg("logger.mode=offline"), tmp_path)
    assert summary["status"] == "finished"
    run_id = load_checkpoint(RunPaths(tmp_path).last)["logger_run_id"]
    (run_file,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    assert run_file.stat().st_size > 0


def test_mode_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode(None) == "offline"
    assert wandb_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_mode(None) == "online"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(None) == "online"


def test_aggregation_logs_its_table_to_wandb(monkeypatch, tmp_path):
    from swa_repro import aggregate

    logged = []

    class TableRun:
        def log(self, values):
            logged.append(values)

        def finish(self):
            logged.append("finished")

    inits = []

    def init(**kwargs):
        inits.append(kwargs)
        return TableRun()

    monkeypatch.setattr(wandb, "init", init)
    rows = [{field: i for field in aggregate.CSV_FIELDS} for i in range(3)]
    aggregate.log_to_wandb("table1", "cifar100", rows)
    assert inits[0]["job_type"] == "aggregate" and inits[0]["name"] == "table1-cifar100"
    table = logged[0]["table1_cifar100"]
    assert isinstance(table, wandb.Table)
    assert table.columns == aggregate.CSV_FIELDS and table.data == [
        [i] * len(aggregate.CSV_FIELDS) for i in range(3)
    ]
    assert logged[-1] == "finished"


def test_aggregation_survives_a_failing_wandb(monkeypatch, capsys):
    from swa_repro import aggregate

    def broken(**kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(wandb, "init", broken)
    aggregate.log_to_wandb("table1", "cifar10", [])
    assert "warning: W&B table not logged (ConnectionError: no network)" in capsys.readouterr().out
