"""The training loop: the paper's Algorithm 1 over named steps.

    for each epoch:   sgd_epoch        one pass of SGD over the augmented training stream, the LR
                                       from the schedule at every step (collectors' after_step)
                      collect          the averaged models' epoch-end updates (SWA: when due)
                      evaluate_epoch   when due: test metrics of the SGD model and of every
                                       averaged model after its BN refresh; budget readings
                      end_epoch        checkpoint when due; a stop signal stops here
    finish            summary.json, and each collector's final metrics

Everything the loop changes lives in `run.state` (swa_repro.state.TrainState) and the modules;
a checkpoint holds exactly that (state.checkpoint_of). A stop signal (SIGTERM, SIGUSR1/2,
SIGINT) is honoured in one place, `stop_here`, mid-epoch (at the next step) or at an epoch's end.

Distributed runs (swa_repro.distributed): every rank runs this same code; the Distributed
methods are no-ops for one process. Collective calls must come in the same order on every rank,
or the run deadlocks. Their order, per epoch:
  1. each SGD step: DDP's gradient all-reduce (inside backward);
  2. every LOSS_CHECK_EVERY steps and at the epoch's last step: `dist.any(stop)` (not at the last
     step), then `dist.any(non-finite loss)`; if stopping there: the epoch totals' all-reduce,
     the BN-buffer broadcast, then the checkpoint's gathers (random states, weight digests) and
     a barrier;
  3. after the pass: BN-buffer broadcast, the epoch totals' all-reduce; then each collector's
     after_epoch in order (an EMA broadcasts its averaged BN buffers);
  4. when evaluating: the SGD model's metric sums, then for each collector's evaluation in
     order its BN-refresh statistics and its metric sums;
  5. `dist.any(stop)`; when checkpointing, the gathers of 2; when stopping, a barrier.
The start's evaluation (eval_at_start) reduces like 4. At the end (finish, swa_repro.run_end):
for the SGD model, then each collector's final models in order, the test sums of its calibration
(and with a held-out split: the gather of its held-out logits, the temperature-scaled sums);
for a SWAG posterior, per sample and variant: BN-refresh statistics, test sums (held-out sums),
the gather of the average's state; then the calibration of each variant as above.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm.auto import tqdm

from swa_repro import report
from swa_repro.budgets import budget_reading, is_eval_epoch, make_summary
from swa_repro.collectors import Collector, Evaluation
from swa_repro.data.stream import TrainStream
from swa_repro.distributed import Distributed
from swa_repro.evaluator import Evaluator
from swa_repro.fast import Speed
from swa_repro.logger import NullLogger
from swa_repro.preemption import StopRequest
from swa_repro.run_end import RunEnd
from swa_repro.run_files import RunFiles
from swa_repro.state import TrainState, checkpoint_of, zero_totals

LOSS_CHECK_EVERY = 20  # steps between host syncs (progress bar, non-finite loss check)


class NonFiniteError(RuntimeError):
    """The loss or the weights became NaN or Inf."""


class Preempted(Exception):
    """A stop signal arrived; a checkpoint has been written."""

    def __init__(self, message: str, signum: int | None):
        super().__init__(message)
        self.signum = signum


@dataclass
class Run:
    """Everything one training run works with; what changes is in `state` and the modules."""

    cfg: DictConfig
    files: RunFiles
    dist: Distributed
    device: torch.device
    speed: Speed
    data: object  # swa_repro.data: DeviceData or FolderData
    model: torch.nn.Module  # the SGD model; checkpoints save it
    step_model: torch.nn.Module  # what steps run through: model, or DDP / compile around it
    optimizer: torch.optim.Optimizer
    schedule: object  # swa_repro.schedule: (epoch, step, steps_per_epoch) -> LR
    stream: TrainStream  # training batches
    bn_stream: TrainStream  # BN-refresh batches
    collectors: list[Collector]
    readings_at: dict[int, list[str]]  # epoch -> budget labels read there
    keep_epochs: set[int]  # epochs whose checkpoints are kept
    state: TrainState = field(default_factory=TrainState)
    logger: NullLogger = field(default_factory=NullLogger)
    stop: StopRequest | None = None
    started: float = field(default_factory=time.time)

    def elapsed(self) -> float:
        """Training seconds, over every process that worked on the run."""
        return self.state.elapsed_s + time.time() - self.started


def train_epochs(run: Run) -> dict:
    """Algorithm 1: SGD epochs, averaged models, evaluations, checkpoints; returns the summary."""
    cfg, run.started = run.cfg, time.time()
    with StopRequest() as run.stop, closing(run.logger):
        if cfg.eval_at_start and not run.state.metrics:
            evaluate_start(run)
        for epoch in range(run.state.epoch, cfg.epochs):
            started = time.time()
            train_loss, train_acc = sgd_epoch(run, epoch)
            collect(run, epoch)
            record = None
            if is_eval_epoch(epoch + 1, cfg, run.readings_at):
                record = evaluate_epoch(run, epoch, train_loss, train_acc, started)
            if run.dist.is_main:
                report.epoch_line(record, epoch, cfg.epochs, run.schedule(epoch, 0, len(run.stream)),
                                  train_loss, train_acc, time.time() - started)  # fmt: skip
            end_epoch(run)
        return finish(run)


def sgd_epoch(run: Run, epoch: int) -> tuple[float, float]:
    """One pass of SGD (from the saved step when resuming); returns train loss and accuracy %."""
    state, first = run.state, run.state.step
    tally = EpochTally(state.totals, run.device)
    run.model.train()
    bar = progress_bar(run, epoch, first)
    for step, (inputs, labels) in enumerate(bar, start=first):
        loss, logits = sgd_step(run, epoch, step, inputs, labels)
        for collector in run.collectors:
            collector.after_step(run.model)
        tally.add(loss, logits, labels)
        last = step == len(run.stream) - 1
        at_check = len(tally.pending) == LOSS_CHECK_EVERY or last
        stopping = stop_requested(run, at_check, last)
        if at_check or stopping:
            check_losses(run, tally.take_pending(), epoch, step)
            bar.set_postfix(**tally.postfix(), lr=f"{run.optimizer.param_groups[0]['lr']:.4g}")
        if stopping:
            state.step, state.totals = step + 1, tally.totals(run.dist)
            run.dist.sync_buffers(run.model)
            stop_here(run, f"at epoch {epoch + 1} step {step + 1}")
    bar.close()
    run.dist.sync_buffers(run.model)  # every rank evaluates rank 0's BN buffers, as checkpoints
    check_weights(run, epoch)
    loss_sum, correct, seen = tally.totals(run.dist)
    state.epoch, state.step, state.totals = epoch + 1, 0, zero_totals()
    return loss_sum / seen, 100.0 * correct / seen


def sgd_step(run: Run, epoch: int, step: int, inputs, labels):
    """One SGD step at the schedule's LR on the mean cross-entropy; the (detached) loss, logits.

    In a distributed run this rank's mean is scaled by world x (its images) / (images of the
    global batch): DDP averages gradients over the ranks, so the step is that of the mean over
    the whole global batch, even when the ranks' parts differ."""
    lr = run.schedule(epoch, step, len(run.stream))
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    scale = run.dist.world * len(labels) / run.stream.step_size(step)
    with run.speed.autocast(run.device):
        logits = run.step_model(inputs)
        loss = F.cross_entropy(logits, labels)
    run.optimizer.zero_grad(set_to_none=True)
    (loss if scale == 1.0 else loss * scale).backward()
    run.optimizer.step()
    return loss.detach(), logits.detach()


class EpochTally:
    """Loss sum and correct count of an epoch on the device (no host sync per step), and the
    losses not yet checked for NaN/Inf."""

    def __init__(self, saved: list, device: torch.device):
        self.loss_sum = torch.tensor(saved[0], dtype=torch.float64, device=device)
        self.correct = torch.tensor(int(saved[1]), dtype=torch.int64, device=device)
        self.seen = saved[2]
        self.pending: list[torch.Tensor] = []

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss_sum += loss.double() * len(labels)
        self.correct += (logits.argmax(dim=1) == labels).sum()
        self.seen += len(labels)
        self.pending.append(loss)

    def take_pending(self) -> list[torch.Tensor]:
        pending, self.pending = self.pending, []
        return pending

    def totals(self, dist: Distributed) -> list:
        """[loss sum, correct, images] of the epoch so far, over all ranks."""
        seen = torch.tensor(float(self.seen), device=self.loss_sum.device, dtype=torch.float64)
        summed = torch.stack([self.loss_sum, self.correct.double(), seen])
        loss, hits, n = dist.all_reduce_sum(summed).tolist()
        return [loss, hits, int(n)]

    def postfix(self) -> dict[str, str]:
        seen = max(self.seen, 1)
        return {
            "loss": f"{self.loss_sum.item() / seen:.4f}",
            "acc": f"{100 * self.correct.item() / seen:.2f}",
        }


def progress_bar(run: Run, epoch: int, first_step: int):
    """The epoch's training batches from `first_step`, behind a progress bar on rank 0."""
    return tqdm(
        run.stream.batches("train", epoch, first_step),
        total=len(run.stream),
        initial=first_step,
        desc=f"epoch {epoch + 1}/{run.cfg.epochs}",
        leave=False,
        disable=None if run.cfg.progress and run.dist.is_main else True,  # None: off if no tty
        dynamic_ncols=True,
    )


def stop_requested(run: Run, at_check: bool, last_step: bool) -> bool:
    """Whether to stop after this step: one process reads its signals at every step; the ranks
    of a distributed run agree at the checks only (one collective). Never at the last step:
    the epoch's end handles that."""
    if last_step:
        return False
    if run.dist.enabled:
        return at_check and run.dist.any(bool(run.stop), run.device)
    return bool(run.stop)


def check_losses(run: Run, losses: list[torch.Tensor], epoch: int, step: int) -> None:
    """Stop on a NaN/Inf among the losses of the steps up to `step`: on every rank when any rank
    sees one (else the others would wait for it)."""
    values = torch.stack(losses).float().cpu()
    bad = (~torch.isfinite(values)).nonzero()
    last_good = run.files.latest_description()
    if run.dist.any(bool(len(bad)), run.device) and not len(bad):
        raise NonFiniteError(
            f"non-finite loss on another rank at epoch {epoch + 1} by step {step + 1}; stopping. "
            f"Last good checkpoint: {last_good}"
        )
    if len(bad):
        i = int(bad[0])
        first_bad = step - len(losses) + 1 + i
        raise NonFiniteError(
            f"loss is {values[i].item()} at epoch {epoch + 1} step {first_bad + 1}; stopping. "
            f"Last good checkpoint: {last_good}"
        )


def check_weights(run: Run, epoch: int) -> None:
    """Stop when the SGD weights hold a NaN/Inf."""
    if not all(bool(torch.isfinite(p).all()) for p in run.model.parameters()):
        raise NonFiniteError(
            f"non-finite weights after epoch {epoch + 1}; stopping. "
            f"Last good checkpoint: {run.files.latest_description()}"
        )


def collect(run: Run, epoch: int) -> None:
    """The averaged models' updates after the (0-based) epoch `epoch`."""
    for collector in run.collectors:
        collector.after_epoch(run.model, epoch)


def test_metrics(run: Run, module: torch.nn.Module) -> dict[str, float]:
    """Test-set metrics of `module` (sharded over the ranks and summed)."""
    return Evaluator.of_run(run).test_metrics(module)


def refreshed_metrics(run: Run, evaluation: Evaluation, epoch: int) -> dict[str, float]:
    """Test metrics of an averaged model, after recomputing its BN statistics over the
    training stream of `epoch` when the evaluation asks for it."""
    evaluator = Evaluator.of_run(run)
    if evaluation.refresh_bn:
        evaluator.refresh(evaluation.module, epoch, keep_rng=evaluation.keep_rng)
    return evaluator.test_metrics(evaluation.module)


def evaluate_start(run: Run) -> None:
    """Evaluate the starting model (ImageNet: the pretrained one, the paper's SGD column)."""
    state = run.state
    record = {"epoch": state.epoch, **prefixed("test_", test_metrics(run, run.model))}
    state.readings["initial"] = budget_reading(record, "test_")
    state.metrics.append(record)
    if run.dist.is_main:
        run.files.write_metrics(state.metrics)
        run.logger.log(record, step=state.epoch)
        report.initial_line(record)


def evaluate_epoch(run: Run, epoch: int, train_loss: float, train_acc: float, started: float):
    """The epoch's record: SGD test metrics, then each averaged model's after its BN refresh;
    written to metrics.jsonl, logged, and read at the budget epochs. Returns the record."""
    done, state = epoch + 1, run.state
    record = {"epoch": done, "lr": run.schedule(epoch, 0, len(run.stream))}
    record.update(train_loss=train_loss, train_acc=train_acc)
    record.update(prefixed("test_", test_metrics(run, run.model)))
    evaluated = []
    for collector in run.collectors:
        for evaluation in collector.evaluations():
            metrics = refreshed_metrics(run, evaluation, epoch)
            record.update(prefixed(f"{evaluation.key}_test_", metrics), **evaluation.extra)
            evaluated.append(evaluation.key)
    record["time_s"] = time.time() - started
    state.metrics.append(record)
    if run.dist.is_main:
        run.files.write_metrics(state.metrics)
        run.logger.log(record, step=done)
    source = "swa_test_" if "swa" in evaluated else "test_"
    for label in run.readings_at.get(done, []):
        state.readings[label] = budget_reading(record, source)
    return record


def prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {prefix + key: value for key, value in values.items()}


def end_epoch(run: Run) -> None:
    """Checkpoint when due (every checkpoint.every epochs, kept and last epochs, or a stop
    signal); stop if one arrived, unless the run is complete."""
    done, cfg = run.state.epoch, run.cfg
    stopping = run.dist.any(bool(run.stop), run.device)  # read once, agreed by all ranks
    kept = done in run.keep_epochs
    if done % cfg.checkpoint.every == 0 or done == cfg.epochs or kept or stopping:
        save_checkpoint(run, kept)
    if stopping and done < cfg.epochs:
        stop_here(run, f"after epoch {done}", saved=True)


def save_checkpoint(run: Run, kept: bool = False) -> None:
    """Write the run's checkpoint (rank 0; every rank takes part in gathering it). A kept epoch
    is written before the rolling save, so that a crash between them cannot lose it."""
    state = checkpoint_of(run, run.elapsed())
    if run.dist.enabled:
        tensors = [*run.model.parameters(), *run.model.buffers()]
        for collector in run.collectors:
            tensors += collector.identical_tensors()
        run.dist.assert_same(tensors, "the weights and buffers")
    if run.dist.is_main:
        if kept:
            run.files.save_kept(state, run.state.epoch)
        run.files.save_rolling(state)


def stop_here(run: Run, where: str, saved: bool = False) -> None:
    """The one exit for a stop signal: checkpoint (unless just `saved`), wait for every rank to
    have written, hand the signal on (to submitit's requeue handler), raise Preempted."""
    if not saved:
        save_checkpoint(run)
    run.dist.barrier()  # no rank exits (and gets the others killed) before it is written
    run.stop.handover()
    cause = f"signal {run.stop.signum}" if run.stop.signum is not None else None
    raise Preempted(
        f"stopped by {cause or 'a stop signal to another rank'} {where}", run.stop.signum
    )


def finish(run: Run) -> dict:
    """The summary, written by rank 0: the final SGD model's and the collectors' metrics (their
    final_metrics: the SWAG model average), every final model's calibration (calibration.json)
    and weights (weights/*.safetensors)."""
    end = RunEnd.of_run(run)
    end.finish_model("sgd", run.model)
    final = {}
    for collector in run.collectors:
        final.update(collector.final_metrics(end))
    summary = make_summary(run.cfg, run.data.name, run.state, run.schedule, len(run.stream),
                           run.elapsed(), final)  # fmt: skip
    summary["calibration"] = end.summary()
    if run.dist.is_main:
        end.write_calibration(run.files.calibration)
        run.files.write_summary(summary)
        readings = summary["budgets"].items()
        run.logger.summary({f"budget_{lb}/{k}": v for lb, r in readings for k, v in r.items()})
        run.logger.convergence_figure(run.files.root)
    return summary
