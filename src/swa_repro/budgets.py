"""When a run is evaluated and read, and its summary.

Table 1 reads each run at budgets: the SGD run after `budget` epochs, the SWA run after
floor(budget x f) epochs for f in method.budget_readings (1, 1.25, 1.5). Evaluations happen
after epoch 1 (eval_first_epoch), every eval_every epochs, at the last epoch and at the budget
epochs. A reading is the test metrics of the SWA model there, or of the SGD model when nothing
has been averaged yet (labelled "model": "sgd", which aggregation keeps out of SWA cells).
"""

from __future__ import annotations

import math

from omegaconf import DictConfig

READ_METRICS = ("acc", "loss", "nll", "ece")


def budget_epochs(cfg: DictConfig) -> dict[int, list[str]]:
    """Epoch (1-based) -> budget labels (e.g. "1.25") read at that epoch: floor(budget x fraction)."""
    readings: dict[int, list[str]] = {}
    for f in cfg.method.budget_readings:
        epoch = math.floor(cfg.budget * f)
        if epoch <= cfg.epochs:
            readings.setdefault(epoch, []).append(f"{f:g}")
    return readings


def ema_eval_epochs(cfg: DictConfig) -> set[int] | None:
    """The (1-based) epochs at which the EMAs are evaluated: the budget readings and the last
    epoch (ema.eval=budgets), or None: every evaluated epoch (ema.eval=every)."""
    return None if cfg.ema.eval == "every" else {*budget_epochs(cfg), cfg.epochs}


def is_eval_epoch(done: int, cfg: DictConfig, readings_at: dict[int, list[str]]) -> bool:
    """Evaluate after epoch 1 (if eval_first_epoch), every eval_every epochs, the last epoch and
    the budget epochs (1-based)."""
    first = done == 1 and cfg.eval_first_epoch
    return first or done % cfg.eval_every == 0 or done == cfg.epochs or done in readings_at


def budget_reading(record: dict, source: str) -> dict:
    """The test metrics of one model (source "swa_test_" or "test_") at a budget epoch."""
    reading = {"epoch": record["epoch"], "model": "swa" if source == "swa_test_" else "sgd"}
    reading.update({f"test_{k}": record[source + k] for k in READ_METRICS})
    if "n_averaged" in record and source == "swa_test_":
        reading["n_averaged"] = record["n_averaged"]
    return reading


def final_metrics(record: dict, key: str) -> dict:
    """The test metrics of model `key` ("swa", an EMA, ...) in an evaluated epoch's record; the
    SWA model's also with its model count."""
    final = {k: record[f"{key}_test_{k}"] for k in READ_METRICS}
    if key == "swa":
        final["n_averaged"] = record["n_averaged"]
    return final


def make_summary(cfg, data_name, state, schedule, steps_per_epoch, elapsed, extra) -> dict:
    """summary.json: the final SGD model's (and each averaged model's) metrics, the budget
    readings, the LR per epoch, the wall time; `extra`: the collectors' final_metrics."""
    last = state.metrics[-1]
    final = {"sgd": {k: last[f"test_{k}"] for k in READ_METRICS}, "swa": None}
    final["sgd"].update(train_loss=last["train_loss"], train_acc=last["train_acc"])
    averaged = [k.removesuffix("_test_acc") for k in last if k.endswith("_test_acc")]
    final.update({key: final_metrics(last, key) for key in averaged})
    return {
        "status": "finished",
        "synthetic": data_name == "synthetic",
        "data": data_name,
        "model": cfg.model.name,
        "method": cfg.method.name,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "budget": cfg.budget,
        "final": {**final, **extra},
        "budgets": state.readings,
        "lr_curve": [schedule(e, 0, steps_per_epoch) for e in range(cfg.epochs)],
        "wall_time_s": elapsed,
    }
