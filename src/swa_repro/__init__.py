"""Stochastic Weight Averaging reproduction (Izmailov et al., UAI 2018)."""

from pathlib import Path

# The checkout this package is installed from (editable install): conf/, plots/, experiments/.
REPO_ROOT = Path(__file__).resolve().parents[2]


def __getattr__(name: str):
    """swa_repro.load_model / load_swag (swa_repro.weights), imported on first use so that
    `import swa_repro.layout` (the plot scripts) stays free of torch."""
    if name in ("load_model", "load_swag"):
        from swa_repro import weights

        return getattr(weights, name)
    raise AttributeError(f"module 'swa_repro' has no attribute {name!r}")
