"""The flatness table (python -m swa_repro.aggregate sharpness) from hand-written analysis files:
every number below is written out here, and the means, stds and widths are computed here
independently (numpy, and the widths by hand)."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

from swa_repro import aggregate, layout
from swa_repro.sharpness_table import ray_width

SETUP = "cifar100/preresnet164"
NAN = math.nan
# seed -> analysis -> arrays; origins in the analyses' own order (not the table's)
HESSIAN = {
    0: {
        "origins": ["SWA", "SGD", "EMA 0.999"],
        "done": [True, True, True],
        "top_eigenvalues": [[10.0, 8.0], [30.0, 20.0], [15.0, NAN]],  # EMA's second n/c
        "min_eigenvalue": [-1.0, -2.0, -1.5],
        "trace": [100.0, 300.0, 150.0],
        "trace_se": [3.0, 4.0, 5.0],
        "weight_norm": [50.0, 60.0, 55.0],
        "train_nll": [0.10, 0.05, 0.08],
        "test_acc": [80.0, 78.0, 79.0],
        "settings": {"images": 100, "probes": 100},
    },
    1: {
        "origins": ["SWA", "SGD", "EMA 0.999"],
        "done": [True, True, False],  # the EMA interrupted
        "top_eigenvalues": [[12.0, 9.0], [26.0, 21.0], [NAN, NAN]],
        "min_eigenvalue": [-0.5, -3.0, NAN],
        "trace": [110.0, 280.0, NAN],
        "trace_se": [6.0, 8.0, NAN],
        "weight_norm": [52.0, 61.0, NAN],
        "train_nll": [0.12, 0.04, NAN],
        "test_acc": [81.0, 77.0, NAN],
        "settings": {"images": 200, "probes": 100},  # differs from seed 0's
    },
}
SHARPNESS = {
    0: {"s_avg": [[0.01, 0.04], [0.03, 0.09], [0.02, 0.05]], "s_max": [[0.2], [0.6], [0.3]],
        "sam": [[0.001], [0.003], [0.002]]},
    1: {"s_avg": [[0.02, 0.05], [0.05, 0.11], [0.0, 0.0]], "s_max": [[0.3], [0.5], [0.0]],
        "sam": [[0.002], [0.004], [0.0]]},
}  # fmt: skip
DISTANCES = [0.0, 10.0, 20.0, 30.0]
RAYS = {  # test_err (origins SWA, SGD; 2 directions; 4 distances)
    0: [[[20, 21, 22, 30], [20, 21, 24, 34]], [[22, 30, 40, 50], [22, 26, 30, 40]]],
    1: [[[20, 20, 21, 22], [20, 21, 21, 23]], [[21, 25, 26, 29], [21, 23, 28, 31]]],
}
# widths at +5 by hand, on the mean over directions:
# seed 0 SWA [20, 21, 23, 32]: 25 between 20 (23) and 30 (32) -> 20 + 10 * 2 / 9
# seed 0 SGD [22, 28, 35, 45]: 27 between 0 (22) and 10 (28) -> 10 * 5 / 6
# seed 1 SWA [20, 20.5, 21, 22.5]: never 25 -> beyond 30
# seed 1 SGD [21, 24, 27, 30]: 26 between 10 (24) and 20 (27) -> 10 + 10 * 2 / 3
WIDTHS = {"SWA": [20 + 20 / 9], "SGD": [50 / 6, 10 + 20 / 3]}


def write_analyses(runs, seed: int) -> None:
    folder = layout.analyses_dir(runs, SETUP, seed)
    folder.mkdir(parents=True)
    h, s = HESSIAN[seed], SHARPNESS[seed]
    arrays = {k: np.array(v) for k, v in h.items() if k != "settings"}
    config = json.dumps({"analysis": "hessian", "hessian": h["settings"]})
    np.savez(layout.analysis_file(runs, SETUP, seed, "hessian"), **arrays, n_params=1000,
             config=np.array(config))  # fmt: skip
    np.savez(
        layout.analysis_file(runs, SETUP, seed, "sharpness"),
        origins=np.array(h["origins"]), done=np.array([True, True, seed == 0]),
        rho_avg=np.array([0.05, 0.1]), rho_max=np.array([0.5]), rho_sam=np.array([0.05]),
        **{k: np.array(v) for k, v in s.items()},
        config=np.array(json.dumps({"analysis": "sharpness", "sharpness": {"images": 1024}})),
    )  # fmt: skip
    np.savez(
        layout.analysis_file(runs, SETUP, seed, "rays"),
        origins=np.array(["SWA", "SGD"]), done=np.ones((2, 2, 4), bool),
        distances=np.array(DISTANCES), test_err=np.array(RAYS[seed], dtype=float),
        config=np.array(json.dumps({"analysis": "rays", "n_directions": 2, "max_distance": 30.0})),
    )  # fmt: skip


def table(tmp_path, *extra):
    runs, out = tmp_path / "runs", tmp_path / "results"
    for seed in (0, 1):
        write_analyses(runs, seed)
    argv = ["sharpness", "--dataset", "cifar100", "--runs", str(runs), "--models",
            "preresnet164", "--seeds", "0,1,2", "--out", str(out), *extra]  # fmt: skip
    aggregate.main(argv)
    rows = list(csv.DictReader(io.StringIO((out / "sharpness_cifar100.csv").read_text())))
    return {row["solution"]: row for row in rows}, (out / "sharpness_cifar100.md").read_text()


def finished(name: str, seed: int, source: dict) -> bool:
    o = HESSIAN[seed]["origins"].index(name)
    return HESSIAN[seed]["done"][o] if source is HESSIAN else (seed == 0 or name != "EMA 0.999")


def per_seed(name: str, source: dict, key: str, index: int) -> list[float]:
    """Entry `index` of origin `name`'s `key` in each seed's hand-written source (NaN where the
    origin is not finished)."""
    values = []
    for seed, arrays in source.items():
        row = np.atleast_1d(
            np.array(arrays[key], dtype=float)[HESSIAN[seed]["origins"].index(name)]
        )
        values.append(row[index] if finished(name, seed, source) else NAN)
    return values


def expected(values) -> tuple[float | None, float | None, int]:
    values = np.array([v for v in values if np.isfinite(v)])
    if not len(values):
        return None, None, 0
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return float(np.mean(values)), std, len(values)


def agrees(text: str, value: float | None) -> bool:
    """A CSV field against an expected number (None: the field is empty)."""
    return text == "" if value is None else float(text) == pytest.approx(value, rel=1e-12)


def test_table_cells_are_mean_std_and_n_over_seeds(tmp_path):
    rows, _ = table(tmp_path)
    assert list(rows) == ["SGD", "EMA 0.999", "SWA"]
    numbers = {"lambda_1": ("top_eigenvalues", 0), "lambda_2": ("top_eigenvalues", 1),
               "lambda_min": ("min_eigenvalue", 0), "trace": ("trace", 0),
               "weight_norm": ("weight_norm", 0), "train_nll": ("train_nll", 0),
               "s_avg@0.05": ("s_avg", 0), "s_avg@0.1": ("s_avg", 1), "s_max@0.5": ("s_max", 0),
               "sam@0.05": ("sam", 0)}  # fmt: skip
    for name, row in rows.items():
        for key, (source_key, column) in numbers.items():
            source = SHARPNESS if source_key in SHARPNESS[0] else HESSIAN
            mean, std, n = expected(per_seed(name, source, source_key, column))
            assert agrees(row[f"{key}_mean"], mean) and agrees(row[f"{key}_std"], std), (name, key)
            assert int(row[f"{key}_n"]) == n, (name, key)
        errs = [100 - a for a in per_seed(name, HESSIAN, "test_acc", 0)]
        assert float(row["test_err_mean"]) == pytest.approx(expected(errs)[0], rel=1e-12)
    # the EMA: seed 1 unfinished, its second eigenvalue not converged at seed 0
    assert rows["EMA 0.999"]["lambda_1_n"] == "1" and rows["EMA 0.999"]["lambda_2_n"] == "0"
    # the probes' error of the mean trace: sqrt(3^2 + 6^2) / 2 for SWA
    assert float(rows["SWA"]["trace_se_of_mean"]) == pytest.approx(math.sqrt(45) / 2)
    assert float(rows["EMA 0.999"]["trace_se_of_mean"]) == pytest.approx(5.0)


def test_width_along_rays_at_the_threshold(tmp_path):
    rows, md = table(tmp_path)
    for name, widths in WIDTHS.items():
        assert float(rows[name]["width_mean"]) == pytest.approx(np.mean(widths), rel=1e-12)
        assert int(rows[name]["width_n"]) == len(widths)
    assert rows["SWA"]["width_beyond"] == "1" and rows["SGD"]["width_beyond"] == "0"
    assert rows["EMA 0.999"]["width_n"] == "0"  # no rays from the EMA
    swa = next(line for line in md.splitlines() if line.startswith("| SWA |"))
    assert swa.endswith(f"| {WIDTHS['SWA'][0]:.4g} (1), 1 beyond 30 |")
    # a rise of 1: SWA's means pass 21 after t = 10 (seed 0: 21 there) and t = 20 (seed 1)
    rows, _ = table(tmp_path / "other", "--width-rise", "1")
    assert float(rows["SWA"]["width_mean"]) == pytest.approx(np.mean([10.0, 20.0]))
    assert ray_width(np.array(DISTANCES), np.array([[5, 5, 5, 5]]), 1.0) == math.inf


def test_markdown_keeps_the_two_rho_grids_apart_and_lists_what_is_missing(tmp_path):
    _, md = table(tmp_path)
    header = next(line for line in md.splitlines() if line.startswith("| solution |"))
    assert header.split(" | ")[1:] == [
        "λ1", "λ2", "λ_min", "trace", "S_avg ρ=0.05", "S_avg ρ=0.1", "S_max ρ=0.5", "‖w‖",
        "train NLL", "test err %", "width (test_err +5) |",
    ]  # fmt: skip
    # S_avg(rho) compares with S_max(rho sqrt(P)), P = 1000
    assert f"0.05 → {0.05 * math.sqrt(1000):.3g}, 0.1 → {0.1 * math.sqrt(1000):.3g}" in md
    sgd = next(line for line in md.splitlines() if line.startswith("| SGD |")).split(" | ")
    assert sgd[1] == f"28 ± {np.std([30, 26], ddof=1):.2g} (2)"
    assert sgd[4] == f"290 ± {np.std([300, 280], ddof=1):.2g} (2), s.e. {math.sqrt(80) / 2:.2g}"
    for needle in (
        f"seed 2: no {layout.analysis_file(tmp_path / 'runs', SETUP, 2, 'hessian')}",
        "seed 1: hessian of EMA 0.999 not finished",
        "seed 1: sharpness of EMA 0.999 not finished",
        "hessian settings differ between seeds",
    ):
        assert needle in md, needle


@pytest.mark.parametrize(
    ("argv", "damage", "needle"),
    [
        (["--width-rise", "0"], None, "--width-rise must be a number > 0, got 0"),
        (["--width-rise", "nan"], None, "--width-rise must be a number > 0"),
        (["--models", "resnet50"], None, "'resnet50' has no table1 experiment configs"),
        (["--seeds", "0,x"], None, "seeds must be comma-separated integers"),
        (["--width-metric", "loss"], None, "--width-metric must be one of train_loss, "),
        ([], ("hessian", b"not an npz"), "hessian.npz is not a readable .npz"),
        ([], ("rays", None), "rays.npz has no origins, done, distances, config"),
        (["--width-metric", "train_err"], None, "rays.npz has no train_err (--width-metric)"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, argv, damage, needle):
    runs, out = tmp_path / "runs", tmp_path / "results"
    write_analyses(runs, 0)
    if damage is not None:
        path = layout.analysis_file(runs, SETUP, 0, damage[0])
        if damage[1] is None:
            np.savez(path, test_err=np.zeros(3))
        else:
            path.write_bytes(damage[1])
    base = ["sharpness", "--dataset", "cifar100", "--runs", str(runs), "--models", "preresnet164",
            "--seeds", "0", "--out", str(out)]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        aggregate.main([*base, *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not out.exists()
