"""Helpers shared by the analysis figures (plane, trajectory, line, rays, fge).

Reading an analysis .npz, making a title from its `config` JSON, the labels and colours of
the metrics, and writing a figure as PNG and PDF. Nothing here computes a result.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convergence import COLORS  # noqa: E402

__all__ = ["COLORS", "METRICS", "load", "metric_label", "save", "suptitle_above_axes", "title"]

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


def load(path: Path) -> dict[str, Any]:
    """Every array of the .npz (copied out of the file) plus `config` parsed into a dict."""
    with np.load(path, allow_pickle=False) as npz:
        data = {key: np.array(npz[key]) for key in npz.files}
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
