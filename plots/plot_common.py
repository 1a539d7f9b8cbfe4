"""Helpers shared by the figure scripts (plane, trajectory, line, rays, fge, convergence).

Reading an analysis .npz or a run's JSON files, making a title from the `config` JSON, the
labels and colours of the metrics, writing a figure as PNG and PDF, and ending a script with a
one-line "error: ..." and exit code 2 (as swa_repro.cli does) when an input is missing or of
the wrong kind. Nothing here computes a result.
"""

from __future__ import annotations

import functools
import json
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import matplotlib

# This checkout's swa_repro (for its stdlib-only run-directory layout, swa_repro.layout) before
# any other installed copy: a script reads runs with the layout of the code that wrote them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = [
    "COLORS",
    "METRICS",
    "PlotInputError",
    "load",
    "metric_label",
    "one_line_errors",
    "read_json",
    "save",
    "suptitle_above_axes",
    "title",
]

COLORS = {"sgd": "tab:blue", "swa": "tab:red"}
EXIT_USER_ERROR = 2  # as swa_repro.cli

# metric -> (axis label, upper end of the colour scale in the paper's plane plots)
METRICS: dict[str, tuple[str, float]] = {
    "train_loss": ("train loss (L2-regularised)", 5.0),
    "train_nll": ("train NLL", 5.0),
    "train_err": ("train error (%)", 40.0),
    "test_loss": ("test loss", 5.0),
    "test_nll": ("test NLL", 5.0),
    "test_err": ("test error (%)", 40.0),
}


def metric_label(metric: str) -> str:
    return METRICS.get(metric, (metric.replace("_", " "), 0.0))[0]


class PlotInputError(ValueError):
    """An input the figure cannot be drawn from; its message is one line naming the file."""


def one_line_errors(main):
    """Wrap a script's main: a PlotInputError ends it with one `error: ...` line and exit 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except PlotInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper


def require(data: dict, keys, path: Path, expected: str) -> None:
    """PlotInputError naming `path` and what it should be if `data` lacks any of `keys`."""
    missing = [key for key in keys if key not in data]
    if missing:
        raise PlotInputError(f"{path} has no {', '.join(missing)}; expected {expected}")


def read_json(path: Path, expected: str, lines: bool = False) -> Any:
    """The JSON (or JSON Lines: a list of records) in `path`; PlotInputError if unreadable."""
    if not path.is_file():
        raise PlotInputError(f"{path}: no such file; expected {expected}")
    try:
        text = path.read_text()
        return (
            [json.loads(line) for line in text.splitlines() if line] if lines else json.loads(text)
        )
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise PlotInputError(f"{path} is not valid JSON ({exc}); expected {expected}") from None


def load(path: Path, analysis: str | None = None, keys=()) -> dict[str, Any]:
    """Every array of the .npz (copied out of the file) plus `config` parsed into a dict.

    PlotInputError naming the file and what was expected (the output of `python -m
    swa_repro.analysis ANALYSIS`) if it is missing, not an .npz, or lacks any of `keys`.
    """
    path = Path(path)
    expected = f"an .npz of python -m swa_repro.analysis {analysis or 'NAME'}"
    if not path.is_file():
        raise PlotInputError(f"{path}: no such file; expected {expected}")
    if not zipfile.is_zipfile(path):
        raise PlotInputError(f"{path} is not an .npz archive; expected {expected}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: np.array(npz[key]) for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise PlotInputError(
            f"{path} is not a readable .npz ({exc}); expected {expected}"
        ) from None
    require(data, keys, path, expected)
    raw = data.get("config")
    config: dict = {}
    if raw is not None:
        try:
            parsed = json.loads(str(raw.item() if raw.ndim == 0 else raw))
            config = parsed if isinstance(parsed, dict) else {}
        except (ValueError, TypeError):
            config = {}
    data["config"] = config
    return data


def _find(config: Any, key: str) -> Any:
    """First value stored under `key` anywhere in a nested dict/list (breadth first)."""
    queue = [config]
    while queue:
        node = queue.pop(0)
        if isinstance(node, dict):
            if key in node:
                return node[key]
            queue.extend(node.values())
        elif isinstance(node, list):
            queue.extend(node)
    return None


def _name(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("name", value.get("dataset"))
    return value if isinstance(value, str) and value else None


def is_synthetic(config: dict) -> bool:
    if _find(config, "synthetic") is True:
        return True
    data = _name(_find(config, "data")) or _name(_find(config, "dataset")) or ""
    return "synthetic" in data.lower()


def title(config: dict, what: str) -> str:
    """`what`, then "model on data" when the config says so, then the synthetic tag."""
    model = _name(_find(config, "model"))
    data = _name(_find(config, "data")) or _name(_find(config, "dataset"))
    parts = [what]
    if model and data:
        parts.append(f"{model} on {data}")
    elif model or data:
        parts.append(model or data)
    text = ": ".join(parts)
    return text + (" (SYNTHETIC DATA)" if is_synthetic(config) else "")


def suptitle_above_axes(fig: plt.Figure, text: str) -> None:
    """A figure title just above the highest axes (no gap when panels have equal aspect)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    to_figure = fig.transFigure.inverted()
    top = max(ax.get_tightbbox(renderer).transformed(to_figure).y1 for ax in fig.axes)
    fig.suptitle(text, y=top + 0.01, va="bottom")


def save(fig: plt.Figure, out: Path) -> list[Path]:
    """Write `fig` as out.png and out.pdf, close it, return the two paths."""
    out.parent.mkdir(parents=True, exist_ok=True)
    written = [out.with_suffix(".png"), out.with_suffix(".pdf")]
    for path in written:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return written
