"""Train one run with SGD or SWA, as in the authors' train.py: CIFAR (Table 1) or ImageNet
fine-tuning (Table 2), on one device or many.

    python -m swa_repro.train experiment=cifar100/preresnet164_swa seed=1
    torchrun --nproc_per_node=8 -m swa_repro.train experiment=imagenet/resnet50_swa seed=0

Per epoch: set the LR from the schedule, one pass of SGD over the augmented training
stream, collect the weights into the SWA average when due, evaluate SGD (and SWA,
after a BN refresh) when due, checkpoint. The run directory receives config.yaml,
metrics.jsonl (one line per evaluated epoch), summary.json and checkpoints/.
Relaunching the same command resumes from the last good checkpoint.

With several processes (torchrun, or SLURM tasks under submitit; swa_repro.distributed) each
takes its part of every global batch of `optim.batch_size` images, DistributedDataParallel
averages the gradients, evaluation and BN refresh are sharded and summed, and only rank 0
writes files.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import ExitStack, closing
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from swa_repro import REPO_ROOT
from swa_repro.averaging import is_averaging_epoch, make_averaged_model
from swa_repro.bn_refresh import refresh_bn
from swa_repro.checkpoint import CheckpointError, load_checkpoint
from swa_repro.cli import EXIT_USER_ERROR, first_line, one_line_errors
from swa_repro.config_check import ConfigError, validate_config
from swa_repro.data import DataError, open_data
from swa_repro.distributed import Distributed
from swa_repro.fast import Speed
from swa_repro.logger import NullLogger, make_logger
from swa_repro.metrics import evaluate
from swa_repro.models import build_model, count_parameters
from swa_repro.preemption import EXIT_PREEMPTED, StopRequest
from swa_repro.report import metrics_table
from swa_repro.rng import capture_rng_state, derive_seed, restore_rng_state, seed_everything
from swa_repro.run_files import RunFiles, RunInUseError, check_same_config, find_resume_state
from swa_repro.schedule import build_schedule

CONF_DIR = str(REPO_ROOT / "conf")
LOSS_CHECK_EVERY = 20  # steps between host syncs (progress bar, non-finite loss check)
EXIT_NON_FINITE = 3


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The config `python -m swa_repro.train *overrides` runs with (outside a Hydra job)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def check_overrides(overrides: list[str]) -> None:
    """Compose a single run's overrides as Hydra will, so that an unknown config group option or
    key is a ConfigError of one line (Hydra itself reports it over several lines, exit code 1)."""
    try:
        compose_config(overrides)
    except MissingConfigException as exc:
        options = exc.options or nested_options(exc.missing_cfg_file)
        raise ConfigError(f"{first_line(exc)}; valid options: {', '.join(options)}") from None
    except ConfigCompositionException as exc:
        raise ConfigError(" ".join(line.strip() for line in str(exc).splitlines())) from None


def nested_options(missing: str) -> list[str]:
    """The options of a group kept in subfolders (experiment=synthetic/small_cnn_swa) below the
    deepest existing folder of the missing config `missing` (e.g. "experiment/synthetic/nope")."""
    group = Path(CONF_DIR) / missing.split("/")[0]
    folder = Path(CONF_DIR) / missing
    while not folder.is_dir():
        folder = folder.parent
    return sorted(str(path.relative_to(group).with_suffix("")) for path in folder.rglob("*.yaml"))


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
    step_model, optimizer, inputs, labels, speed, device, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of SGD on the mean cross-entropy; returns the (detached) loss and logits.

    In a distributed run this rank's mean is scaled by scale = world x (its images) / (images
    of the global batch): DistributedDataParallel averages gradients over the ranks, so the
    step is that of the mean over the whole global batch, even when the ranks' parts differ.
    """
    with speed.autocast(device):
        logits = step_model(inputs)
        loss = F.cross_entropy(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    (loss if scale == 1.0 else loss * scale).backward()
    optimizer.step()
    return loss.detach(), logits.detach()


def is_eval_epoch(done: int, cfg: DictConfig, readings_at: dict[int, list[str]]) -> bool:
    """Evaluate after epoch 1 (if eval_first_epoch), every eval_every epochs, the last epoch and
    the budget epochs (1-based)."""
    first = done == 1 and cfg.eval_first_epoch
    return first or done % cfg.eval_every == 0 or done == cfg.epochs or done in readings_at


def train(cfg: DictConfig, run_dir: str | Path, dist: Distributed | None = None) -> dict:
    """Run (or resume, or recognise as finished) the run in `run_dir`; returns its summary."""
    validate_config(cfg)
    dist = dist or Distributed()
    files = RunFiles(Path(run_dir))
    with ExitStack() as stack:
        dist.agree(lambda: stack.enter_context(files.locked()))  # one job per run directory
        return train_locked(cfg, files, dist)


def choose_start(cfg: DictConfig, files: RunFiles) -> tuple[dict | None, dict | None]:
    """(summary of a finished run, None) or (None, the checkpoint to start from or None)."""
    if files.finished():
        check_same_config(files.read_config(), cfg)
        return files.read_summary(), None
    resumed = find_resume_state(cfg.resume, files)
    if resumed is not None and resumed["own"]:
        check_same_config(resumed["config"], cfg)
    elif resumed is not None:
        check_seed_checkpoint(resumed, cfg)
    files.write_config(cfg)
    return None, resumed


def choose_start_on_ranks(
    cfg: DictConfig, files: RunFiles, dist: Distributed
) -> tuple[dict | None, dict | None]:
    """choose_start on rank 0 (it may rename damaged checkpoints); the others load its choice."""
    chosen: dict = {}

    def on_main() -> tuple[dict | None, dict | None]:
        finished, chosen["state"] = choose_start(cfg, files)
        state = chosen["state"]
        return finished, None if state is None else {"path": state["path"], "own": state["own"]}

    finished, where = dist.agree(on_main)
    if dist.is_main or where is None:
        return finished, chosen.get("state")
    return finished, {**load_checkpoint(where["path"]), **where}


def build_model_on_ranks(cfg: DictConfig, num_classes: int, resumed, dist: Distributed):
    """The run's model. Pretrained weights (ImageNet) come from torchvision, rank 0 downloading
    them first (a failed download stops every rank); a run that starts from a checkpoint takes
    its weights from there."""
    pretrained = cfg.model.get("pretrained") if resumed is None else None
    args = (cfg.model.name, num_classes, pretrained, cfg.model.get("bn_weight_init"))
    built: dict = {}
    dist.agree(lambda: built.update(model=build_model(*args)))
    return built["model"] if dist.is_main else build_model(*args)


def train_locked(cfg: DictConfig, files: RunFiles, dist: Distributed) -> dict:
    speed = Speed.from_cfg(cfg.get("speed"))  # opt-in fast paths (swa_repro.fast); default all off
    finished, resumed = choose_start_on_ranks(cfg, files, dist)
    if finished is not None:
        if dist.is_main:
            print(f"{files.root}: already finished, nothing to do (summary: {files.summary})")
        return finished

    # --- set-up: data on the device, model, averaged copy, optimiser, schedule -------------
    device = dist.device(cfg.device)
    if dist.world > cfg.optim.batch_size:
        raise ConfigError(
            f"optim.batch_size={cfg.optim.batch_size} is the global batch: it must be at least "
            f"the number of processes ({dist.world})"
        )
    reduce = dist.all_reduce_sum if dist.enabled else None  # sums over the ranks' shares
    speed.set_backends()
    seed_everything(cfg.seed)
    data = open_data(cfg, device, dist.rank, dist.world, dist.agree)
    model = speed.prepare(build_model_on_ranks(cfg, data.num_classes, resumed, dist).to(device))
    if dist.rank:  # other ranks draw other dropout masks
        torch.manual_seed(derive_seed(cfg.seed, "rank", dist.rank))
    # DDP (several processes) and torch.compile wrap `model`, sharing its parameters;
    # checkpoints save `model` itself.
    step_model = speed.compiled(dist.wrap(model))
    swa_model = make_averaged_model(model) if cfg.method.swa else None
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.optim.lr_init,
        momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
    )
    schedule = build_schedule(cfg)
    stream = data.train_stream(cfg.optim.batch_size)
    bn_stream = data.train_stream(speed.bn_refresh_batch_size or cfg.optim.batch_size)
    steps_per_epoch = len(stream)
    readings_at = budget_epochs(cfg)
    keep_epochs = set(cfg.checkpoint.keep_epochs) | set(readings_at)
    if cfg.checkpoint.keep_every:
        keep_epochs |= set(
            range(cfg.checkpoint.keep_every, cfg.epochs + 1, cfg.checkpoint.keep_every)
        )

    def test_metrics(net) -> dict[str, float]:
        batches = data.test_batches(speed.eval_batch_size or cfg.eval_batch_size)
        with speed.autocast(device):
            return evaluate(net, batches, reduce=reduce)

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
            raise CheckpointError(
                f"checkpoint {resumed['path']} does not fit this model: {first_line(exc)}"
            ) from None
        rng_of_ranks = resumed.get("rng_ranks") or [resumed["rng"]]
        if dist.rank < len(rng_of_ranks):  # a rank added since keeps its fresh seeding
            restore_rng_state(rng_of_ranks[dist.rank])
        start_epoch, start_step, totals = resumed["epoch"], resumed["step"], list(resumed["totals"])
        if not dist.is_main:  # the saved totals are over all ranks: counted once, on rank 0
            totals = [0.0, 0.0, 0]
        if resumed["own"]:  # a run seeded from another run's checkpoint starts its own history
            metrics, readings = json.loads(resumed["metrics"]), json.loads(resumed["readings"])
            elapsed = resumed["elapsed_s"]
        where = (
            f"epoch {start_epoch + 1} step {start_step + 1}"
            if start_step
            else f"epoch {start_epoch + 1}"
        )
        verb = "resuming" if resumed["own"] else "starting"
        if dist.is_main:
            print(f"{verb} {files.root} at {where} from {resumed['path']}")
    if dist.is_main:
        print_header(cfg, files, device, model, data.name, dist.world)
    logger = (
        make_logger(
            cfg,
            files.root,
            resumed["logger_run_id"] if resumed is not None and resumed["own"] else None,
        )
        if dist.is_main
        else NullLogger()
    )

    def checkpoint_state(epoch: int, step: int) -> dict:
        """What a checkpoint holds (called on every rank: the ranks' RNG states are gathered)."""
        rngs = dist.gather(capture_rng_state())
        if dist.enabled:
            dist.assert_same(averaged_and_trained(model, swa_model), "the weights and buffers")
        return {
            "epoch": epoch,
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "swa_model": swa_model.state_dict() if swa_model is not None else None,
            "rng": rngs[0],
            "rng_ranks": rngs if dist.enabled else None,
            "totals": totals,
            "metrics": json.dumps(metrics),
            "readings": json.dumps(readings),
            "elapsed_s": elapsed + time.time() - t_start,
            "config": OmegaConf.to_yaml(cfg, resolve=True),
            "logger_run_id": logger.run_id,
        }

    if (
        swa_model is not None
        and cfg.method.swa_include_start
        and int(swa_model.n_averaged) == 0
        and (resumed is None or not resumed["own"])
    ):  # Algorithm 1's w_SWA <- w-hat: the starting weights count as the first model
        swa_model.update_parameters(model)
    show_progress = cfg.progress and dist.is_main
    t_start = time.time()
    with StopRequest() as stop, closing(logger):
        if cfg.eval_at_start and not metrics:  # the starting model (ImageNet: the pretrained one)
            record = {"epoch": start_epoch, **prefixed("test_", test_metrics(model))}
            readings["initial"] = budget_reading(record, "test_")
            metrics.append(record)
            if dist.is_main:
                files.write_metrics(metrics)
                logger.log(record, step=start_epoch)
                tqdm.write(
                    f"initial model: test acc {record['test_acc']:6.2f} nll {record['test_nll']:.4f}"
                )
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
                disable=None if show_progress else True,  # None: off when not a terminal
                dynamic_ncols=True,
            )
            for step, (inputs, labels) in enumerate(bar, start=first_step):
                lr = schedule(epoch, step, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                scale = dist.world * len(labels) / stream.step_size(step) if dist.enabled else 1.0
                loss, logits = sgd_step(step_model, optimizer, inputs, labels, speed, device, scale)
                loss_sum += loss.double() * len(labels)
                correct += (logits.argmax(dim=1) == labels).sum()
                seen += len(labels)
                pending_losses.append(loss)
                last_step = step == steps_per_epoch - 1
                at_check = len(pending_losses) == LOSS_CHECK_EVERY or last_step
                if dist.enabled:  # the ranks agree on a stop at the checks only (one collective)
                    stopping = at_check and not last_step and dist.any(bool(stop), device)
                else:  # read once (signals are async)
                    stopping = bool(stop) and not last_step
                if at_check or stopping:
                    check_losses(pending_losses, epoch, step, files, dist, device)
                    pending_losses = []
                    bar.set_postfix(
                        loss=f"{loss_sum.item() / seen:.4f}",
                        acc=f"{100 * correct.item() / seen:.2f}",
                        lr=f"{lr:.4g}",
                    )
                if stopping:  # checkpoint mid-epoch (the losses up to here were just checked)
                    totals = epoch_totals(loss_sum, correct, seen, reduce)
                    dist.sync_buffers(model)
                    state = checkpoint_state(epoch, step + 1)
                    if dist.is_main:
                        files.save_rolling(state)
                    dist.barrier()  # no rank exits (and gets the others killed) before it is written
                    stop.handover()
                    raise Preempted(
                        f"stopped by {stop_cause(stop)} at epoch {epoch + 1} step {step + 1}"
                    )
            bar.close()
            # BN buffers: every rank takes rank 0's (what DDP hands out at each step and what
            # checkpoints save), so all evaluate the same model
            dist.sync_buffers(model)
            check_weights(model, epoch, files)
            total_loss, total_correct, total_seen = epoch_totals(loss_sum, correct, seen, reduce)
            train_loss, train_acc = total_loss / total_seen, 100.0 * total_correct / total_seen

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
                record.update(prefixed("test_", test_metrics(model)))
                if swa_evaluated:
                    with speed.autocast(device):
                        refresh_bn(
                            swa_model,
                            bn_stream.inputs("bn_refresh", epoch, cfg.bn_refresh_images),
                            reduce,
                        )
                    record.update(prefixed("swa_test_", test_metrics(swa_model)))
                    record["n_averaged"] = int(swa_model.n_averaged)
                record["time_s"] = time.time() - t_epoch
                metrics.append(record)
                if dist.is_main:
                    files.write_metrics(metrics)
                    logger.log(record, step=done)
                if done in readings_at:
                    source = "swa_test_" if swa_evaluated else "test_"
                    for label in readings_at[done]:
                        readings[label] = budget_reading(record, source)
            if dist.is_main:
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
            # read once, agreed by all ranks: a signal arriving now is handled at the next step
            stopping = dist.any(bool(stop), device)
            if (
                done % cfg.checkpoint.every == 0
                or done == cfg.epochs
                or done in keep_epochs
                or stopping
            ):
                state = checkpoint_state(done, 0)
                if dist.is_main:
                    # A kept epoch is written before the rolling save: a crash between them must not lose it.
                    if done in keep_epochs:
                        files.save_kept(state, done)
                    files.save_rolling(state)
            if stopping and done < cfg.epochs:
                dist.barrier()  # no rank exits (and gets the others killed) before it is written
                stop.handover()
                raise Preempted(f"stopped by {stop_cause(stop)} after epoch {done}")

        summary = make_summary(
            cfg,
            data.name,
            metrics,
            readings,
            schedule,
            steps_per_epoch,
            elapsed + time.time() - t_start,
        )
        if dist.is_main:
            files.write_summary(summary)
            logger.summary(
                {f"budget_{label}/{k}": v for label, r in readings.items() for k, v in r.items()}
            )
            logger.convergence_figure(files.root)
    if dist.is_main:
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


def stop_cause(stop: StopRequest) -> str:
    """The stop signal this process received; in a distributed run possibly another's."""
    return f"signal {stop.signum}" if stop.signum is not None else "a stop signal to another rank"


def epoch_totals(loss_sum, correct, seen, reduce) -> list:
    """[loss sum, correct, images] of the epoch so far, over all ranks."""
    totals = torch.stack(
        [
            loss_sum,
            correct.double(),
            torch.tensor(float(seen), device=loss_sum.device, dtype=torch.float64),
        ]
    )
    if reduce is not None:
        totals = reduce(totals)
    loss, hits, n = totals.tolist()
    return [loss, hits, int(n)]


def averaged_and_trained(model, swa_model) -> list[torch.Tensor]:
    """The tensors every rank must hold identically: the trained and the averaged weights, and
    the trained model's buffers (BN statistics, synchronised from rank 0)."""
    tensors = [*model.parameters(), *model.buffers()]
    return tensors + (list(swa_model.parameters()) if swa_model is not None else [])


def check_losses(
    losses: list[torch.Tensor],
    epoch: int,
    step: int,
    files: RunFiles,
    dist: Distributed,
    device: torch.device,
) -> None:
    """Stop on a NaN/Inf among the losses of the steps up to `step`: on every rank when any rank
    sees one (else the others would wait for it)."""
    values = torch.stack(losses).float().cpu()
    bad = (~torch.isfinite(values)).nonzero()
    if dist.any(bool(len(bad)), device) and not len(bad):
        raise NonFiniteError(
            f"non-finite loss on another rank at epoch {epoch + 1} by step {step + 1}; stopping. "
            f"Last good checkpoint: {files.latest_description()}"
        )
    if len(bad):
        i = int(bad[0])
        first_bad = step - len(losses) + 1 + i
        raise NonFiniteError(
            f"loss is {values[i].item()} at epoch {epoch + 1} step {first_bad + 1}; stopping. "
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


def print_header(cfg, files: RunFiles, device, model, data_name: str, world: int) -> None:
    n_params = count_parameters(model)
    tag = " [SYNTHETIC DATA]" if data_name == "synthetic" else ""
    swa = (
        f", SWA from epoch {cfg.method.swa_start} (swa_lr {cfg.method.swa_lr})"
        if cfg.method.swa
        else ""
    )
    print(
        f"{data_name}{tag} | {cfg.model.name} ({n_params:,} params) | {cfg.method.name}: {cfg.epochs} epochs, "
        f"lr_init {cfg.optim.lr_init}, wd {cfg.optim.weight_decay}{swa} | seed {cfg.seed} | {device}"
        f"{f' x {world} processes' if world > 1 else ''} | {files.root}"
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
    readings = dict(summary["budgets"])
    initial = readings.pop("initial", None)
    rows = [] if initial is None else [(f"initial model (ep {initial['epoch']})", initial)]
    rows.append(("SGD (final)", summary["final"]["sgd"]))
    if summary["final"]["swa"] is not None:
        rows += [
            (f"{r['model'].upper()} {label} budget (ep {r['epoch']})", r)
            for label, r in readings.items()
        ]
    print(
        f"\n{summary['data']}{tag} {summary['model']} {summary['method']} seed {summary['seed']}: finished in "
        f"{summary['wall_time_s'] / 60:.1f} min"
    )
    print(metrics_table(rows))
    print(f"results: {files.summary}  metrics: {files.metrics}")


def train_and_report(cfg: DictConfig, files: RunFiles, multirun: bool = False) -> dict | None:
    """train() with a command's outcome: the summary; or one `error:` line per rank and exit
    code 2 (bad input) / 3 (diverged), the run marked failed (failed.json) if it diverged or
    never started; or exit 75 after a stop signal's checkpoint. In a single-process multirun a
    failing cell returns None instead of exiting, so that the other cells go on."""
    dist = Distributed()
    try:
        validate_config(cfg)  # before joining a process group on cfg.device
        dist = Distributed.from_env(cfg.device)
        summary = train(cfg, files.root, dist)
        if dist.is_main:  # only rank 0 writes into the run directory
            files.clear_failure()
        return summary
    except (ConfigError, DataError, CheckpointError, NonFiniteError) as exc:
        code = EXIT_NON_FINITE if isinstance(exc, NonFiniteError) else EXIT_USER_ERROR
        # every rank says it: an error may be one rank's own (an unreadable image it was given)
        rank = f"rank {dist.rank}: " if dist.enabled else ""
        print(f"error: {rank}{exc}", file=sys.stderr)
        # Mark the run failed if it diverged or never started; a refused relaunch of a healthy
        # run (other config, directory in use) leaves that run as it is.
        if dist.is_main and (
            isinstance(exc, NonFiniteError)
            or not (files.candidates() or isinstance(exc, RunInUseError))
        ):
            files.record_failure(str(exc), code)
        if multirun and not dist.enabled:
            return None  # the other cells of the sweep go on; this one is reported as failed
        # Several processes: exit, so the launcher (torchrun; SLURM with SLURM_KILL_BAD_EXIT)
        # ends the others, which may be waiting for this one.
        sys.exit(code)
    except Preempted as exc:
        if dist.is_main:
            print(
                f"{exc}; checkpoint written, relaunch the same command to resume", file=sys.stderr
            )
        sys.exit(EXIT_PREEMPTED)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    files = RunFiles(Path(hydra_cfg.runtime.output_dir))
    train_and_report(cfg, files, multirun=hydra_cfg.mode == RunMode.MULTIRUN)


def cli() -> None:
    """`python -m swa_repro.train`: a single run's overrides are checked first (check_overrides);
    with Hydra's flags (-m, --cfg, ...) or settings (hydra.mode=MULTIRUN, hydra/launcher=...)
    everything is left to Hydra."""
    overrides = sys.argv[1:]
    if not any(arg.startswith(("-", "hydra.", "hydra/", "+hydra")) for arg in overrides):
        one_line_errors(check_overrides)(overrides)
    main()


if __name__ == "__main__":
    cli()
