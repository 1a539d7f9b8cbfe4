"""Hessian spectrum figure: the origins' spectral densities on one axis, their top eigenvalues
side by side.

    python plots/spectrum.py HESSIAN.npz --out figures/spectrum.png

Reads a hessian .npz (nothing is computed): left, every origin's Gaussian-smoothed stochastic
Lanczos density (density_grid, density) on a log scale; right, every origin's top eigenvalues
(descending) as grouped bars, the smallest eigenvalue and the trace (+- s.e.) in the legend.
Origins not done are left out; eigenvalues that did not converge (NaN) are not drawn. SWA red,
SGD blue as in the other figures. Writes PNG and PDF.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plot_common import PlotInputError, load, one_line_errors, save, title  # noqa: E402
from rays import origin_color  # noqa: E402

KEYS = ("origins", "done", "density_grid", "density", "top_eigenvalues", "min_eigenvalue",
        "trace", "trace_se")  # fmt: skip
FLOOR = 1e-6  # lowest density drawn, relative to the largest


def number(value: float, spec: str) -> str:
    """`value` formatted, or "n/c" where it is NaN (not converged)."""
    return format(float(value), spec) if np.isfinite(value) else "n/c"


def draw(hessian: Path, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    data = load(hessian, "hessian", KEYS)
    done = np.asarray(data["done"], dtype=bool)
    if not done.any():
        raise PlotInputError(f"{hessian} has no finished origin; run the hessian analysis on")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.0, 4.2))
    shown = [(k, str(name)) for k, name in enumerate(data["origins"]) if done[k]]
    top = np.asarray(data["top_eigenvalues"])
    width = 0.8 / len(shown)
    peak = max(float(np.nanmax(data["density"][k])) for k, _ in shown)
    for slot, (k, name) in enumerate(shown):
        color = origin_color(name, k)
        density = np.maximum(np.asarray(data["density"][k]), FLOOR * peak)
        left.semilogy(data["density_grid"][k], density, color=color, lw=1.6, label=name)
        label = (
            f"{name}: min {number(data['min_eigenvalue'][k], '.3g')}, "
            f"trace {number(data['trace'][k], '.4g')} $\\pm$ {number(data['trace_se'][k], '.2g')}"
        )
        index = np.arange(top.shape[1]) + (slot - (len(shown) - 1) / 2) * width
        right.bar(index, top[k], width=width, color=color, label=label)
    left.set_ylim(FLOOR * peak, 2 * peak)
    left.set_xlabel("eigenvalue")
    left.set_ylabel("density (smoothed SLQ)")
    left.set_title("spectral density", fontsize=10)
    left.legend(fontsize=8)
    right.set_xticks(np.arange(top.shape[1]), [str(i + 1) for i in range(top.shape[1])])
    right.set_xlabel("rank")
    right.set_ylabel("eigenvalue")
    right.set_title("top eigenvalues", fontsize=10)
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(title(data["config"], "Hessian of the data loss"))
    fig.tight_layout()
    return save(fig, out)


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hessian", type=Path)
    parser.add_argument("--out", type=Path, default=Path("figures/spectrum.png"))
    args = parser.parse_args()
    for path in draw(args.hessian, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
