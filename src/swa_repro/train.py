"""Train one CIFAR run with SGD or SWA, as in the authors' train.py.

    python -m swa_repro.train experiment=cifar100/preresnet164_swa seed=1

Per epoch: set the LR from the schedule, one pass of SGD over the augmented training
stream, collect the weights into the SWA average when due, evaluate SGD (and SWA,
after a BN refresh) when due, checkpoint. The run directory receives config.yaml,
metrics.jsonl (one line per evaluated epoch), summary.json and checkpoints/.
Relaunching the same command resumes from the last good checkpoint.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import closing
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from swa_repro import REPO_ROOT
from swa_repro.averaging import is_averaging_epoch, make_averaged_model
from swa_repro.bn_refresh import refresh_bn
from swa_repro.checkpoint import CheckpointError
from swa_repro.cli import EXIT_USER_ERROR
from swa_repro.config_check import ConfigError, resolve_device, validate_config
from swa_repro.data import DataError, Normalizer, TrainStream, eval_batches, load_data
from swa_repro.fast import Speed
from swa_repro.logger import make_logger
from swa_repro.metrics import evaluate
from swa_repro.models import build_model, count_parameters
from swa_repro.preemption import EXIT_PREEMPTED, StopRequest
from swa_repro.report import metrics_table
from swa_repro.rng import capture_rng_state, restore_rng_state, seed_everything
from swa_repro.run_files import RunFiles, RunInUseError, check_same_config, find_resume_state
from swa_repro.schedule import build_schedule

CONF_DIR = str(REPO_ROOT / "conf")
LOSS_CHECK_EVERY = 20  # steps between host syncs (progress bar, non-finite loss check)
EXIT_NON_FINITE = 3


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The config `python -m swa_repro.train *overrides` runs with (outside a Hydra job)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


class NonFiniteError(RuntimeError):
    """The loss or the weights became NaN or Inf."""


class Preempted(Exception):
    """A stop signal arrived; a checkpoint has been written."""


def budget_epochs(cfg: DictConfig) -> dict[int, list[str]]:
    """Epoch (1-based) -> budget labels (e.g. "1.25") read at that epoch: floor(budget x fraction)."""
    fractions = cfg.method.budget_readings
    readings: dict[int, list[str]] = {}
    for f in fractions:
        epoch = math.floor(cfg.budget * f)
        if epoch <= cfg.epochs:
            readings.setdefault(epoch, []).append(f"{f:g}")
    return readings


def sgd_step(
    step_model, optimizer, inputs, labels, speed, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of SGD on the mean cross-entropy; returns the (detached) loss and logits."""
    with speed.autocast(device):
        logits = step_model(inputs)
        loss = F.cross_entropy(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach()


def is_eval_epoch(done: int, cfg: DictConfig, readings_at: dict[int, list[str]]) -> bool:
    """Evaluate after epoch 1, every eval_every epochs, the last epoch and budget epochs (1-based)."""
    return done == 1 or done % cfg.eval_every == 0 or done == cfg.epochs or done in readings_at


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run (or resume, or recognise as finished) the run in `run_dir`; returns its summary."""
    validate_config(cfg)
    files = RunFiles(Path(run_dir))
    with files.locked():  # one process per run directory
        return train_locked(cfg, files)


def train_locked(cfg: DictConfig, files: RunFiles) -> dict:
    speed = Speed.from_cfg(cfg.get("speed"))  # opt-in fast paths (swa_repro.fast); default all off
    if files.finished():
        check_same_config(files.read_config(), cfg)
        print(f"{files.root}: already finished, nothing to do (summary: {files.summary})")
        return files.read_summary()
    resumed = find_resume_state(cfg.resume, files)
    if resumed is not None and resumed["own"]:
        check_same_config(resumed["config"], cfg)
    elif resumed is not None:
        check_seed_checkpoint(resumed, cfg)
    files.write_config(cfg)

    # --- set-up: data on the device, model, averaged copy, optimiser, schedule -------------
    device = resolve_device(cfg.device)
    speed.set_backends()
    seed_everything(cfg.seed)
    data = load_data(cfg.data).to(device)
    model = speed.prepare(build_model(cfg.model.name, data.num_classes).to(device))
    step_model = speed.compiled(model)  # shares model's parameters; checkpoints save model
    swa_model = make_averaged_model(model) if cfg.method.swa else None
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.optim.lr_init,
        momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
    )
    schedule = build_schedule(cfg)
    normalize = Normalizer(cfg.model.mean, cfg.model.std, device)
    stream = TrainStream(data.train_x, data.train_y, cfg.optim.batch_size, normalize, cfg.seed)
    bn_batch_size = speed.bn_refresh_batch_size or cfg.optim.batch_size
    bn_stream = TrainStream(data.train_x, data.train_y, bn_batch_size, normalize, cfg.seed)
    steps_per_epoch = len(stream)
    readings_at = budget_epochs(cfg)
    keep_epochs = set(cfg.checkpoint.keep_epochs) | set(readings_at)
    if cfg.checkpoint.keep_every:
        keep_epochs |= set(
            range(cfg.checkpoint.keep_every, cfg.epochs + 1, cfg.checkpoint.keep_every)
        )

    def test_batches():
        batch_size = speed.eval_batch_size or cfg.eval_batch_size
        return eval_batches(data.test_x, data.test_y, batch_size, normalize)

    # --- state that a checkpoint carries beyond the modules ---------------------------------
    start_epoch, start_step = 0, 0
    totals = [0.0, 0.0, 0]  # loss sum, correct, samples of the epoch in progress
    metrics: list[dict] = []
    readings: dict[str, dict] = {}
    elapsed = 0.0
    if resumed is not None:
        try:
            model.load_state_dict(resumed["model"])
            optimizer.load_state_dict(resumed["optimizer"])
            if swa_model is not None and resumed["swa_model"] is not None:
                swa_model.load_state_dict(resumed["swa_model"])
        except (RuntimeError, ValueError, KeyError) as exc:
            first_line = str(exc).strip().splitlines()[0]
            raise CheckpointError(
                f"checkpoint {resumed['path']} does not fit this model: {first_line}"
            ) from None
        restore_rng_state(resumed["rng"])
        start_epoch, start_step, totals = resumed["epoch"], resumed["step"], list(resumed["totals"])
        if resumed["own"]:  # a run seeded from another run's checkpoint starts its own history
            metrics, readings = json.loads(resumed["metrics"]), json.loads(resumed["readings"])
            elapsed = resumed["elapsed_s"]
        where = (
            f"epoch {start_epoch + 1} step {start_step + 1}"
            if start_step
            else f"epoch {start_epoch + 1}"
        )
        verb = "resuming" if resumed["own"] else "starting"
        print(f"{verb} {files.root} at {where} from {resumed['path']}")
    print_header(cfg, files, device, model, data.name)
    logger = make_logger(
        cfg,
        files.root,
        resumed["logger_run_id"] if resumed is not None and resumed["own"] else None,
    )

    def checkpoint_state(epoch: int, step: int) -> dict:
        return {
            "epoch": epoch,
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "swa_model": swa_model.state_dict() if swa_model is not None else None,
            "rng": capture_rng_state(),
            "totals": totals,
            "metrics": json.dumps(metrics),
            "readings": json.dumps(readings),
            "elapsed_s": elapsed + time.time() - t_start,
            "config": OmegaConf.to_yaml(cfg, resolve=True),
            "logger_run_id": logger.run_id,
        }

    t_start = time.time()
    with StopRequest() as stop, closing(logger):
        for epoch in range(start_epoch, cfg.epochs):
            t_epoch = time.time()
            first_step = start_step if epoch == start_epoch else 0
            if first_step == 0:
                totals = [0.0, 0.0, 0]
            loss_sum = torch.tensor(totals[0], dtype=torch.float64, device=device)
            correct = torch.tensor(int(totals[1]), dtype=torch.int64, device=device)
            seen = totals[2]
            pending_losses: list[torch.Tensor] = []
            epoch_lr = schedule(epoch, 0, steps_per_epoch)

            # --- one epoch of SGD ------------------------------------------------------------
            model.train()
            bar = tqdm(
                stream.batches("train", epoch, first_step),
                total=steps_per_epoch,
                initial=first_step,
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                leave=False,
                disable=None if cfg.progress else True,  # None: off when not a terminal
                dynamic_ncols=True,
            )
            for step, (inputs, labels) in enumerate(bar, start=first_step):
                lr = schedule(epoch, step, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss, logits = sgd_step(step_model, optimizer, inputs, labels, speed, device)
                loss_sum += loss.double() * len(labels)
                correct += (logits.argmax(dim=1) == labels).sum()
                seen += len(labels)
                pending_losses.append(loss)
                stopping = (
                    bool(stop) and step < steps_per_epoch - 1
                )  # read once (signals are async)
                if (
                    len(pending_losses) == LOSS_CHECK_EVERY
                    or step == steps_per_epoch - 1
                    or stopping
                ):
                    check_losses(pending_losses, epoch, step, files)
                    pending_losses = []
                    bar.set_postfix(
                        loss=f"{loss_sum.item() / seen:.4f}",
                        acc=f"{100 * correct.item() / seen:.2f}",
                        lr=f"{lr:.4g}",
                    )
                if stopping:  # checkpoint mid-epoch (the losses up to here were just checked)
                    totals = [loss_sum.item(), float(correct.item()), seen]
                    files.save_rolling(checkpoint_state(epoch, step + 1))
                    stop.handover()
                    raise Preempted(
                        f"stopped by signal {stop.signum} at epoch {epoch + 1} step {step + 1}"
                    )
            bar.close()
            check_weights(model, epoch, files)
            train_loss, train_acc = loss_sum.item() / seen, 100.0 * correct.item() / seen

            # --- averaging, evaluation, budget readings ------------------------------------------
            if swa_model is not None and is_averaging_epoch(
                epoch, cfg.method.swa_start, cfg.method.swa_c_epochs
            ):
                swa_model.update_parameters(model)
            done = epoch + 1
            if is_eval_epoch(done, cfg, readings_at):
                record = {
                    "epoch": done,
                    "lr": epoch_lr,
                    "train_loss": train_loss,
                    "train_acc": train_acc,
                }
                swa_evaluated = swa_model is not None and int(swa_model.n_averaged) > 0
                with speed.autocast(device):
                    record.update(prefixed("test_", evaluate(model, test_batches())))
                    if swa_evaluated:
                        refresh_bn(swa_model, bn_stream.inputs("bn_refresh", epoch))
                        record.update(prefixed("swa_test_", evaluate(swa_model, test_batches())))
                        record["n_averaged"] = int(swa_model.n_averaged)
                record["time_s"] = time.time() - t_epoch
                metrics.append(record)
                files.write_metrics(metrics)
                logger.log(record, step=done)
                if done in readings_at:
                    source = "swa_test_" if swa_evaluated else "test_"
                    for label in readings_at[done]:
                        readings[label] = budget_reading(record, source)
            print_epoch(
                metrics[-1] if metrics and metrics[-1]["epoch"] == done else None,
                done,
                cfg.epochs,
                epoch_lr,
                train_loss,
                train_acc,
                time.time() - t_epoch,
            )

            # --- checkpoint --------------------------------------------------------------------
            totals = [0.0, 0.0, 0]
            stopping = bool(stop)  # read once: a signal arriving now is handled at the next step
            if (
                done % cfg.checkpoint.every == 0
                or done == cfg.epochs
                or done in keep_epochs
                or stopping
            ):
                state = checkpoint_state(done, 0)
                # A kept epoch is written before the rolling save: a crash between them must not lose it.
                if done in keep_epochs:
                    files.save_kept(state, done)
                files.save_rolling(state)
            if stopping and done < cfg.epochs:
                stop.handover()
                raise Preempted(f"stopped by signal {stop.signum} after epoch {done}")

        summary = make_summary(
            cfg,
            data.name,
            metrics,
            readings,
            schedule,
            steps_per_epoch,
            elapsed + time.time() - t_start,
        )
        files.write_summary(summary)
        logger.summary(
            {f"budget_{label}/{k}": v for label, r in readings.items() for k, v in r.items()}
        )
        logger.convergence_figure(files.root)
    print_summary(summary, files)
    return summary


def check_seed_checkpoint(state: dict, cfg: DictConfig) -> None:
    """A checkpoint of another run that starts this one must be of this repository, model and data."""
    missing = {"model", "optimizer", "rng", "epoch", "step", "totals", "config"} - set(state)
    if missing:
        raise CheckpointError(
            f"checkpoint {state['path']} is not a swa_repro training checkpoint (lacks {sorted(missing)})"
        )
    source = OmegaConf.create(state["config"])
    for key in ("model.name", "data.name", "data.num_classes"):
        theirs, ours = OmegaConf.select(source, key), OmegaConf.select(cfg, key)
        if theirs != ours:
            raise CheckpointError(
                f"checkpoint {state['path']} has {key}={theirs}, this run {key}={ours}"
            )
    if state["epoch"] >= cfg.epochs:
        raise CheckpointError(
            f"checkpoint {state['path']} is at epoch {state['epoch']}, not before epochs={cfg.epochs}"
        )


def prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {prefix + key: value for key, value in values.items()}


def budget_reading(record: dict, source: str) -> dict:
    """The test metrics of one model (source "swa_test_" or "test_") at a budget epoch."""
    reading = {"epoch": record["epoch"], "model": "swa" if source == "swa_test_" else "sgd"}
    reading.update({f"test_{k}": record[source + k] for k in ("acc", "loss", "nll", "ece")})
    if "n_averaged" in record and source == "swa_test_":
        reading["n_averaged"] = record["n_averaged"]
    return reading


def check_losses(losses: list[torch.Tensor], epoch: int, last_step: int, files: RunFiles) -> None:
    values = torch.stack(losses).float().cpu()
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        i = int(bad[0])
        step = last_step - len(losses) + 1 + i
        raise NonFiniteError(
            f"loss is {values[i].item()} at epoch {epoch + 1} step {step + 1}; stopping. "
            f"Last good checkpoint: {files.latest_description()}"
        )


def check_weights(model: torch.nn.Module, epoch: int, files: RunFiles) -> None:
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise NonFiniteError(
            f"non-finite weights after epoch {epoch + 1}; stopping. Last good checkpoint: {files.latest_description()}"
        )


def make_summary(cfg, data_name, metrics, readings, schedule, steps_per_epoch, elapsed) -> dict:
    last = metrics[-1]
    final_sgd = {k: last[f"test_{k}"] for k in ("acc", "loss", "nll", "ece")}
    final_sgd.update(train_loss=last["train_loss"], train_acc=last["train_acc"])
    final_swa = None
    if "swa_test_acc" in last:
        final_swa = {k: last[f"swa_test_{k}"] for k in ("acc", "loss", "nll", "ece")}
        final_swa["n_averaged"] = last["n_averaged"]
    return {
        "status": "finished",
        "synthetic": data_name == "synthetic",
        "data": data_name,
        "model": cfg.model.name,
        "method": cfg.method.name,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "budget": cfg.budget,
        "final": {"sgd": final_sgd, "swa": final_swa},
        "budgets": readings,
        "lr_curve": [schedule(e, 0, steps_per_epoch) for e in range(cfg.epochs)],
        "wall_time_s": elapsed,
    }


def print_header(cfg, files: RunFiles, device, model, data_name: str) -> None:
    n_params = count_parameters(model)
    tag = " [SYNTHETIC DATA]" if data_name == "synthetic" else ""
    swa = (
        f", SWA from epoch {cfg.method.swa_start} (swa_lr {cfg.method.swa_lr})"
        if cfg.method.swa
        else ""
    )
    print(
        f"{data_name}{tag} | {cfg.model.name} ({n_params:,} params) | {cfg.method.name}: {cfg.epochs} epochs, "
        f"lr_init {cfg.optim.lr_init}, wd {cfg.optim.weight_decay}{swa} | seed {cfg.seed} | {device} | {files.root}"
    )


def print_epoch(record, done, epochs, lr, train_loss, train_acc, seconds) -> None:
    line = f"ep {done:>4}/{epochs}  lr {lr:.5f}  train loss {train_loss:.4f} acc {train_acc:6.2f}"
    if record is not None:
        line += f" | test acc {record['test_acc']:6.2f} nll {record['test_nll']:.4f}"
        if "swa_test_acc" in record:
            line += f" | SWA acc {record['swa_test_acc']:6.2f} nll {record['swa_test_nll']:.4f} (n={record['n_averaged']})"
    tqdm.write(line + f" | {seconds:.1f}s")


def print_summary(summary: dict, files: RunFiles) -> None:
    tag = " [SYNTHETIC DATA]" if summary["synthetic"] else ""
    rows = [("SGD (final)", summary["final"]["sgd"])]
    if summary["final"]["swa"] is not None:
        rows += [
            (f"SWA {label} budget (ep {r['epoch']})", r) for label, r in summary["budgets"].items()
        ]
    print(
        f"\n{summary['data']}{tag} {summary['model']} {summary['method']} seed {summary['seed']}: finished in "
        f"{summary['wall_time_s'] / 60:.1f} min"
    )
    print(metrics_table(rows))
    print(f"results: {files.summary}  metrics: {files.metrics}")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    files = RunFiles(Path(hydra_cfg.runtime.output_dir))
    try:
        train(cfg, files.root)
        files.clear_failure()
    except (ConfigError, DataError, CheckpointError, NonFiniteError) as exc:
        code = EXIT_NON_FINITE if isinstance(exc, NonFiniteError) else EXIT_USER_ERROR
        print(f"error: {exc}", file=sys.stderr)
        # Mark the run failed if it diverged or never started; a refused relaunch of a healthy
        # run (other config, directory in use) leaves that run as it is.
        if isinstance(exc, NonFiniteError) or not (
            files.candidates() or isinstance(exc, RunInUseError)
        ):
            files.record_failure(str(exc), code)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return  # the other cells of the sweep go on; this one is reported as failed
        sys.exit(code)
    except Preempted as exc:
        print(f"{exc}; checkpoint written, relaunch the same command to resume", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)


if __name__ == "__main__":
    main()
