"""Result aggregation (swa_repro.aggregate) and the sweep planner (swa_repro.sweep).

Every run directory here is written by hand in tmp_path with chosen numbers; the expected
means, sample standard deviations (ddof=1), differences and flags are computed in the test
with the statistics module, and the paper's numbers are partly written out here from the
protocol (not read through the code under test). Outputs always go to tmp_path (--out).
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
import subprocess
from pathlib import Path

import pytest
import yaml

from swa_repro import aggregate, bench, sweep
from swa_repro.aggregate import Cell, build_table
from swa_repro.compose import CONF_DIR, compose_config
from swa_repro.run_files import RunFiles
from swa_repro.table_runs import TableRun, experiment_name, table_models

PAPER_YAML = Path(__file__).resolve().parents[1] / "experiments" / "paper_results.yaml"
SWA_LABELS = ("1", "1.25", "1.5")
SWA_COLUMNS = {"1": "SWA 1 budget", "1.25": "SWA 1.25 budgets", "1.5": "SWA 1.5 budgets"}
TABLE1_COLUMNS = ("SGD", *SWA_COLUMNS.values())

# Protocol numbers, written out independently of experiments/paper_results.yaml.
PROTOCOL = {
    ("cifar100", "preresnet164", "SWA 1.5 budgets"): (80.35, 0.16),
    ("cifar100", "preresnet164", "SGD"): (78.49, 0.36),
    ("cifar100", "vgg16", "SGD"): (72.55, 0.10),
    ("cifar100", "vgg16", "SWA 1 budget"): (73.91, 0.12),
    ("cifar10", "wrn28x10", "SGD"): (96.18, 0.11),
    ("cifar10", "wrn28x10", "SWA 1.25 budgets"): (96.64, 0.08),
    ("cifar10", "wrn28x10", "SWA 1.5 budgets"): (96.79, 0.05),
}
PAPER_KEY = {"SGD": "sgd", **{col: f"swa_{label}" for label, col in SWA_COLUMNS.items()}}


# --- hand-made run directories -----------------------------------------------------------------


def reading(acc: float, nll: float, ece: float, epoch: int, model: str) -> dict:
    return {
        "epoch": epoch,
        "model": model,
        "test_acc": acc,
        "test_nll": nll,
        "test_ece": ece,
        "test_loss": nll + 0.01,
    }


def final(acc: float, nll: float, ece: float) -> dict:
    return {"acc": acc, "loss": nll + 0.01, "nll": nll, "ece": ece, "n_averaged": 7}


def cell_run(runs: Path, table: str, dataset: str, model: str, method: str, seed: int, extra=()):
    """The run a table cell reads: its experiment's config (with `extra`) and run directory."""
    return TableRun.of(experiment_name(table, dataset, model, method), seed, runs, extra)


def write_summary(run: TableRun, summary: dict) -> Path:
    """A finished run of the cell's own config, with the given summary.json."""
    files = RunFiles(run.run_dir)
    files.write_config(run.cfg)
    files.write_metrics([{"epoch": run.cfg.epochs, "test_acc": 1.0}])
    files.write_summary(summary)
    return run.run_dir


def write_sgd(
    runs: Path, dataset: str, model: str, seed: int, acc, nll=1.0, ece=0.05, table="table1"
):
    """A finished SGD run: final SGD reading = the 1-budget reading."""
    return write_summary(
        cell_run(runs, table, dataset, model, "sgd", seed),
        {
            "status": "finished",
            "final": {"sgd": final(acc, nll, ece), "swa": None},
            "budgets": {"1": reading(acc, nll, ece, 150, "sgd")},
        },
    )


def write_swa(
    runs: Path, dataset: str, model: str, seed: int, budgets: dict, table="table1", last=None
):
    """A finished SWA run; budgets: label -> (acc, nll, ece). The final SGD reading is junk
    (it must never be used by a SWA column)."""
    acc, nll, ece = last or budgets["1.5"]
    return write_summary(
        cell_run(runs, table, dataset, model, "swa", seed),
        {
            "status": "finished",
            "final": {"sgd": final(11.0, 9.0, 0.9), "swa": final(acc, nll, ece)},
            "budgets": {
                label: reading(*values, {"1": 150, "1.25": 187, "1.5": 225}[label], "swa")
                for label, values in budgets.items()
            },
        },
    )


def write_partial(runs: Path, dataset: str, model: str, method: str, seed: int, last=40):
    """An unfinished run of the cell's config, evaluated up to epoch `last`."""
    run = cell_run(runs, "table1", dataset, model, method, seed)
    files = RunFiles(run.run_dir)
    files.write_config(run.cfg)
    done = [1, *range(5, last + 1, 5)]
    files.write_metrics([{"epoch": e, "test_acc": 50.0} for e in done])
    return run.run_dir


# --- reading the outputs -----------------------------------------------------------------------


def run_main(capsys, args: list[str]) -> str:
    aggregate.main(args)
    return capsys.readouterr().out


def read_csv(path: Path) -> dict[tuple[str, str], dict]:
    with open(path, newline="") as f:
        return {(r["model"], r["column"]): r for r in csv.DictReader(f)}


def md_tables(text: str) -> list[dict[str, dict[str, str]]]:
    """Markdown tables as [{first cell: {header: cell}}]."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif block:
            header, rows = block[0], block[2:]
            tables.append({r[0]: dict(zip(header, r, strict=True)) for r in rows})
            block = []
    return tables


def ours(cell_text: str) -> str:
    """The part of a cell before the paper's value."""
    return cell_text.split(" · ")[0]


def fmt(mean: float, std: float | None = None, digits: int = 2) -> str:
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def num(text: str) -> float:
    return float(text)


# --- bad input: one line, exit 2, nothing written ----------------------------------------------


def _break(tmp_path: Path, case: str) -> list[str]:
    """A bad input of `case`; returns the options that use it (the runs are intact otherwise)."""
    run_dir = write_sgd(tmp_path / "runs", "cifar100", "vgg16", 0, 72.0)
    broken = tmp_path / "broken"
    if case == "paper_missing":
        return ["--paper", str(tmp_path / "nope.yaml")]
    if case == "paper_malformed":
        broken.write_text("table1:\n  cifar100: [1,\n")
        return ["--paper", str(broken)]
    if case == "paper_list":
        broken.write_text("- 1\n- 2\n")
        return ["--paper", str(broken)]
    if case == "out_is_a_file":
        broken.write_text("x")
        return ["--out", str(broken)]
    if case == "summary_corrupt":
        RunFiles(run_dir).summary.write_text('{"final": {"sgd": "unterminated')
    elif case == "summary_not_a_summary":
        RunFiles(run_dir).summary.write_text('{"status": "finished"}')
    elif case == "config_corrupt":
        RunFiles(run_dir).config.write_text("epochs: [225\n")
    return []


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("paper_missing", "--paper {tmp}/nope.yaml: no such file"),
        ("paper_malformed", "--paper {tmp}/broken is not valid YAML"),
        ("paper_list", "--paper {tmp}/broken must map tables"),
        ("out_is_a_file", "--out {tmp}/broken: {tmp}/broken is a file, not a folder"),
        ("summary_corrupt", "{run}/summary.json is not valid JSON: Unterminated string"),
        ("summary_not_a_summary", "{run}/summary.json is not a run summary"),
        ("config_corrupt", "{run}/config.yaml cannot be read"),
    ],
)
def test_bad_input_is_one_line_error(tmp_path, capsys, case, message):
    options = _break(tmp_path, case)
    out = tmp_path / "out"
    argv = ["table1", "--dataset", "cifar100", "--models", "vgg16", "--seeds", "0"]
    argv += ["--runs", str(tmp_path / "runs"), "--out", str(out), *options]
    with pytest.raises(SystemExit) as exit_info:
        aggregate.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    run = cell_run(tmp_path / "runs", "table1", "cifar100", "vgg16", "sgd", 0).run_dir
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert message.format(tmp=tmp_path, run=run) in err[0]
    assert not out.exists()


# --- 1. means and sample standard deviations -----------------------------------------------------

SGD_164 = [(78.10, 1.02, 0.071), (78.62, 0.98, 0.064), (78.91, 0.95, 0.052)]
SWA_164 = {
    "1": [(79.50, 0.83, 0.031), (79.94, 0.81, 0.027), (80.02, 0.80, 0.029)],
    "1.25": [(79.81, 0.80, 0.025), (80.07, 0.79, 0.022), (80.30, 0.77, 0.024)],
    "1.5": [(80.21, 0.78, 0.020), (80.50, 0.76, 0.017), (80.09, 0.77, 0.019)],
}


def make_preresnet164(runs: Path, dataset: str = "cifar100") -> None:
    for seed in range(3):
        write_sgd(runs, dataset, "preresnet164", seed, *SGD_164[seed])
        write_swa(runs, dataset, "preresnet164", seed, {k: v[seed] for k, v in SWA_164.items()})


def column_values(column: str, index: int) -> list[float]:
    rows = (
        SGD_164
        if column == "SGD"
        else SWA_164[next(k for k, c in SWA_COLUMNS.items() if c == column)]
    )
    return [r[index] for r in rows]


def test_means_and_sample_std_in_csv_and_markdown(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    make_preresnet164(runs)
    text = run_main(
        capsys, ["table1", "--dataset", "cifar100", "--runs", str(runs), "--out", str(out)]
    )
    table = read_csv(out / "table1_cifar100.csv")
    md = (out / "table1_cifar100.md").read_text()
    assert md in text  # printed as written
    main_table = md_tables(md)[0]
    for column in TABLE1_COLUMNS:
        accs, nlls, eces = (column_values(column, i) for i in range(3))
        row = table[("preresnet164", column)]
        assert row["n"] == "3"
        assert num(row["acc_mean"]) == pytest.approx(statistics.mean(accs), abs=1e-9)
        assert num(row["acc_std"]) == pytest.approx(statistics.stdev(accs), abs=1e-9)
        assert num(row["nll_mean"]) == pytest.approx(statistics.mean(nlls), abs=1e-9)
        assert num(row["ece_mean"]) == pytest.approx(statistics.mean(eces), abs=1e-9)
        assert row["pending"] == ""
        cell = main_table["preresnet164"][column]
        assert ours(cell) == f"{fmt(statistics.mean(accs), statistics.stdev(accs))} (n=3)"
    # the other models have no runs: never numbers
    for model in ("vgg16", "preresnet110", "wrn28x10"):
        assert all(main_table[model][c] == "missing" for c in TABLE1_COLUMNS)
        for column in TABLE1_COLUMNS:
            assert table[(model, column)]["n"] == "0"
            assert table[(model, column)]["acc_mean"] == ""
            assert table[(model, column)]["acc_std"] == ""


def test_single_seed_has_no_std(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    write_sgd(runs, "cifar100", "vgg16", 0, 72.40, 1.3, 0.1)
    run_main(capsys, ["table1", "--dataset", "cifar100", "--runs", str(runs), "--out", str(out)])
    row = read_csv(out / "table1_cifar100.csv")[("vgg16", "SGD")]
    assert (row["n"], row["acc_mean"], row["acc_std"]) == ("1", "72.4", "")
    cell = md_tables((out / "table1_cifar100.md").read_text())[0]["vgg16"]["SGD"]
    assert ours(cell) == "72.40 (n=1)"
    assert "±" not in ours(cell)


def test_finished_and_missing_seeds_mean_over_finished_only(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    budgets = [
        {"1": (73.2, 1.1, 0.03), "1.25": (73.6, 1.0, 0.03), "1.5": (74.0, 1.0, 0.02)},
        {"1": (73.8, 1.1, 0.03), "1.25": (74.1, 1.0, 0.03), "1.5": (74.3, 1.0, 0.02)},
    ]
    write_swa(runs, "cifar100", "vgg16", 0, budgets[0])
    write_swa(runs, "cifar100", "vgg16", 2, budgets[1])  # seed 1 missing
    text = run_main(
        capsys,
        [
            "table1",
            "--dataset",
            "cifar100",
            "--runs",
            str(runs),
            "--out",
            str(out),
            "--models",
            "vgg16",
        ],
    )
    table = read_csv(out / "table1_cifar100.csv")
    cells = md_tables(text)[0]["vgg16"]
    for label, column in SWA_COLUMNS.items():
        accs = [b[label][0] for b in budgets]
        row = table[("vgg16", column)]
        assert row["n"] == "2"
        assert num(row["acc_mean"]) == pytest.approx(statistics.mean(accs))
        assert num(row["acc_std"]) == pytest.approx(statistics.stdev(accs))
        assert row["pending"] == "seed 1: missing"
        assert ours(cells[column]) == f"{fmt(statistics.mean(accs), statistics.stdev(accs))} (n=2)"
        assert f"- vgg16 {column}: seed 1: missing" in text
    assert cells["SGD"] == "missing"
    assert list(md_tables(text)[0]) == ["vgg16"]


def test_swa_reading_of_the_sgd_model_is_not_an_swa_value(tmp_path, capsys):
    """A budget epoch before the first averaged model: the run read the SGD model there, which
    must not count as SWA (seed 0's 1-budget reading here; alone it leaves the cell empty)."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    for seed, acc in enumerate((70.0, 71.0, 72.0)):
        run_dir = write_swa(
            runs, "cifar100", "vgg16", seed, dict.fromkeys(SWA_LABELS, (acc, 1, 0.1))
        )
        if seed == 0:
            files = RunFiles(run_dir)
            summary = files.read_summary()
            summary["budgets"]["1"]["model"] = "sgd"
            files.write_summary(summary)
    args = ["table1", "--dataset", "cifar100", "--runs", str(runs), "--out", str(out)]
    text = run_main(capsys, [*args, "--models", "vgg16", "--seeds", "0,1,2"])
    table = read_csv(out / "table1_cifar100.csv")
    row = table[("vgg16", "SWA 1 budget")]
    assert (row["n"], num(row["acc_mean"])) == ("2", pytest.approx(71.5))
    assert row["pending"] == "seed 0: 1 reading is of the SGD model (nothing averaged by epoch 150)"
    assert "- vgg16 SWA 1 budget: seed 0: 1 reading is of the SGD model" in text
    assert table[("vgg16", "SWA 1.25 budgets")]["n"] == "3"
    text = run_main(capsys, [*args, "--models", "vgg16", "--seeds", "0"])
    assert md_tables(text)[0]["vgg16"]["SWA 1 budget"] == "no reading"


# --- 2. the paper's values beside ours ---------------------------------------------------------


def test_paper_values_and_differences(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    make_preresnet164(runs, "cifar100")
    make_preresnet164(runs, "cifar10")
    for seed, acc in enumerate((72.31, 72.70, 72.62)):
        write_sgd(runs, "cifar100", "vgg16", seed, acc)
    for seed, acc in enumerate((96.00, 96.25, 96.31)):
        write_sgd(runs, "cifar10", "wrn28x10", seed, acc)
        write_swa(
            runs, "cifar10", "wrn28x10", seed, {k: (acc + 0.5, 0.2, 0.01) for k in SWA_LABELS}
        )
    paper_file = yaml.safe_load(PAPER_YAML.read_text())
    for dataset in ("cifar100", "cifar10"):
        text = run_main(
            capsys, ["table1", "--dataset", dataset, "--runs", str(runs), "--out", str(out)]
        )
        table = read_csv(out / f"table1_{dataset}.csv")
        cells = md_tables(text)[0]
        for (model, column), row in table.items():
            mean, std = paper_file["table1"][dataset][model][PAPER_KEY[column]]
            assert (num(row["paper_mean"]), num(row["paper_std"])) == (mean, std)
            if (dataset, model, column) in PROTOCOL:
                assert (mean, std) == PROTOCOL[(dataset, model, column)]
            if row["n"] == "0":
                assert row["diff"] == "" and cells[model][column] == "missing"
                continue
            assert num(row["diff"]) == pytest.approx(num(row["acc_mean"]) - mean, abs=1e-9)
            expected_diff = num(row["acc_mean"]) - mean
            assert f" · paper {fmt(mean, std)} · Δ {expected_diff:+.2f}" in cells[model][column]
    # one fully by hand: PreResNet164 CIFAR-100 SWA 1.5 = 80.35 ± 0.16 in the paper
    row = read_csv(out / "table1_cifar100.csv")[("preresnet164", "SWA 1.5 budgets")]
    ours_mean = statistics.mean([80.21, 80.50, 80.09])
    assert num(row["diff"]) == pytest.approx(ours_mean - 80.35)
    row = read_csv(out / "table1_cifar10.csv")[("wrn28x10", "SWA 1.5 budgets")]
    assert num(row["diff"]) == pytest.approx(statistics.mean([96.50, 96.75, 96.81]) - 96.79)


# --- 3. the "!" flag --------------------------------------------------------------------------


@pytest.mark.parametrize("sign", [1, -1])
def test_flag_threshold_with_seed_std(sign):
    paper = (80.0, 0.3)
    d = 0.4  # our std; threshold 2 sqrt(0.4^2 + 0.3^2) = 1.0
    threshold = 2 * math.sqrt(d**2 + paper[1] ** 2)
    for offset, expected in ((threshold + 0.01, True), (threshold - 0.01, False)):
        mean = paper[0] + sign * offset
        cell = Cell([{"acc": mean - d}, {"acc": mean}, {"acc": mean + d}], [], paper)
        assert cell.stat()[1] == pytest.approx(statistics.stdev([mean - d, mean, mean + d]))
        assert cell.diff == pytest.approx(sign * offset)
        assert cell.flagged is expected, (offset, threshold)


def test_flag_threshold_single_seed_uses_paper_std_only():
    paper = (80.0, 0.5)  # our std missing -> 0: threshold 1.0
    assert Cell([{"acc": 81.01}], [], paper).flagged
    assert not Cell([{"acc": 80.99}], [], paper).flagged
    assert Cell([{"acc": 78.99}], [], paper).flagged


def test_flag_through_build_table_and_markdown(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    # SGD: ours 78.0 ± 0.3 over three seeds; SWA 1 budget: 79.0 ± 0.3
    for seed, delta in enumerate((-0.3, 0.0, 0.3)):
        write_sgd(runs, "cifar100", "preresnet164", seed, 78.0 + delta)
        budgets = {k: (79.0 + delta, 0.8, 0.02) for k in SWA_LABELS}
        write_swa(runs, "cifar100", "preresnet164", seed, budgets)
    # paper std 0.4: threshold 2 sqrt(0.3^2 + 0.4^2) = 1.0
    paper = {
        "table1": {
            "cifar100": {
                "preresnet164": {
                    "sgd": [76.99, 0.4],  # diff 1.01: flagged
                    "swa_1": [78.01, 0.4],  # diff 0.99: not flagged
                    "swa_1.25": [80.02, 0.4],  # diff -1.02: flagged
                    "swa_1.5": [79.98, 0.4],  # diff -0.98: not flagged
                }
            }
        }
    }
    rows = build_table("table1", "cifar100", runs, ["preresnet164"], [0, 1, 2], paper)
    expected = {
        "SGD": True,
        "SWA 1 budget": False,
        "SWA 1.25 budgets": True,
        "SWA 1.5 budgets": False,
    }
    for column, flag in expected.items():
        cell = rows["preresnet164"][column]
        assert cell.stat()[1] == pytest.approx(0.3)
        assert cell.flagged is flag, column

    paper_path = tmp_path / "paper.yaml"
    paper_path.write_text(yaml.safe_dump(paper))
    args = ["table1", "--dataset", "cifar100", "--runs", str(runs), "--out", str(out)]
    text = run_main(capsys, [*args, "--models", "preresnet164", "--paper", str(paper_path)])
    cells = md_tables(text)[0]["preresnet164"]
    table = read_csv(out / "table1_cifar100.csv")
    for column, flag in expected.items():
        assert cells[column].endswith(" !") is flag, cells[column]
        assert table[("preresnet164", column)]["flag"] == ("!" if flag else "")


# --- 4. missing and running runs -----------------------------------------------------------------


def test_no_runs_at_all_shows_missing_never_numbers(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    text = run_main(
        capsys, ["table1", "--dataset", "cifar100", "--runs", str(runs), "--out", str(out)]
    )
    main_table, gains = md_tables(text)
    for model in ("vgg16", "preresnet110", "preresnet164", "wrn28x10"):
        assert [main_table[model][c] for c in TABLE1_COLUMNS] == ["missing"] * 4
        gain_row = list(gains[model].values())
        # ours: gain, NLL and ECE all "-" (the paper's gain is the only number)
        assert gain_row[1] == "-" and gain_row[3:] == ["-"] * 4
        for column in TABLE1_COLUMNS:
            for seed in range(3):
                assert f"- {model} {column}: seed {seed}: missing" in text
    for row in read_csv(out / "table1_cifar100.csv").values():
        assert row["n"] == "0"
        assert row["acc_mean"] == row["acc_std"] == row["diff"] == row["flag"] == ""
        assert row["nll_mean"] == row["ece_mean"] == ""
    assert not re.search(r"\b0\.00\b", text)


def test_partial_run_shows_running_with_epoch(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    write_partial(runs, "cifar100", "preresnet164", "swa", 0, last=40)  # of 225 epochs
    # WRN: one seed finished, one running, one missing
    write_sgd(runs, "cifar100", "wrn28x10", 0, 80.5, 0.7, 0.04)
    write_partial(runs, "cifar100", "wrn28x10", "sgd", 1, last=115)  # of 200 epochs
    text = run_main(
        capsys, ["table1", "--dataset", "cifar100", "--runs", str(runs), "--out", str(out)]
    )
    main_table = md_tables(text)[0]
    assert main_table["preresnet164"]["SGD"] == "missing"
    for column in SWA_COLUMNS.values():
        assert main_table["preresnet164"][column] == "running"
        assert f"- preresnet164 {column}: seed 0: running (epoch 40/225)" in text
        assert f"- preresnet164 {column}: seed 1: missing" in text
    assert ours(main_table["wrn28x10"]["SGD"]) == "80.50 (n=1)"
    assert "- wrn28x10 SGD: seed 1: running (epoch 115/200)" in text
    assert "- wrn28x10 SGD: seed 2: missing" in text
    not_included = text.split("Not included:")[1]
    assert "wrn28x10 SGD: seed 0" not in not_included
    table = read_csv(out / "table1_cifar100.csv")
    row = table[("preresnet164", "SWA 1.5 budgets")]
    assert (row["n"], row["acc_mean"]) == ("0", "")
    assert row["pending"] == "seed 0: running (epoch 40/225); seed 1: missing; seed 2: missing"
    row = table[("wrn28x10", "SGD")]
    assert (row["n"], num(row["acc_mean"]), row["acc_std"]) == ("1", 80.5, "")


# --- 5. gain / NLL / ECE table ---------------------------------------------------------------------


def test_gain_nll_ece_table(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    make_preresnet164(runs)
    text = run_main(
        capsys, ["table1", "--dataset", "cifar100", "--runs", str(runs), "--out", str(out)]
    )
    gains = md_tables(text)[1]
    row = list(gains["preresnet164"].values())
    sgd, swa = SGD_164, SWA_164["1.5"]
    gain = statistics.mean(r[0] for r in swa) - statistics.mean(r[0] for r in sgd)
    assert row[1] == fmt(gain)
    assert row[2] == fmt(80.35 - 78.49)  # the paper's gain, protocol numbers
    assert row[3] == fmt(statistics.mean(r[1] for r in sgd), statistics.stdev(r[1] for r in sgd), 4)
    assert row[4] == fmt(statistics.mean(r[1] for r in swa), statistics.stdev(r[1] for r in swa), 4)
    assert row[5] == fmt(statistics.mean(r[2] for r in sgd), statistics.stdev(r[2] for r in sgd), 4)
    assert row[6] == fmt(statistics.mean(r[2] for r in swa), statistics.stdev(r[2] for r in swa), 4)
    header = list(gains["preresnet164"])
    assert header[1] == "gain SWA 1.5 budgets − SGD (ours)"
    # a model without runs: the paper's gain only
    vgg = list(gains["vgg16"].values())
    assert vgg[1] == "-" and vgg[2] == fmt(74.27 - 72.55)


# --- 6. README block ---------------------------------------------------------------------------------

README_TEXT = (
    "# Project\n\nIntro text.\n\n"
    "<!-- results:table1_cifar100 -->\nold\n<!-- /results:table1_cifar100 -->\n\n"
    "<!-- results:table1_cifar10 -->\nother old\n<!-- /results:table1_cifar10 -->\n\nTail.\n"
)


def test_readme_block_replaced_when_results_exist(tmp_path, capsys):
    runs, out, readme = tmp_path / "runs", tmp_path / "out", tmp_path / "README.md"
    readme.write_text(README_TEXT)
    write_sgd(runs, "cifar100", "vgg16", 0, 72.4)
    args = ["table1", "--dataset", "cifar100", "--runs", str(runs), "--out", str(out)]
    run_main(capsys, [*args, "--readme", str(readme)])
    md = (out / "table1_cifar100.md").read_text()
    head, tail = README_TEXT.split("old\n<!-- /results:table1_cifar100 -->")
    assert readme.read_text() == head + md + "<!-- /results:table1_cifar100 -->" + tail
    assert "other old" in readme.read_text()


def test_readme_untouched_without_any_run(tmp_path, capsys):
    runs, out, readme = tmp_path / "runs", tmp_path / "out", tmp_path / "README.md"
    readme.write_text(README_TEXT)
    args = ["table1", "--dataset", "cifar100", "--runs", str(runs), "--out", str(out)]
    run_main(capsys, [*args, "--readme", str(readme)])
    assert readme.read_text() == README_TEXT
    assert (out / "table1_cifar100.md").is_file()  # the table itself is still written


# --- 7. fixed learning rate table ------------------------------------------------------------------


def test_fixed_lr_table(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    sgd_accs, swa_accs = [78.3, 78.9, 78.5], [81.2, 81.9, 81.5]
    for seed in range(3):
        write_sgd(runs, "cifar100", "wrn28x10", seed, sgd_accs[seed], 0.9, 0.08, table="fixed_lr")
        # budget readings differ from the final SWA reading: the column must use the final one
        write_swa(
            runs,
            "cifar100",
            "wrn28x10",
            seed,
            {"1": (50.0, 2.0, 0.2)},
            table="fixed_lr",
            last=(swa_accs[seed], 0.7, 0.02),
        )
    # table1 runs of the same model must not be read
    write_sgd(runs, "cifar100", "wrn28x10", 0, 10.0)
    text = run_main(
        capsys, ["fixed_lr", "--dataset", "cifar100", "--runs", str(runs), "--out", str(out)]
    )
    table = read_csv(out / "fixed_lr_cifar100.csv")
    assert set(table) == {("wrn28x10", "SGD, fixed LR"), ("wrn28x10", "SWA, fixed LR")}
    sgd, swa = table[("wrn28x10", "SGD, fixed LR")], table[("wrn28x10", "SWA, fixed LR")]
    assert num(sgd["acc_mean"]) == pytest.approx(statistics.mean(sgd_accs))
    assert num(sgd["acc_std"]) == pytest.approx(statistics.stdev(sgd_accs))
    assert sgd["paper_mean"] == sgd["diff"] == ""
    assert num(swa["acc_mean"]) == pytest.approx(statistics.mean(swa_accs))
    assert num(swa["acc_std"]) == pytest.approx(statistics.stdev(swa_accs))
    assert (num(swa["paper_mean"]), swa["paper_std"]) == (81.7, "")
    assert num(swa["diff"]) == pytest.approx(statistics.mean(swa_accs) - 81.7)
    cells = md_tables(text)[0]["wrn28x10"]
    assert (
        cells["SGD, fixed LR"]
        == f"{fmt(statistics.mean(sgd_accs), statistics.stdev(sgd_accs))} (n=3)"
    )
    diff = statistics.mean(swa_accs) - 81.7
    assert cells["SWA, fixed LR"] == (
        f"{fmt(statistics.mean(swa_accs), statistics.stdev(swa_accs))} (n=3) · paper 81.70 · Δ {diff:+.2f}"
    )
    gain = list(md_tables(text)[1]["wrn28x10"].values())
    assert gain[1] == fmt(statistics.mean(swa_accs) - statistics.mean(sgd_accs))
    assert gain[2] == "-"  # the paper gives no SGD value at the fixed LR
    assert "Fixed learning rate" in text


# --- 9. sweep planning ------------------------------------------------------------------------------

PROTOCOL_MACS = {
    "vgg16": 0.314e9,
    "preresnet110": 0.167e9,
    "preresnet164": 0.248e9,
    "wrn28x10": 5.95e9,
}


@pytest.fixture(scope="module")
def macs() -> dict[tuple[str, int], float]:
    return {(m, 100): sweep.macs_per_image(m, 100) for m in PROTOCOL_MACS}


def test_experiments_of():
    assert sweep.experiments_of("table1", "cifar100", ["vgg16", "wrn28x10"]) == [
        "cifar100/vgg16_sgd",
        "cifar100/vgg16_swa",
        "cifar100/wrn28x10_sgd",
        "cifar100/wrn28x10_swa",
    ]
    names = sweep.experiments_of("fixed_lr", "cifar100", ["wrn28x10"])
    assert names == ["cifar100/wrn28x10_fixed_lr_sgd", "cifar100/wrn28x10_fixed_lr_swa"]
    for name in names + sweep.experiments_of(
        "table1", "cifar10", table_models("table1", "cifar10")
    ):
        assert (Path(CONF_DIR) / "experiment" / f"{name}.yaml").is_file(), name


@pytest.mark.parametrize("model", list(PROTOCOL_MACS))
def test_macs_per_image_matches_protocol(macs, model):
    assert macs[(model, 100)] == pytest.approx(PROTOCOL_MACS[model], rel=0.01)


def _compose_experiment(name: str):
    return compose_config([f"experiment={name}"])


def test_run_flops_hand_computation():
    m = 0.248e9
    # PreResNet164 SWA: 225 epochs, evaluations after epoch 1, every 5th and at budget epoch 187
    # (150 and 225 are multiples of 5): 1 + 45 + 1 = 47; SWA evaluations (with a BN-refresh
    # pass each) from epoch 126 on: 20 multiples of 5 in 130..225, plus 187 = 21; 3 EMAs at the
    # readings 150, 187, 225: 9 refreshes and 18 tests; SWAG at the end: 30 samples of 2
    # variants, 60 refreshes and 60 tests.
    swa = _compose_experiment("cifar100/preresnet164_swa")
    expected = 6 * m * 50_000 * 225 + 2 * m * ((47 + 21 + 18 + 60) * 10_000 + 90 * 50_000)
    assert sweep.run_flops(swa, m, 0) == pytest.approx(expected, rel=1e-12)
    # the same run with 100 epochs done: 25 multiples of 5 in 105..225 plus 187 = 26 evaluations
    expected = 6 * m * 50_000 * 125 + 2 * m * ((26 + 21 + 18 + 60) * 10_000 + 90 * 50_000)
    assert sweep.run_flops(swa, m, 100) == pytest.approx(expected, rel=1e-12)
    # PreResNet164 SGD: 150 epochs, 1 + 30 evaluations; its 3 EMAs at epoch 150, no SWAG
    sgd = _compose_experiment("cifar100/preresnet164_sgd")
    expected = 6 * m * 50_000 * 150 + 2 * m * ((31 + 6) * 10_000 + 3 * 50_000)
    assert sweep.run_flops(sgd, m, 0) == pytest.approx(expected, rel=1e-12)
    # VGG16 SWA, 300 epochs: 1 + 60 evaluations, SWA ones from epoch 161 on (28 multiples of 5
    # in 165..300; the readings 200/250/300 are among them), 18 EMA and 60 SWAG test passes,
    # and no BN to refresh
    vgg = _compose_experiment("cifar100/vgg16_swa")
    expected = 6 * m * 50_000 * 300 + 2 * m * (61 + 28 + 18 + 60) * 10_000
    assert sweep.run_flops(vgg, m, 0) == pytest.approx(expected, rel=1e-12)
    # a data set with its own sizes (synthetic demo, SWA: 30 epochs, eval every 2, start 16,
    # readings 20/25/30): evaluations 1, 2..30 even (15), 25 = 17; SWA ones: 16..30 even (8) + 25 = 9;
    # 2 EMAs at the 3 readings: 6 refreshes, 12 tests; SWAG: 8 samples of 2 variants
    demo = _compose_experiment("synthetic/small_cnn_swa")
    expected = 6 * m * 5000 * 30 + 2 * m * ((17 + 9 + 12 + 16) * 2000 + (9 + 6 + 16) * 5000)
    assert sweep.run_flops(demo, m, 0) == pytest.approx(expected, rel=1e-12)
    # the starting weights in the average: SWA is evaluated (with a refresh) from the first evaluation
    demo = compose_config(["experiment=synthetic/small_cnn_swa", "method.swa_include_start=true"])
    expected = 6 * m * 5000 * 30 + 2 * m * ((17 + 17 + 12 + 16) * 2000 + (17 + 6 + 16) * 5000)
    assert sweep.run_flops(demo, m, 0) == pytest.approx(expected, rel=1e-12)
    # EMAs at every evaluation (17 epochs, 2 decays): 34 refreshes, 68 tests
    every = compose_config(["experiment=synthetic/small_cnn_swa", "ema.eval=every"])
    expected = 6 * m * 5000 * 30 + 2 * m * ((17 + 9 + 68 + 16) * 2000 + (9 + 34 + 16) * 5000)
    assert sweep.run_flops(every, m, 0) == pytest.approx(expected, rel=1e-12)
    # 1000 of the 5000 training images held out: 4000 trained on and refreshed over
    held_out = compose_config(["experiment=synthetic/small_cnn_swa", "data.val_size=1000"])
    expected = 6 * m * 4000 * 30 + 2 * m * ((17 + 9 + 12 + 16) * 2000 + (9 + 6 + 16) * 4000)
    assert sweep.run_flops(held_out, m, 0) == pytest.approx(expected, rel=1e-12)
    # no EMA, no SWAG: the SWA run's own evaluations only
    bare = ["experiment=synthetic/small_cnn_swa", "ema.decays=[]", "swag.collect=false"]
    expected = 6 * m * 5000 * 30 + 2 * m * ((17 + 9) * 2000 + 9 * 5000)
    assert sweep.run_flops(compose_config(bare), m, 0) == pytest.approx(expected, rel=1e-12)


README_MODELS = {
    "VGG16": "vgg16",
    "PreResNet110": "preresnet110",
    "PreResNet164": "preresnet164",
    "WideResNet28x10": "wrn28x10",
}


def test_readme_compute_per_run_is_the_sweeps_estimate(macs):
    """README's table of GPU-hours per CIFAR-100 run is the sweep's FLOP-count estimate at
    30 TFLOP/s (evaluations, EMAs and the SWAG model average counted), to two digits."""
    readme = (Path(CONF_DIR).parent / "README.md").read_text()
    rows = re.findall(r"^\| (\S+) \| ([\d.]+) GPU-h \| ([\d.]+) GPU-h \|$", readme, re.M)
    assert [label for label, _, _ in rows] == list(README_MODELS)
    for label, *shown in rows:
        model = README_MODELS[label]
        for method, hours in zip(("sgd", "swa"), shown, strict=True):
            cfg = compose_config([f"experiment=cifar100/{model}_{method}"])
            estimate = sweep.run_flops(cfg, macs[(model, 100)], 0) / 30e12 / 3600
            assert hours == f"{estimate:.2g}", (label, method, estimate)


ROW = re.compile(r"^(\S+)\s+(\d+)  (.+?)\s+(\d+\.\d\d)  (.+)$")


def dry_run(runs: Path, capsys, monkeypatch, macs) -> tuple[list[tuple], str]:
    def no_launch(*args, **kwargs):
        raise AssertionError("a dry run launched something")

    monkeypatch.setattr(sweep.subprocess, "run", no_launch)
    monkeypatch.setattr(sweep.aggregate, "run", no_launch)
    monkeypatch.setattr(sweep, "macs_per_image", lambda name, classes, size: macs[(name, classes)])
    sweep.main(
        ["table1", "--dataset", "cifar100", "--dry-run", "--runs", str(runs), "--bench", "none"]
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["experiment", "seed", "state", "GPU-h", "left", "estimate"]
    rows = [ROW.match(line).groups() for line in lines[1:-1]]
    return rows, lines[-1]


def test_sweep_dry_run_plan(tmp_path, capsys, monkeypatch, macs):
    runs = tmp_path / "runs"
    rows, total = dry_run(runs, capsys, monkeypatch, macs)
    assert len(rows) == 24
    assert [(r[0], r[1]) for r in rows] == [
        (e, str(s))
        for e in sweep.experiments_of("table1", "cifar100", list(PROTOCOL_MACS))
        for s in range(3)
    ]
    assert all(r[2] == "to do" for r in rows)
    assert all(float(r[3]) > 0 for r in rows)
    assert all(r[4] == "FLOPs at 30 TFLOP/s" for r in rows)
    hours = float(re.search(r"about ([\d.]+) GPU-hours", total).group(1))
    assert total.startswith("24 of 24 runs left")
    assert hours == pytest.approx(sum(float(r[3]) for r in rows), abs=0.1)
    # one row by hand: PreResNet164 SWA, 225 epochs from scratch at 30 TFLOP/s
    cfg = compose_config(["experiment=cifar100/preresnet164_swa"])
    expected = sweep.run_flops(cfg, macs[("preresnet164", 100)], 0) / 30e12 / 3600
    row = next(r for r in rows if r[:2] == ("cifar100/preresnet164_swa", "0"))
    assert float(row[3]) == pytest.approx(expected, abs=0.006)
    assert not runs.exists() or not any(runs.rglob("*"))  # nothing written

    # a finished run, and a partial one
    write_sgd(runs, "cifar100", "vgg16", 1, 72.4)
    write_partial(runs, "cifar100", "preresnet164", "swa", 2, last=40)
    before = sorted(p.relative_to(runs) for p in runs.rglob("*"))
    rows, total = dry_run(runs, capsys, monkeypatch, macs)
    states = {(r[0], r[1]): r for r in rows}
    assert states[("cifar100/vgg16_sgd", "1")][2:4] == ("finished", "0.00")
    partial = states[("cifar100/preresnet164_swa", "2")]
    assert partial[2] == "running (epoch 40/225)"
    assert 0 < float(partial[3]) < float(states[("cifar100/preresnet164_swa", "0")][3])
    assert sum(r[2] == "to do" for r in rows) == 22
    assert total.startswith("23 of 24 runs left")
    assert sorted(p.relative_to(runs) for p in runs.rglob("*")) == before


@pytest.fixture(scope="module")
def cpu_bench(tmp_path_factory) -> Path:
    """A real benchmark JSON: the demo model, faithful, at a tiny size on this CPU."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    args = ["--size=tiny", "--train-size=128", "--test-size=64", "--repeats=1", "--ref-workers=0",
            "--speed=faithful", f"--out={out}"]  # fmt: skip
    bench.run(args, log=lambda line: None)
    return out


def test_plan_estimates_from_measured_throughput(cpu_bench, tmp_path, capsys):
    rates = {
        k: v["ours"]
        for k, v in json.loads(cpu_bench.read_text())["models"]["small_cnn"]["measurements"].items()
    }
    loaded = sweep.load_bench(str(cpu_bench))
    experiments = sweep.experiments_of("table1", "synthetic", ["small_cnn"])
    rows = sweep.plan(experiments, [0], tmp_path / "runs", [], 30.0, loaded)
    swa = next(r for r in rows if r["experiment"] == "synthetic/small_cnn_swa")
    # synthetic SWA (see test_run_flops_hand_computation): 30 epochs of 5000 images, 54 test
    # passes of 2000, 31 BN refreshes of 5000
    seconds = (
        30 * 5000 / rates["train_images_per_s"]
        + 54 * 2000 / rates["eval_images_per_s"]
        + 31 * 5000 / rates["bn_refresh_images_per_s"]
    )
    assert swa["hours_left"] == pytest.approx(seconds / 3600, rel=1e-12)
    assert swa["basis"] == f"measured, {5000 / rates['train_images_per_s']:.3g} s/epoch"
    assert all(r["basis"].startswith("measured") for r in rows)

    # another pipeline than the benchmark's (bf16), or a model it did not measure: FLOP counts
    bf16 = sweep.plan(experiments, [0], tmp_path / "runs", ["speed.bf16=true"], 30.0, loaded)
    assert all(r["basis"] == "FLOPs at 30 TFLOP/s" for r in bf16)
    flops = sweep.run_flops(compose_config(["experiment=synthetic/small_cnn_swa"]), 1e6, 0)
    assert flops == 6e6 * 30 * 5000 + 2e6 * (54 * 2000 + 31 * 5000)
    vgg = sweep.plan(["cifar100/vgg16_sgd"], [0], tmp_path / "runs", [], 30.0, loaded)
    assert vgg[0]["basis"] == "FLOPs at 30 TFLOP/s"

    # the printed plan names the file and the device; nothing ran, nothing was written
    sweep.main(
        ["table1", "--dataset", "synthetic", "--models", "small_cnn", "--seeds", "0",
         "--runs", str(tmp_path / "runs"), "--bench", str(cpu_bench), "--dry-run"]
    )  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    device = json.loads(cpu_bench.read_text())["environment"]["device_name"]
    assert out[0] == f"measured throughput: {cpu_bench} ({device})"
    assert "FLOP counts assume" not in out[-1] and out[-1].startswith("2 of 2 runs left")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "content, message",
    [(None, "no such file"), ("{}", "is not a benchmark JSON"), ("[1,", "is not valid JSON")],
)
def test_bad_bench_file_is_one_line_error(tmp_path, capsys, content, message):
    path = tmp_path / "bench.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(["table1", "--dataset", "synthetic", "--bench", str(path), "--dry-run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


FAST = ("speed.bf16=true", "speed.tf32=true")


def test_cells_with_fast_path_runs_are_marked(tmp_path, capsys):
    """Runs trained with fast paths are the table's runs when --extra says so, and marked."""
    runs = tmp_path / "runs"
    for seed, acc in enumerate((72.0, 72.2)):
        write_summary(
            cell_run(runs, "table1", "cifar100", "vgg16", "sgd", seed, FAST),
            {"final": {"sgd": final(acc, 1.0, 0.05), "swa": None}, "budgets": {}},
        )
    rows = aggregate.build_table("table1", "cifar100", runs, ["vgg16"], [0, 1], {}, FAST)
    assert rows["vgg16"]["SGD"].stat()[0] == pytest.approx(72.1)
    assert aggregate.cell_markdown(rows["vgg16"]["SGD"]).endswith("[fast paths: bf16, tf32]")
    faithful = tmp_path / "faithful"
    write_sgd(faithful, "cifar100", "vgg16", 0, 72.0)
    rows = aggregate.build_table("table1", "cifar100", faithful, ["vgg16"], [0], {})
    assert "fast paths" not in aggregate.cell_markdown(rows["vgg16"]["SGD"])
    # without the --extra they were trained with, they are runs of another config
    rows = aggregate.build_table("table1", "cifar100", runs, ["vgg16"], [0, 1], {})
    cell = rows["vgg16"]["SGD"]
    assert cell.values == [] and aggregate.cell_markdown(cell) == "other config (see below)"
    assert cell.pending[0].endswith(
        "holds a run of another config (differs in: speed.bf16, speed.tf32)"
    )


# --- runs of another config in a cell's directory, the models of a data set, the results folder


def test_a_hand_run_in_a_cells_directory_is_reported_and_exits_1(tmp_path, capsys):
    """A run trained by hand with overrides lands in the cell's directory (the same name): the
    table names it with the differing keys, counts only the cell's own runs, and exits 1."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    budgets = dict.fromkeys(SWA_LABELS, (80.0, 0.8, 0.02))
    hand = cell_run(
        runs, "table1", "synthetic", "small_cnn", "swa", 0, ["epochs=10", "method.swa_start=6"]
    )
    assert hand.run_dir == cell_run(runs, "table1", "synthetic", "small_cnn", "swa", 0).run_dir
    write_summary(hand, {"final": {"sgd": final(1, 1, 1), "swa": final(80, 1, 1)}, "budgets": {}})
    write_swa(runs, "synthetic", "small_cnn", 1, budgets)
    args = [
        "table1",
        "--dataset",
        "synthetic",
        "--runs",
        str(runs),
        "--out",
        str(out),
        "--seeds",
        "0,1",
    ]
    with pytest.raises(SystemExit) as info:
        aggregate.main(args)
    assert info.value.code == aggregate.EXIT_OTHER_CONFIG == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "error: run directories holding a run of another config: 1 (listed under the table); "
        "move them away, or give --extra the overrides they were trained with"
    ]
    for column in SWA_COLUMNS.values():
        assert ours(md_tables(captured.out)[0]["small_cnn"][column]) == "80.00 (n=1)"
        assert (
            f"- small_cnn {column}: seed 0: {hand.run_dir} holds a run of another config "
            "(differs in: epochs, method.swa_start)"
        ) in captured.out
    # the same runs with the overrides the hand run was trained with: it is the one counted
    assert aggregate.run([*args, "--seeds", "0", "--extra", "epochs=10 method.swa_start=6"]) == 0


def test_table_models_are_the_data_sets_experiments(tmp_path, capsys):
    assert table_models("table1", "cifar100") == [
        "vgg16",
        "preresnet110",
        "preresnet164",
        "wrn28x10",
    ]
    assert table_models("table1", "cifar10") == [
        "vgg16",
        "preresnet110",
        "preresnet164",
        "wrn28x10",
    ]
    assert table_models("fixed_lr", "cifar100") == ["wrn28x10"]
    assert table_models("table2", "imagenet") == ["resnet50", "resnet152", "densenet161"]
    assert table_models("table1", "synthetic") == ["small_cnn"]
    out = tmp_path / "out"
    text = run_main(
        capsys, ["table1", "--dataset", "synthetic", "--runs", str(tmp_path), "--out", str(out)]
    )
    assert list(md_tables(text)[0]) == ["small_cnn"]
    assert text.count("- small_cnn") == 4 * 3 and text.count("missing") == 4 + 4 * 3
    for argv, message in (
        (["table1", "--dataset", "cifar1000"], "no experiment configs for table1 on 'cifar1000'"),
        (["fixed_lr", "--dataset", "cifar10"], "no experiment configs for fixed_lr on 'cifar10'"),
        (
            ["table1", "--dataset", "synthetic", "--models", "vgg16"],
            "--models: 'vgg16' has no table1 experiment configs on synthetic (valid: small_cnn)",
        ),
    ):
        with pytest.raises(SystemExit) as info:
            aggregate.main([*argv, "--out", str(out)])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_one_results_folder_for_aggregate_sweep_and_make():
    """aggregate, the sweep and every make target that aggregates use experiments/results/."""
    results = Path(__file__).resolve().parents[1] / "experiments" / "results"
    assert aggregate.parse_args(["table1", "--dataset", "x"]).out == results
    assert sweep.parse_args(["table1", "--dataset", "x"]).out == results
    targets = ["reproduce-cifar100", "reproduce-synthetic", "reproduce-imagenet", "aggregate"]
    for target in targets:
        made = subprocess.run(
            ["make", "-n", target],
            cwd=results.parents[1],
            capture_output=True,
            text=True,
            check=True,
        )
        commands = [
            line
            for line in made.stdout.splitlines()
            if "swa_repro.sweep" in line or "swa_repro.aggregate" in line
        ]
        assert commands and all("--out" not in line for line in commands), (target, commands)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--tflops", "0"], "--tflops must be a positive number, got 0.0"),
        (["--tflops", "-5"], "--tflops must be a positive number"),
        (["--extra", 'a"'], "does not parse as shell words: No closing quotation"),
    ],
)
def test_bad_sweep_options_are_one_line_errors(tmp_path, capsys, options, message):
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(
            ["table1", "--dataset", "synthetic", "--runs", str(tmp_path), "--dry-run", *options]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
