"""FGE figure: test accuracy of each FGE sample and of the running ensemble.

    python plots/fge.py FGE.npz --out figures/fge.png

Reads an fge .npz (nothing is computed here): `sample_test_acc[k]` and
`ensemble_test_acc[k]` (the ensemble of samples 1..k+1) against the number of samples.
Writes PNG and PDF.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plot_common import load, one_line_errors, save, title  # noqa: E402


def draw(fge: Path, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    data = load(fge, "fge", ("sample_test_acc", "ensemble_test_acc"))
    sample = np.asarray(data["sample_test_acc"])
    ensemble = np.asarray(data["ensemble_test_acc"])
    n = np.arange(1, len(sample) + 1)
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    ax.plot(n, sample, "o", color="tab:gray", ms=5, label="single FGE sample")
    ax.plot(n, ensemble, "o-", color="black", ms=4, lw=1.8, label="FGE ensemble of samples 1..k")
    ax.set_xlabel("number of FGE samples k")
    percent = np.nanmax(np.concatenate([sample, ensemble]), initial=0.0) > 1.0
    ax.set_ylabel("test accuracy (%)" if percent else "test accuracy")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title(data["config"], "Fast Geometric Ensembling"))
    fig.tight_layout()
    return save(fig, out)


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fge", type=Path)
    parser.add_argument("--out", type=Path, default=Path("figures/fge.png"))
    args = parser.parse_args()
    for path in draw(args.fge, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
