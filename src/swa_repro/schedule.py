"""Learning-rate schedules of the SWA paper.

paper (authors' train.py, set once per epoch from the 0-based epoch index e):
    T = swa_start for SWA runs, epochs for SGD runs;  t = e / T
    r = swa_lr / lr_init for SWA runs, 0.01 for SGD runs
    factor = 1                              if t <= 0.5
           = 1 - (1 - r) (t - 0.5) / 0.4    if 0.5 < t <= 0.9
           = r                              if t > 0.9
    lr = lr_init * factor
  An SWA run's LR never depends on its total epochs, so one 1.5-budget run passes
  through the 1- and 1.25-budget SWA states.

constant:
    lr = lr (every iteration)

cyclic (paper section 3.2, per iteration, i = 1, 2, ... counted over the whole run):
    t(i) = (((i - 1) mod c) + 1) / c,   lr(i) = (1 - t(i)) a1 + t(i) a2
  with c = cycle_epochs * steps_per_epoch, so each cycle ends (lr = a2) on an epoch
  boundary, where the averaging collects the model.
"""

from __future__ import annotations

from dataclasses import dataclass

SGD_FINAL_RATIO = 0.01  # r of the authors' schedule for plain SGD runs


@dataclass(frozen=True)
class PaperSchedule:
    lr_init: float
    horizon: float  # T: swa_start (SWA) or epochs (SGD); a real number, not rounded
    final_ratio: float  # r

    def __call__(self, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        t = epoch / self.horizon
        if t <= 0.5:
            factor = 1.0
        elif t <= 0.9:
            factor = 1.0 - (1.0 - self.final_ratio) * (t - 0.5) / 0.4
        else:
            factor = self.final_ratio
        return self.lr_init * factor

    def describe(self) -> str:
        return (
            f"paper LR schedule {self.lr_init:g} -> {self.lr_init * self.final_ratio:g} "
            f"(linear decay over epochs {0.5 * self.horizon:g}-{0.9 * self.horizon:g})"
        )


@dataclass(frozen=True)
class ConstantSchedule:
    lr: float

    def __call__(self, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        return self.lr

    def describe(self) -> str:
        return f"constant LR {self.lr:g}"


@dataclass(frozen=True)
class CyclicSchedule:
    a1: float
    a2: float
    cycle_epochs: int

    def __call__(self, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        cycle = self.cycle_epochs * steps_per_epoch
        i = epoch * steps_per_epoch + step + 1
        t = (((i - 1) % cycle) + 1) / cycle
        return (1.0 - t) * self.a1 + t * self.a2

    def describe(self) -> str:
        return f"cyclic LR {self.a1:g} -> {self.a2:g} per {self.cycle_epochs}-epoch cycle"


def build_schedule(cfg) -> PaperSchedule | ConstantSchedule | CyclicSchedule:
    """The schedule named by cfg.schedule.name, from the run's optim/method/epochs config."""
    name = cfg.schedule.name
    if name == "paper":
        if cfg.method.swa:
            return PaperSchedule(
                cfg.optim.lr_init,
                float(cfg.method.swa_start),
                cfg.method.swa_lr / cfg.optim.lr_init,
            )
        return PaperSchedule(cfg.optim.lr_init, float(cfg.epochs), SGD_FINAL_RATIO)
    if name == "constant":
        return ConstantSchedule(cfg.schedule.lr)
    if name == "cyclic":
        return CyclicSchedule(cfg.schedule.a1, cfg.schedule.a2, cfg.schedule.cycle_epochs)
    raise ValueError(f"unknown schedule '{name}'; valid names: constant, cyclic, paper")
