"""`--help` of every entry point exits 0 and says how to call it; the analyses' help lists them
and each one's keys with defaults and meanings, read from conf/analysis/*.yaml.

In-process (each entry point's own main with its --help), so the whole file takes seconds.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from swa_repro import aggregate, bench, demo, figures, posterior, sweep
from swa_repro import train as swa_train
from swa_repro.analysis import __main__ as analysis
from swa_repro.analysis import usage

REPO = Path(__file__).resolve().parents[1]
PLOT_SCRIPTS = sorted(p.stem for p in (REPO / "plots").glob("*.py") if p.stem != "plot_common")
ANALYSES = sorted(p.stem for p in (REPO / "conf" / "analysis").glob("*.yaml") if p.stem != "base")


def plot_main(name: str):
    """The main() of plots/NAME.py, loaded as a module of its own."""
    spec = importlib.util.spec_from_file_location(
        f"plot_script_{name}", REPO / "plots" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def with_argv(main, program: str):
    """An entry point that reads sys.argv: called with `program --help`."""

    def call(monkeypatch):
        monkeypatch.setattr(sys, "argv", [program, "--help"])
        return main()

    return call


ENTRY_POINTS = {
    "train": (
        with_argv(swa_train.cli, "swa_repro.train"),
        "python -m swa_repro.train [group=option",
    ),
    "sweep": (lambda mp: sweep.main(["--help"]), "usage:"),
    "aggregate": (lambda mp: aggregate.main(["--help"]), "usage:"),
    "figures": (lambda mp: figures.main(["--help"]), "usage:"),
    "demo": (lambda mp: demo.main(["--help"]), "usage: python -m swa_repro.demo"),
    "posterior": (lambda mp: posterior.main(["--help"]), "usage: python -m swa_repro.posterior"),
    "bench": (with_argv(bench.main, "python -m swa_repro.bench"), "usage:"),
    "analysis": (lambda mp: analysis.main(["--help"]), "usage: python -m swa_repro.analysis"),
    **{
        f"plots/{name}.py": (with_argv(plot_main(name), f"{name}.py"), "usage:")
        for name in PLOT_SCRIPTS
    },
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_help_exits_0(entry, monkeypatch, capsys):
    call, first = ENTRY_POINTS[entry]
    try:
        code = call(monkeypatch)
    except SystemExit as exc:
        code = exc.code
    assert code in (0, None), entry
    out = capsys.readouterr().out
    assert out.lstrip().startswith(first), out[:300]
    assert "--help" in out or "-h" in out or entry == "train", out[:300]


def test_plot_scripts_are_all_covered():
    assert PLOT_SCRIPTS == [
        "around", "convergence", "fge", "line", "plane", "rays", "reliability", "spectrum",
        "trajectory",
    ]  # fmt: skip


def test_analysis_help_lists_every_analysis_with_one_line(capsys):
    assert analysis.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert sorted(analysis.ANALYSES) == ANALYSES
    for name in ANALYSES:
        line = next(line for line in out.splitlines() if line.split()[:1] == [name])
        assert line.split(None, 1)[1] == usage.summary(name)
        assert len(usage.summary(name)) > 20


def test_no_analysis_named_is_usage_and_list_then_error_exit_2(capsys):
    assert analysis.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == f"usage: {usage.USAGE}"
    names = "fge, line, plane, rays, trajectory, hessian, sharpness, around"
    assert err[-1] == f"error: no analysis named; choose one of {names}"
    assert analysis.main(["nope"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: analysis name 'nope' unknown; choose one of {names}"
    ]


@pytest.mark.parametrize("name", ANALYSES)
def test_analysis_name_help_lists_its_keys_with_defaults_and_meanings(name, capsys):
    """Every key of NAME.yaml and base.yaml appears with its default as written in the file
    (checked against a YAML parse of the file) and a meaning."""
    assert analysis.main([name, "--help", "runs=/somewhere"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m swa_repro.analysis {name} [key=value ...]")
    lines = out.splitlines()
    for file in (name, "base"):
        parsed = yaml.safe_load((REPO / "conf" / "analysis" / f"{file}.yaml").read_text())
        parsed.pop("defaults", None)
        for key, value in parsed.items():
            row = next(i for i, line in enumerate(lines) if line.startswith(f"  {key} = "))
            shown = lines[row].split(" = ", 1)[1]
            if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                assert shown.split("  (= ")[0] == str(value), key
            assert lines[row + 1].startswith("      ") and lines[row + 1].strip(), key
    # defaults that refer to other keys are shown resolved with the overrides given
    assert "(= /somewhere/cifar100/preresnet164/swa/seed0)" in out or name == "fge"
    assert "(= /somewhere/analyses/cifar100/preresnet164/seed0/" in out
