"""Beyond the paper: EMA and SWAG collectors, the SWAG model average, calibration with temperature
scaling on a held-out split, the weights export, the posterior command and the comparison table.

Most assertions share one tiny real SWA run (module scope, in-process): 320 synthetic training
images of which 64 held out, batch 32 (8 steps an epoch), 4 epochs, SWA from epoch 2 (models
collected after epochs 2, 3, 4; SWAG max_rank 2, so its ring of deviations wraps), EMAs 0.9
and 0.99 evaluated at every evaluated epoch, 2 posterior samples per variant, every epoch's
checkpoint kept (the collected weights, for the independent computations).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import swa_repro
from swa_repro import posterior
from swa_repro.aggregate import main as aggregate_main
from swa_repro.checkpoint import load_checkpoint
from swa_repro.compose import compose_config
from swa_repro.config_check import ConfigError, validate_config
from swa_repro.data import Normalizer, eval_batches, load_data
from swa_repro.data.splits import hold_out
from swa_repro.ema import EMA
from swa_repro.evaluator import Evaluator
from swa_repro.metrics import evaluate
from swa_repro.posterior import PosteriorSettings, model_average
from swa_repro.swag import Swag
from swa_repro.train import train

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "data.train_size=320", "data.val_size=64", "data.test_size=96", "epochs=4", "budget=3",
    "method.swa_start=2", "eval_every=1", "optim.batch_size=32", "eval_batch_size=48",
    "progress=false", "ema.decays=[0.9,0.99]", "ema.eval=every", "swag.max_rank=2",
    "swag.samples=2", "checkpoint.keep_every=1",
]  # fmt: skip


class TinyDropoutNet(nn.Module):
    """BatchNorm and dropout (train-mode passes draw from the global RNG), for the RNG check."""

    def __init__(self, num_classes: int, batch_norm: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.drop(torch.relu(self.bn(self.conv(x))))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    train(compose_config(TINY), run_dir)
    return run_dir


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def parameters(state: dict, names: list[str]) -> list[torch.Tensor]:
    return [state[name].double() for name in names]


# --- SWAG and EMA against independent computations ----------------------------------------------


def test_swag_moments_and_deviations_equal_those_of_the_collected_weights(run):
    """mean, second moment and the last K = 2 deviations (each against the mean after its own
    inclusion), computed in float64 from the SGD weights the kept checkpoints hold."""
    names = [n for n, _ in swa_repro.load_model(run, "sgd", normalize=False).named_parameters()]
    collected = [
        parameters(load_checkpoint(run / f"checkpoints/epoch_{e:04d}.pt")["model"], names)
        for e in (2, 3, 4)
    ]
    means = [[sum(ws) / len(ws) for ws in zip(*collected[: i + 1], strict=True)] for i in range(3)]
    sq_mean = [sum(w.square() for w in ws) / 3 for ws in zip(*collected, strict=True)]
    expected_deviations = [
        torch.stack([(collected[i][p] - means[i][p]).flatten() for i in (1, 2)])
        for p in range(len(names))
    ]
    saved = load_checkpoint(run / "checkpoints/last.pt")["collectors"]["swag"]
    assert saved["count"] == 3 and saved["max_rank"] == 2
    exported = load_file(str(run / "weights/swag.safetensors"))
    for p, name in enumerate(names):
        torch.testing.assert_close(saved["sq_mean"][p].double(), sq_mean[p], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(
            exported[f"mean.{name}"].double(), means[2][p], rtol=1e-5, atol=1e-7
        )
        torch.testing.assert_close(
            exported[f"deviations.{name}"].double(), expected_deviations[p], rtol=1e-4, atol=1e-6
        )
    kept = load_checkpoint(run / "checkpoints/epoch_0004.pt")["collectors"]["swag"]
    assert all(
        torch.equal(a, b) for a, b in zip(kept["deviations"], saved["deviations"], strict=True)
    )


def test_ema_equals_its_closed_form_over_a_few_steps():
    """w_T = d^T w_0 + (1 - d) sum_t d^(T - t) w_t for the parameters and the BN buffers."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).double()
    ema, decay = EMA(model, 0.9), 0.9
    history = [[t.detach().clone() for t in (*model.parameters(), model[1].running_mean)]]
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(torch.randn(4, dtype=torch.float64))
        ema.after_step(model)
        history.append([t.detach().clone() for t in (*model.parameters(), model[1].running_mean)])
    steps = len(history) - 1
    for i, got in enumerate([*ema.module.parameters(), ema.average_buffers[0]]):
        closed = decay**steps * history[0][i] + sum(
            (1 - decay) * decay ** (steps - t) * history[t][i] for t in range(1, steps + 1)
        )
        torch.testing.assert_close(got, closed, rtol=1e-12, atol=1e-12)
    assert ema.updates == 5


def test_ema_starts_from_the_weights_a_seeded_run_begins_with():
    model = nn.Linear(2, 2)
    ema = EMA(model, 0.99)
    with torch.no_grad():
        model.weight.fill_(3.0)  # as restore() loads a seed checkpoint's weights
    ema.begin(model)
    assert torch.equal(ema.module.weight, model.weight)
    carried = EMA(nn.Linear(2, 2), 0.99)
    carried.load_state_dict(ema.state_dict())  # the seed checkpoint carried this EMA
    carried.begin(nn.Linear(2, 2))
    assert torch.equal(carried.module.weight, model.weight)


def test_adding_emas_changes_no_sgd_or_swa_number_even_with_dropout(tmp_path):
    """An EMA's BN refresh of a model with dropout draws from the global RNG: it runs on a
    forked one, so SGD and SWA are bitwise those of a run without EMA."""
    base = [*TINY[:9], "model._target_=test_uncertainty.TinyDropoutNet", "swag.samples=1"]
    records = {}
    for name, decays in (("without", "[]"), ("with", "[0.9,0.99]")):
        train(compose_config([*base, f"ema.decays={decays}", "ema.eval=every"]), tmp_path / name)
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        records[name] = [json.loads(line) for line in lines]
    for without, with_ema in zip(records["without"], records["with"], strict=True):
        assert {k: v for k, v in with_ema.items() if k in without and k != "time_s"} == {
            k: v for k, v in without.items() if k != "time_s"
        }
    assert "ema_0.9_test_acc" in records["with"][-1]
    states = [load_checkpoint(tmp_path / n / "checkpoints/last.pt") for n in ("without", "with")]
    assert torch.equal(states[0]["rng"]["torch"], states[1]["rng"]["torch"])
    for key, value in states[0]["model"].items():
        assert torch.equal(states[1]["model"][key], value), key


# --- the model average ----------------------------------------------------------------------------


def test_one_sample_at_scale_zero_is_the_swa_prediction_after_the_same_refresh(run, tmp_path):
    cfg = compose_config(TINY)
    saved = load_checkpoint(run / "checkpoints/last.pt")
    evaluator = Evaluator.open(cfg, saved["epoch"])
    swag = posterior.posterior_of(saved, run / "checkpoints/last.pt")
    mean = posterior.mean_network(cfg, saved)
    zero = PosteriorSettings(samples=1, scale=0.0, scale_diag=0.0)
    averages, _ = model_average(swag, mean, evaluator, zero, 0, tmp_path)
    swa = posterior.mean_network(cfg, saved)
    evaluator.refresh(swa)
    logits, _ = evaluator.logits(swa)
    expected = logits.double().softmax(dim=1)
    for key in ("swag_diag", "swag"):
        assert torch.equal(averages[key].splits["test"].probabilities(), expected), key
    acc = averages["swag"].splits["test"].curve[0]["acc"]
    assert acc == pytest.approx(summary_of(run)["final"]["swa"]["acc"], abs=1e-9)


def test_summary_holds_the_model_averages_and_the_calibration(run):
    summary = summary_of(run)
    for key in ("swag_diag", "swag"):
        entry = summary["final"][key]
        assert entry["samples"] == 2 and set(entry) >= {"acc", "nll", "ece", "brier"}
    calibration = summary["calibration"]
    assert list(calibration) == ["sgd", "swa", "swag_diag", "swag", "ema_0.9", "ema_0.99"]
    for entry in calibration.values():  # data.val_size=64: every model has its temperature
        assert entry["temperature"] > 0 and entry["scaled"]["acc"] == entry["test"]["acc"]
    assert calibration["swa"]["test"]["acc"] == pytest.approx(summary["final"]["swa"]["acc"])
    record = json.loads((run / "calibration.json").read_text())["models"]["swa"]
    assert sum(record["reliability"]["count"]) == 96 and len(record["reliability"]["edges"]) == 16
    curve = json.loads((run / "posterior/last/posterior.json").read_text())["variants"]["swag"]
    assert len(curve["curve"]) == 2 and curve["curve"][-1] == {
        k: v for k, v in summary["final"]["swag"].items() if k not in ("samples", "scale")
    }


def test_posterior_command_resumes_sample_by_sample_to_the_same_numbers(run, tmp_path, monkeypatch):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = [str(run), "swag.samples=3", "device=cpu"]
    posterior.main([*args, f"out={whole}"])
    real_draw, calls = Swag.draw, []

    def crashing_draw(self, *rest, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # SWAG-Diag's 3 samples done, SWAG's first saved, the second dies
            raise RuntimeError("killed")
        return real_draw(self, *rest, **kwargs)

    monkeypatch.setattr(Swag, "draw", crashing_draw)
    with pytest.raises(RuntimeError, match="killed"):
        posterior.main([*args, f"out={cut}"])
    assert load_checkpoint(cut / "state.pt")["variants"]["swag"]["test"]["samples"] == 1
    monkeypatch.setattr(Swag, "draw", real_draw)
    posterior.main([*args, f"out={cut}"])
    for name in ("posterior.json", "calibration.json"):
        assert json.loads((cut / name).read_text()) == json.loads((whole / name).read_text())


def test_posterior_of_a_kept_checkpoint_and_variants_a_posterior_cannot_give(run, tmp_path):
    posterior.main([str(run), "checkpoint=epoch_0003", f"out={tmp_path}", "swag.samples=1"])
    result = json.loads((tmp_path / "posterior.json").read_text())
    assert result["collected"] == 2 and list(result["variants"]) == ["swag_diag", "swag"]
    settings = PosteriorSettings()
    diagonal = Swag([torch.zeros(2)], low_rank=False)
    diagonal.update([torch.ones(2)], [torch.ones(2)])
    assert posterior.plan_variants(diagonal, settings)[1]["swag"].startswith("no deviations")
    one = Swag([torch.zeros(2)], max_rank=3)
    one.update([torch.ones(2)], [torch.ones(2)])
    assert (
        "needs at least 2 collected models, has 1"
        in posterior.plan_variants(one, settings)[1]["swag"]
    )


# --- weights -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sgd", "swa", "ema", "ema_0.99"])
def test_load_model_reproduces_the_reported_test_accuracy(run, name):
    cfg = compose_config(TINY)
    data = load_data(cfg.data)
    normalize = Normalizer(cfg.model.mean, cfg.model.std, torch.device("cpu"))
    network = swa_repro.load_model(run, name, normalize=False)
    metrics = evaluate(network, eval_batches(data.test_x, data.test_y, 48, normalize))
    key = "ema_0.9" if name == "ema" else name
    reported = summary_of(run)["final"][key]
    assert (metrics["acc"], metrics["nll"]) == (reported["acc"], reported["nll"])
    with_input = swa_repro.load_model(run, name)  # takes images in [0, 1]
    images = data.test_x[:8]
    assert torch.equal(with_input(images.float() / 255.0), network(normalize(images)))


def test_load_swag_samples_a_network_with_its_own_bn_statistics(run):
    posterior_ = swa_repro.load_swag(run)
    network = posterior_.sample(torch.Generator().manual_seed(1))
    mean = swa_repro.load_model(run, "swa", normalize=False)
    assert not network.training
    assert not torch.equal(network.network.fc.weight, mean.fc.weight)
    assert not torch.equal(network.network.bn.running_var, mean.bn.running_var)


def test_weights_metadata_names_the_network_and_its_input(run):
    from safetensors import safe_open

    with safe_open(str(run / "weights/swa.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["target"] == "swa_repro.models.SmallCNN" and meta["num_classes"] == "10"
    assert json.loads(meta["input_mean"]) == [0.4914, 0.4822, 0.4465] and meta["n_averaged"] == "3"
    assert "recomputed" in meta["bn"]
    assert float(meta["test_acc"]) == pytest.approx(summary_of(run)["final"]["swa"]["acc"])


# --- the held-out split --------------------------------------------------------------------------


def test_held_out_split_is_a_fixed_choice_left_out_of_training():
    cfg = compose_config(["data.train_size=200", "data.test_size=10"])
    whole = load_data(cfg.data)
    assert whole.val_x is None and whole.val_size == 0  # val_size 0: the splits as they were
    split = hold_out(whole, 50)
    assert (len(split.train_y), len(split.val_y)) == (150, 50)
    pixels = {tuple(x.flatten()[:64].tolist()) for x in (*split.train_x, *split.val_x)}
    assert len(pixels) == 200  # disjoint, together the training set
    again = load_data(
        compose_config(
            ["data.train_size=200", "data.test_size=10", "data.val_size=50", "seed=7"]
        ).data
    )
    assert torch.equal(again.val_x, split.val_x) and torch.equal(again.train_x, split.train_x)


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["swag.max_rank=1"], "swag.max_rank must be an integer >= 2, got 1"),
        (["swag.max_rank=2.5"], "swag.max_rank must be an integer >= 2, got 2.5"),
        (["swag.samples=0"], "swag.samples must be a positive integer, got 0"),
        (["swag.scale=0"], "swag.scale must be a finite positive number, got 0"),
        (["swag.scale_diag=-1"], "swag.scale_diag must be a finite positive number, got -1"),
        (["ema.decays=[0.9,1.0]"], "ema.decays entries must lie in (0, 1), got 1.0"),
        (["ema.eval=sometimes"], "ema.eval must be one of budgets, every, got 'sometimes'"),
        (["data.val_size=-1"], "data.val_size must be an integer >= 0, got -1"),
        (
            ["data.val_size=300"],
            "data.val_size=300 leaves 20 of 320 training images, fewer than one batch",
        ),
    ],
)
def test_bad_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as error:
        validate_config(compose_config([*TINY[:9], *overrides]))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_imagenet_has_no_held_out_split():
    cfg = compose_config(["experiment=imagenet/resnet50_swa", "data.val_size=10"])
    with pytest.raises(ConfigError, match="data.val_size is not available for imagenet"):
        validate_config(cfg)


def test_low_rank_off_lets_max_rank_be_anything():
    validate_config(compose_config([*TINY[:9], "swag.low_rank=false", "swag.max_rank=1"]))


def test_bad_posterior_and_weights_requests_exit_2_writing_nothing(run, tmp_path, capsys):
    sgd_run = tmp_path / "sgd"
    train(compose_config([*TINY[:9], "method=sgd", "ema.decays=[]"]), sgd_run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-m", "swa_repro.posterior", str(sgd_run)],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error:") and "holds no SWAG posterior" in proc.stderr
    capsys.readouterr()
    for args, message in [
        ([str(run), "swag.scale=0"], "swag.scale must be a finite positive number"),
        ([str(run), "swag.samples=1"], "already averages 2 samples"),
        ([str(run), "swag.scale=0.4"], "differs in: scale"),
        ([str(run), "nosuch=1"], "unknown argument 'nosuch=1'"),
        ([str(run), "checkpoint=epoch_0009"], "no checkpoint"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            posterior.main(args)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith("error:") and message in err, err
        assert err.count("\n") == 1, err
    no_split = compose_config([*TINY[:9], "data.val_size=0"])
    with pytest.raises(ConfigError, match="needs a held-out split"):
        posterior.command_settings(no_split, {"temperature": True})
    with pytest.raises(ConfigError, match=r"has no ema_0.5 model .*it has: ema_0.9, ema_0.99, sgd"):
        swa_repro.load_model(run, "ema_0.5")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


# --- reliability figure and the comparison table ---------------------------------------------------


def test_reliability_figure_reads_and_draws(run, tmp_path):
    out = tmp_path / "reliability.png"
    proc = subprocess.run(
        [sys.executable, str(REPO / "plots/reliability.py"), f"{run}:sgd,swa,swag", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and out.with_suffix(".pdf").is_file()
    bad = subprocess.run(
        [sys.executable, str(REPO / "plots/reliability.py"), f"{run}:nosuch", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (
        bad.returncode == 2 and bad.stderr.startswith("error:") and "no model nosuch" in bad.stderr
    )


def write_run(runs: Path, method: str, seed: int, calibration: dict, final: dict) -> None:
    run_dir = runs / "cifar100" / "wrn28x10" / method / f"seed{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("epochs: 300\n")
    (run_dir / "summary.json").write_text(json.dumps({"final": final, "calibration": calibration}))


def entry(acc: float, nll: float, scaled_nll: float | None = None) -> dict:
    metrics = {"acc": acc, "nll": nll, "ece": 0.05, "brier": 0.3}
    scaled = None if scaled_nll is None else {**metrics, "nll": scaled_nll}
    return {
        "test": metrics,
        "scaled": scaled,
        "temperature": 1.5 if scaled else None,
        "reason": None,
    }


def test_uncertainty_table_means_stds_and_published_values(tmp_path):
    runs = tmp_path / "runs"
    for seed, acc in ((0, 80.0), (1, 82.0)):
        write_run(runs, "sgd", seed, {"sgd": entry(acc, 0.8), "ema_0.999": entry(acc + 1, 0.7)},
                  {"sgd": {}, "ema_0.999_bnavg": {"acc": 50.0, "nll": 2.0, "ece": 0.2}})  # fmt: skip
        write_run(runs, "swa", seed, {"swa": entry(acc + 2, 0.6), "swag": entry(acc + 3, 0.5)}, {})
    write_run(runs / "heldout", "swa", 0, {"swa": entry(81.0, 0.7, 0.65)}, {})
    aggregate_main(["uncertainty", "--dataset", "cifar100", "--runs", str(runs),
                    "--models", "wrn28x10", "--seeds", "0,1", "--out", str(tmp_path / "out")])  # fmt: skip
    md = (tmp_path / "out/uncertainty_cifar100.md").read_text()
    assert (
        "| SGD | 2 | 81.00 ± 1.41 | 0.8000 ± 0.0000 | 0.0500 ± 0.0000 | 0.3000 ± 0.0000 | "
        "NLL 0.8 ± 0.01 [swag_readme]; NLL 0.7958 [ub_cifar]; acc 80.76 [ub_cifar] |"
    ) in md
    assert "| EMA 0.999 of the SGD run, averaged BN, no refresh | 2 | 50.00 ± 0.00 |" in md
    assert "| SWA, temperature-scaled | 1 | 81.00 | 0.6500 | 0.0500 | 0.3000 |" in md
    assert "| SWAG-Diag | 0 | - | - | - | - | NLL 0.62 ± 0 [swag_readme] |" in md
    assert "SWA-Dropout 0.06 and SWA-Temp 0.02 (typos)" in md


def test_posterior_rebuilt_from_its_exported_moments_draws_the_same_samples():
    torch.manual_seed(0)
    like = [torch.zeros(3, 2), torch.zeros(4)]
    swag, mean = Swag(like, max_rank=3), [torch.randn(3, 2), torch.randn(4)]
    for _ in range(5):  # the ring of 3 rows wraps
        swag.update([torch.randn(3, 2), torch.randn(4)], mean)
    rebuilt = Swag.from_moments(swag.sq_mean, swag.count, 3, swag.chronological_deviations())
    for low_rank in (False, True):
        draws = [
            s.draw(mean, torch.Generator().manual_seed(4), 0.5, low_rank) for s in (swag, rebuilt)
        ]
        for a, b in zip(*draws, strict=True):
            assert torch.equal(a, b)
