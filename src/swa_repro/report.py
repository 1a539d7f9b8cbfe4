"""What a training run prints: its header, a line per epoch, the closing table; and the
plain-text metrics table the demo shares."""

from __future__ import annotations

from tqdm.auto import tqdm

from swa_repro.models import count_parameters


def metrics_table(rows: list[tuple[str, dict]], width: int = 30) -> str:
    """One line per (label, metrics); metrics hold acc/nll/ece, bare or prefixed with test_."""
    lines = [f"{'':<{width}}{'test acc %':>11}{'NLL':>9}{'ECE':>8}"]
    for label, r in rows:
        acc, nll, ece = (r[k] if k in r else r[f"test_{k}"] for k in ("acc", "nll", "ece"))
        lines.append(f"{label:<{width}}{acc:>11.2f}{nll:>9.4f}{ece:>8.4f}")
    return "\n".join(lines)


def model_label(key: str) -> str:
    """How a final model's key reads in tables: SWA, EMA 0.999, EMA 0.999 avg BN (the ablation
    with averaged BN buffers, no refresh), SWAG-Diag, SWAG."""
    if key.startswith("ema_"):
        decay, _, ablation = key.removeprefix("ema_").partition("_")
        return f"EMA {decay}" + (" avg BN" if ablation == "bnavg" else "")
    return {"swag_diag": "SWAG-Diag", "swag": "SWAG"}.get(key, key.upper())


def header(run) -> str:
    """One line: data, model, method with the terms of the schedule actually used, seed,
    device, run directory."""
    cfg = run.cfg
    tag = " [SYNTHETIC DATA]" if run.data.name == "synthetic" else ""
    swa = f", SWA from epoch {cfg.method.swa_start:g}" if cfg.method.swa else ""
    world = f" x {run.dist.world} processes" if run.dist.world > 1 else ""
    return (
        f"{run.data.name}{tag} | {cfg.model.name} ({count_parameters(run.model):,} params) | "
        f"{cfg.method.name}: {cfg.epochs} epochs, {run.schedule.describe()}, "
        f"wd {cfg.optim.weight_decay}{swa} | seed {cfg.seed} | {run.device}{world} | "
        f"{run.files.root}"
    )


def initial_line(record: dict) -> None:
    tqdm.write(f"initial model: test acc {record['test_acc']:6.2f} nll {record['test_nll']:.4f}")


def epoch_line(record, epoch, epochs, lr, train_loss, train_acc, seconds) -> None:
    """The epoch's training numbers, and its test metrics when it was evaluated (`record`)."""
    done = epoch + 1
    line = f"ep {done:>4}/{epochs}  lr {lr:.5f}  train loss {train_loss:.4f} acc {train_acc:6.2f}"
    if record is not None:
        line += f" | test acc {record['test_acc']:6.2f} nll {record['test_nll']:.4f}"
        if "swa_test_acc" in record:
            line += (
                f" | SWA acc {record['swa_test_acc']:6.2f} nll {record['swa_test_nll']:.4f} "
                f"(n={record['n_averaged']})"
            )
    tqdm.write(line + f" | {seconds:.1f}s")


def closing_rows(summary: dict) -> list[tuple[str, dict]]:
    """Every reading summary.json holds: the initial model, the final SGD model, each budget
    reading, and each averaged model's final metrics when no reading shows them."""
    readings = dict(summary["budgets"])
    initial = readings.pop("initial", None)
    rows = [] if initial is None else [(f"initial model (ep {initial['epoch']})", initial)]
    rows.append((f"SGD (final, ep {summary['epochs']})", summary["final"]["sgd"]))
    rows += [
        (f"{r['model'].upper()} {label} budget (ep {r['epoch']})", r)
        for label, r in readings.items()
    ]
    read_at_end = any(r["epoch"] == summary["epochs"] for r in readings.values())
    for key, metrics in summary["final"].items():
        if key == "sgd" or metrics is None or (key == "swa" and read_at_end):
            continue
        if all(k in metrics for k in ("acc", "nll", "ece")):
            when = "ep" if key.endswith("_bnavg") else "final, ep"
            rows.append((f"{model_label(key)} ({when} {summary['epochs']})", metrics))
    return rows


def closing_table(summary: dict, files) -> str:
    tag = " [SYNTHETIC DATA]" if summary["synthetic"] else ""
    return "\n".join(
        [
            f"\n{summary['data']}{tag} {summary['model']} {summary['method']} seed "
            f"{summary['seed']}: finished in {summary['wall_time_s'] / 60:.1f} min",
            metrics_table(closing_rows(summary)),
            f"results: {files.summary}  metrics: {files.metrics}",
        ]
    )
