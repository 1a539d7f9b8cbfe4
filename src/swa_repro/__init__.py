"""Stochastic Weight Averaging reproduction (Izmailov et al., UAI 2018)."""

from pathlib import Path

# The checkout this package is installed from (editable install): conf/, plots/, experiments/.
REPO_ROOT = Path(__file__).resolve().parents[2]
