"""The Table 1 experiment configs compose and carry the protocol's numbers (docs/protocol.md, Recipes (Table 1)).

The expected values are written out here as an independent table, not read from conf/.
"""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from swa_repro.budgets import budget_epochs
from swa_repro.compose import CONF_DIR, compose_config
from swa_repro.config_check import validate_config

EXPERIMENT_DIR = Path(CONF_DIR) / "experiment"

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)

# model -> (lr_init, weight_decay, budget (SGD epochs), swa_start, {data: swa_lr}, mean, std)
RECIPES = {
    "vgg16": (
        0.05,
        5e-4,
        200,
        161,
        {"cifar100": 0.01, "cifar10": 0.01},
        IMAGENET_MEAN,
        IMAGENET_STD,
    ),
    "preresnet110": (
        0.1,
        3e-4,
        150,
        126,
        {"cifar100": 0.05, "cifar10": 0.01},
        CIFAR_MEAN,
        CIFAR_STD,
    ),
    "preresnet164": (
        0.1,
        3e-4,
        150,
        126,
        {"cifar100": 0.05, "cifar10": 0.01},
        CIFAR_MEAN,
        CIFAR_STD,
    ),
    "wrn28x10": (0.1, 5e-4, 200, 161, {"cifar100": 0.05, "cifar10": 0.05}, CIFAR_MEAN, CIFAR_STD),
}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
METHODS = ("sgd", "swa")

EXPECTED_NAMES = {
    f"{data}/{model}_{method}" for data in NUM_CLASSES for model in RECIPES for method in METHODS
}


def _found(*groups: str) -> list[str]:
    return sorted(
        f"{group}/{path.stem}"
        for group in groups
        for path in (EXPERIMENT_DIR / group).glob("*.yaml")
    )


TABLE1_FILES = [name for name in _found("cifar10", "cifar100") if "fixed_lr" not in name]
DEMO_FILES = _found("synthetic")


def _compose(experiment: str, *overrides: str):
    return compose_config([f"experiment={experiment}", *overrides])


def _close(actual, expected, tol=1e-12) -> bool:
    return len(actual) == len(expected) and all(
        abs(a - e) <= tol for a, e in zip(actual, expected, strict=True)
    )


def test_all_sixteen_table1_experiments_exist():
    assert set(TABLE1_FILES) == EXPECTED_NAMES
    assert len(EXPECTED_NAMES) == 16


@pytest.mark.parametrize("experiment", TABLE1_FILES)
def test_table1_experiment_matches_protocol(experiment):
    data_name, stem = experiment.split("/")
    model_name, method = stem.rsplit("_", 1)
    lr_init, wd, budget, swa_start, swa_lrs, mean, std = RECIPES[model_name]
    cfg = _compose(experiment)
    OmegaConf.resolve(cfg)  # every interpolation resolves

    assert cfg.data.name == data_name
    assert cfg.data.num_classes == NUM_CLASSES[data_name]
    assert cfg.model.name == model_name
    assert _close(list(cfg.model.mean), mean), cfg.model.mean
    assert _close(list(cfg.model.std), std), cfg.model.std

    assert cfg.optim.lr_init == pytest.approx(lr_init, rel=1e-12)
    assert cfg.optim.weight_decay == pytest.approx(wd, rel=1e-12)
    assert cfg.optim.momentum == pytest.approx(0.9)
    assert cfg.optim.batch_size == 128

    assert cfg.budget == budget
    assert cfg.schedule.name == "paper"
    assert cfg.eval_every == 5
    assert cfg.method.name == method
    if method == "sgd":
        assert cfg.method.swa is False
        assert cfg.epochs == budget
    else:
        assert cfg.method.swa is True
        assert cfg.epochs == budget * 3 // 2
        assert cfg.method.swa_start == swa_start
        assert cfg.method.swa_lr == pytest.approx(swa_lrs[data_name], rel=1e-12)
        assert cfg.method.swa_c_epochs == 1

    validate_config(cfg)


def test_preresnet_swa_lr_differs_between_cifar10_and_cifar100():
    for model in ("preresnet110", "preresnet164"):
        assert _compose(f"cifar10/{model}_swa").method.swa_lr == pytest.approx(0.01)
        assert _compose(f"cifar100/{model}_swa").method.swa_lr == pytest.approx(0.05)


@pytest.mark.parametrize("experiment", TABLE1_FILES)
def test_budget_epochs_of_table1_experiments(experiment):
    model_name, method = experiment.split("/")[1].rsplit("_", 1)
    cfg = _compose(experiment)
    if method == "sgd":
        expected = {RECIPES[model_name][2]: ["1"]}
    elif model_name.startswith("preresnet"):
        expected = {150: ["1"], 187: ["1.25"], 225: ["1.5"]}
    else:
        expected = {200: ["1"], 250: ["1.25"], 300: ["1.5"]}
    assert budget_epochs(cfg) == expected


def test_budget_readings_that_fall_on_one_epoch_are_all_kept():
    # budget 2: floor(2 x 1) = floor(2 x 1.25) = 2, floor(2 x 1.5) = 3
    cfg = _compose("synthetic/small_cnn_swa")
    cfg.budget, cfg.epochs = 2, 3
    assert budget_epochs(cfg) == {2: ["1", "1.25"], 3: ["1.5"]}


def test_demo_experiments_exist():
    assert set(DEMO_FILES) == {"synthetic/small_cnn_sgd", "synthetic/small_cnn_swa"}


@pytest.mark.parametrize("method", ["sgd", "swa"])
def test_fixed_lr_experiment_carries_section_4_4(method):
    cfg = _compose(f"cifar100/wrn28x10_fixed_lr_{method}")
    validate_config(cfg)
    assert (cfg.data.name, cfg.model.name, cfg.method.name) == ("cifar100", "wrn28x10", method)
    assert cfg.schedule.name == "constant" and cfg.schedule.lr == pytest.approx(0.05)
    assert cfg.epochs == 300
    assert cfg.name == f"cifar100/wrn28x10/{method}_fixed_lr/seed0"  # not the Table 1 run directory
    if method == "swa":
        assert cfg.method.swa_start == 140
        assert budget_epochs(cfg) == {300: ["1"]}


@pytest.mark.parametrize("experiment", DEMO_FILES)
def test_demo_experiment_composes_and_validates(experiment):
    cfg = _compose(experiment)
    OmegaConf.resolve(cfg)
    assert cfg.data.name == "synthetic"
    assert cfg.model.name == "small_cnn"
    assert cfg.method.name == experiment.rsplit("_", 1)[1]
    validate_config(cfg)
