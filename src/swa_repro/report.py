"""Plain-text tables of test metrics, as printed at the end of runs and by the demo."""

from __future__ import annotations


def metrics_table(rows: list[tuple[str, dict]], width: int = 30) -> str:
    """One line per (label, metrics); metrics hold acc/nll/ece, bare or prefixed with test_."""
    lines = [f"{'':<{width}}{'test acc %':>11}{'NLL':>9}{'ECE':>8}"]
    for label, r in rows:
        acc, nll, ece = (r[k] if k in r else r[f"test_{k}"] for k in ("acc", "nll", "ece"))
        lines.append(f"{label:<{width}}{acc:>11.2f}{nll:>9.4f}{ece:>8.4f}")
    return "\n".join(lines)
