"""resume=PATH seeds a new run from another run's checkpoint; relaunches continue the run's own."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import swa_of
from swa_repro.checkpoint import load_checkpoint
from swa_repro.compose import compose_config
from swa_repro.layout import RunPaths
from swa_repro.train import train

TINY = [
    "data.train_size=256",
    "data.test_size=128",
    "optim.batch_size=64",
    "progress=false",
    "eval_every=1",
    "swag.samples=2",  # the end's SWAG model average: 2 samples, not 30
]


def compose_cfg(*overrides: str):
    return compose_config([*TINY, *overrides])


@pytest.fixture(scope="module")
def source_checkpoint(tmp_path_factory):
    """An SGD run of 2 epochs with its epoch-2 state kept."""
    root = tmp_path_factory.mktemp("source")
    train(compose_cfg("method=sgd", "epochs=2", "budget=2"), root)
    return RunPaths(root).kept(2)


# SWA with a constant LR from the source's epoch-2 state: epochs 3..5, averaging from epoch 3.
SEEDED = ["schedule=constant", "schedule.lr=0.05", "epochs=5", "budget=4", "method.swa_start=3"]


def test_seeded_run_starts_from_the_given_state(tmp_path, source_checkpoint, capsys):
    summary = train(compose_cfg(*SEEDED, f"resume={source_checkpoint}"), tmp_path)
    assert f"starting {tmp_path} at epoch 3 from {source_checkpoint}" in capsys.readouterr().out
    assert [m["epoch"] for m in summary_metrics(tmp_path)] == [3, 4, 5]
    assert summary["final"]["swa"]["n_averaged"] == 3


def test_relaunch_continues_the_seeded_runs_own_checkpoint(
    tmp_path, source_checkpoint, monkeypatch, capsys
):
    reference = tmp_path / "reference"
    train(compose_cfg(*SEEDED, f"resume={source_checkpoint}"), reference)

    real = F.cross_entropy
    calls = {"n": 0}

    def crash_in_epoch_five(*args, **kwargs):
        calls["n"] += torch.is_grad_enabled()  # training steps only, not evaluation
        if calls["n"] == 10:  # 4 steps per epoch: epochs 3, 4 done, step 2 of epoch 5
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    run = tmp_path / "run"
    monkeypatch.setattr(F, "cross_entropy", crash_in_epoch_five)
    with pytest.raises(KeyboardInterrupt):
        train(compose_cfg(*SEEDED, f"resume={source_checkpoint}"), run)
    monkeypatch.setattr(F, "cross_entropy", real)
    capsys.readouterr()
    train(compose_cfg(*SEEDED, f"resume={source_checkpoint}"), run)  # the same command again
    assert f"at epoch 5 from {RunPaths(run).last}" in capsys.readouterr().out
    ours, ref = (load_checkpoint(RunPaths(d).last) for d in (run, reference))
    for part in (lambda s: s["model"], swa_of):
        assert all(torch.equal(part(ours)[k], part(ref)[k]) for k in part(ref))


def summary_metrics(run_dir):
    import json

    return [json.loads(line) for line in RunPaths(run_dir).metrics.read_text().splitlines()]


def test_keep_every_keeps_a_trajectory(tmp_path):
    train(compose_cfg("method=sgd", "epochs=4", "budget=4", "checkpoint.keep_every=2"), tmp_path)
    kept = sorted(p.name for p in RunPaths(tmp_path).checkpoints.glob("epoch_*.pt"))
    assert kept == ["epoch_0002.pt", "epoch_0004.pt"]
    assert load_checkpoint(RunPaths(tmp_path).kept(2))["epoch"] == 2


def test_a_kept_first_epoch_is_written(tmp_path):
    train(compose_cfg("method=sgd", "epochs=2", "budget=2", "checkpoint.keep_epochs=[1]"), tmp_path)
    assert load_checkpoint(RunPaths(tmp_path).kept(1))["epoch"] == 1


def test_a_checkpoint_of_another_model_cannot_seed_a_run(tmp_path, source_checkpoint):
    from swa_repro.checkpoint import CheckpointError

    with pytest.raises(
        CheckpointError, match="model.name=small_cnn, this run model.name=preresnet110"
    ):
        train(compose_cfg(*SEEDED, "model=preresnet110", f"resume={source_checkpoint}"), tmp_path)
    with pytest.raises(CheckpointError, match="not before epochs=2"):
        train(
            compose_cfg(
                "epochs=2", "budget=2", "method.swa_start=1", f"resume={source_checkpoint}"
            ),
            tmp_path / "b",
        )


def test_a_second_process_on_the_same_run_directory_is_refused(tmp_path):
    from swa_repro.config_check import ConfigError
    from swa_repro.run_files import RunFiles

    with RunFiles(tmp_path).locked():
        with pytest.raises(ConfigError, match="in use by another process"):
            train(compose_cfg("method=sgd", "epochs=1", "budget=1"), tmp_path)
    train(compose_cfg("method=sgd", "epochs=1", "budget=1"), tmp_path)  # free again afterwards
