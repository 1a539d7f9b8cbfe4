"""Setting a run up: where it starts (fresh, resumed, finished), then its data, model, optimiser,
schedule, averaged models and logger, as one swa_repro.loop.Run."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from swa_repro import report
from swa_repro.budgets import budget_epochs
from swa_repro.checkpoint import CheckpointError, load_checkpoint
from swa_repro.collectors import build_collectors
from swa_repro.config_check import ConfigError
from swa_repro.data import open_data
from swa_repro.distributed import Distributed
from swa_repro.fast import Speed
from swa_repro.logger import NullLogger, make_logger
from swa_repro.loop import Run
from swa_repro.models import instantiate_model
from swa_repro.rng import derive_seed, seed_everything
from swa_repro.run_files import RunFiles, check_same_config, find_resume_state
from swa_repro.schedule import build_schedule
from swa_repro.state import restore


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


def choose_start_on_ranks(cfg: DictConfig, files: RunFiles, dist: Distributed):
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


def build_model_on_ranks(cfg: DictConfig, resumed, dist: Distributed) -> torch.nn.Module:
    """The run's network. Pretrained weights (ImageNet) come from torchvision, rank 0 downloading
    them first (a failed download stops every rank); a run that starts from a checkpoint takes
    its weights from there."""
    overrides = {"pretrained": None} if resumed is not None and "pretrained" in cfg.model else {}
    built: dict = {}
    dist.agree(lambda: built.update(model=instantiate_model(cfg.model, **overrides)))
    return built["model"] if dist.is_main else instantiate_model(cfg.model, **overrides)


def build_run(cfg: DictConfig, files: RunFiles, dist: Distributed, resumed: dict | None) -> Run:
    """The run's objects on this rank's device, from `resumed` (a checkpoint) when given."""
    speed = Speed.from_cfg(cfg.get("speed"))  # opt-in fast paths (swa_repro.fast); default all off
    device = dist.device(cfg.device)
    if dist.world > cfg.optim.batch_size:
        raise ConfigError(
            f"optim.batch_size={cfg.optim.batch_size} is the global batch: it must be at least "
            f"the number of processes ({dist.world})"
        )
    speed.set_backends()
    seed_everything(cfg.seed)
    data = open_data(cfg, device, dist.rank, dist.world, dist.agree)
    model = speed.prepare(build_model_on_ranks(cfg, resumed, dist).to(device))
    if dist.rank:  # other ranks draw other dropout masks
        torch.manual_seed(derive_seed(cfg.seed, "rank", dist.rank))
    optim = cfg.optim
    readings_at = budget_epochs(cfg)
    return Run(
        cfg=cfg,
        files=files,
        dist=dist,
        device=device,
        speed=speed,
        data=data,
        model=model,
        step_model=speed.compiled(dist.wrap(model)),  # shares `model`'s parameters
        optimizer=torch.optim.SGD(
            model.parameters(),
            lr=optim.lr_init,
            momentum=optim.momentum,
            weight_decay=optim.weight_decay,
        ),  # fmt: skip
        schedule=build_schedule(cfg),
        stream=data.train_stream(optim.batch_size),
        bn_stream=data.train_stream(speed.bn_refresh_batch_size or optim.batch_size),
        collectors=build_collectors(cfg, model, dist),
        readings_at=readings_at,
        keep_epochs=kept_epochs(cfg, readings_at),
    )


def kept_epochs(cfg: DictConfig, readings_at: dict[int, list[str]]) -> set[int]:
    """Epochs whose checkpoints are kept: the budget epochs, checkpoint.keep_epochs, every
    checkpoint.keep_every-th."""
    keep = set(cfg.checkpoint.keep_epochs) | set(readings_at)
    if cfg.checkpoint.keep_every:
        keep |= set(range(cfg.checkpoint.keep_every, cfg.epochs + 1, cfg.checkpoint.keep_every))
    return keep


def start(run: Run, resumed: dict | None) -> None:
    """Continue from `resumed`, or begin the run's own history; then the header and logger."""
    own = resumed is not None and resumed["own"]
    if resumed is not None:
        run.state = restore(run, resumed)
        if run.dist.is_main:
            verb = "resuming" if own else "starting"
            print(f"{verb} {run.files.root} at {run.state.position()} from {resumed['path']}")
    if not own:  # Algorithm 1's w_SWA <- w-hat, when asked: the start counts as a model
        for collector in run.collectors:
            collector.begin(run.model)
    if run.dist.is_main:
        print(report.header(run))
        run.logger = make_logger(run.cfg, run.files.root, run.state.logger_run_id)
    else:
        run.logger = NullLogger()
    run.state.logger_run_id = run.logger.run_id
