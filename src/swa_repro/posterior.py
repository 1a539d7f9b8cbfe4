"""The Bayesian model average of a SWAG posterior: once at the end of an SWA run, and on demand.

    python -m swa_repro.posterior RUN_DIR [checkpoint=last] [swag.samples=30] [swag.scale=0.5]
        [swag.scale_diag=1.0] [seed=<the run's>] [temperature=auto] [device=auto] [out=DIR]

For n = 1..N (N = swag.samples) and each variant, SWAG-Diag (scale swag.scale_diag) then SWAG
(swag.scale; needs the deviations and K >= 2 collected models): draw w_n (swa_repro.swag),
recompute BN statistics for w_n over the BN-refresh pass of the checkpoint's last epoch (the
pass the SWA model was refreshed over), predict the test set (and the held-out split), and add
softmax(f(x; w_n)) to the running average of probabilities (swa_repro.bma):
    p_n(x) = (1/n) sum_{s <= n} softmax(f(x; w_s))          (Maddox et al. 2019; swa_gaussian's
                                                             experiments/uncertainty/uncertainty.py)
with its accuracy, NLL (a mean over images), ECE (15 equal-width bins) and Brier after every n:
the curve against the number of samples. Temperature scaling (calibration.py) is fitted on the
log of the averaged held-out probabilities, as the SWAG authors' temp_scaling.py.

Randomness: sample n of a run seeded s takes z2 then z1 from sample_generator(s, n) (so SWAG and
SWAG-Diag share z1), and its BN refresh runs on the global RNG seeded derive_seed(s, "swag_bn",
n) and restored afterwards: the average never touches the training RNG and does not depend on
where it was interrupted. Memory: one scratch copy of the network receives every sample (never
N models). Cost per sample: one BN refresh and one pass over the test (and held-out) images.

Resumable sample by sample: after every sample the averages so far go into <out>/state.pt
(atomic and checksummed, swa_repro.checkpoint), whole-split arrays that any number of ranks can
continue from; a relaunch continues after the last sample saved, a larger swag.samples extends
it. Outputs in <out>: state.pt, posterior.json (settings, per variant the final metrics and the
curve, the temperature fit), calibration.json (reliability-diagram numbers before and after
temperature scaling). The end of a run writes into RUN_DIR/posterior/last and the run's summary;
the command's default <out> is RUN_DIR/posterior/<checkpoint>. Distributed (torchrun): every rank
refreshes BN and predicts its share, as in training.
"""

from __future__ import annotations

import copy
import hashlib
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from swa_repro import report
from swa_repro.bma import ModelAverage
from swa_repro.calibration import BINNING
from swa_repro.checkpoint import load_checkpoint, save_checkpoint
from swa_repro.cli import check_output_folder, one_line_errors, read_yaml
from swa_repro.config_check import ConfigError, check_device
from swa_repro.data.stream import rank_share
from swa_repro.distributed import Distributed
from swa_repro.evaluator import Evaluator
from swa_repro.layout import RunPaths
from swa_repro.rng import derive_seed
from swa_repro.swag import Swag, sample_generator
from swa_repro.weights import run_metadata

VARIANTS = ("swag_diag", "swag")


@dataclass(frozen=True)
class PosteriorSettings:
    samples: int = 30
    scale: float = 0.5
    scale_diag: float = 1.0

    @classmethod
    def from_cfg(cls, swag) -> PosteriorSettings:
        """From a `swag` config node."""
        return cls(int(swag.samples), float(swag.scale), float(swag.scale_diag))


def plan_variants(swag: Swag, settings: PosteriorSettings) -> tuple[list, dict[str, str]]:
    """[(key, scale, low_rank)] of the variants this posterior can give, and why the others not."""
    planned, skipped = [("swag_diag", settings.scale_diag, False)], {}
    if not swag.low_rank:
        skipped["swag"] = "no deviations (swag.low_rank=false): SWAG-Diag only"
    elif swag.rank < 2:
        skipped["swag"] = f"SWAG needs at least 2 collected models, has {swag.rank}"
    else:
        planned.append(("swag", settings.scale, True))
    return planned, skipped


class SampleAverages:
    """The running averages of one variant over the test split (and the held-out split)."""

    def __init__(self, splits: tuple[str, ...]):
        self.splits: dict[str, ModelAverage | None] = dict.fromkeys(splits)

    @property
    def samples(self) -> int:
        test = self.splits["test"]
        return 0 if test is None else test.samples

    def add(self, module: nn.Module, evaluator) -> None:
        """The predictions of `module` (this rank's share of each split) as one more sample."""
        for split, average in self.splits.items():
            logits, labels = evaluator.logits(module, split)
            if average is None:
                average = self.splits[split] = ModelAverage(labels, logits.shape[1])
            average.add_sample(logits, evaluator.reduce)

    def whole(self, evaluator) -> dict:
        """Every split's state with the arrays of all ranks concatenated (rank order)."""
        out = {}
        for split, average in self.splits.items():
            state = average.state_dict()
            for key in ("prob_sum", "labels"):
                state[key] = evaluator.gather(state[key])
            out[split] = state
        return out

    def load_whole(self, saved: dict, evaluator) -> None:
        """This rank's share of a whole() state."""
        dist = evaluator.dist
        for split in self.splits:
            state = dict(saved[split])
            share = rank_share(len(state["labels"]), dist.rank, dist.world)
            state["prob_sum"], state["labels"] = state["prob_sum"][share], state["labels"][share]
            average = ModelAverage(state["labels"], state["prob_sum"].shape[1])
            average.load_state_dict(state)
            self.splits[split] = average


class AverageStore:
    """<folder>/state.pt: the averages of every variant, saved by rank 0 after each sample."""

    def __init__(self, folder: Path, evaluator, identity: dict):
        self.path, self.evaluator, self.identity = Path(folder) / "state.pt", evaluator, identity

    def saved(self, samples: int) -> dict | None:
        """The saved state, if any; ConfigError when it is of another posterior or other
        settings, or averages more than `samples` samples."""
        if not self.path.is_file():
            return None
        state = load_checkpoint(self.path)
        different = sorted(k for k, v in self.identity.items() if state["identity"].get(k) != v)
        if different:
            raise ConfigError(
                f"{self.path} holds the model average of another posterior or other settings "
                f"(differs in: {', '.join(different)}); give another out=DIR, or move it away"
            )
        done = max((v["test"]["samples"] for v in state["variants"].values()), default=0)
        if done > samples:
            raise ConfigError(
                f"{self.path} already averages {done} samples, more than swag.samples="
                f"{samples}; give another out=DIR for fewer"
            )
        return state

    def save(self, averages: dict[str, SampleAverages]) -> None:
        variants = {key: a.whole(self.evaluator) for key, a in averages.items() if a.samples}
        if self.evaluator.dist.is_main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint({"identity": self.identity, "variants": variants}, self.path)


def fingerprint(swag: Swag, mean: list[torch.Tensor]) -> str:
    """A digest of the posterior (count, mean, second moment): a saved average is of it."""
    digest = hashlib.sha256(str(swag.count).encode())
    for t in (*mean, *swag.sq_mean):
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def model_average(
    swag: Swag,
    template: nn.Module,
    evaluator,
    settings: PosteriorSettings,
    seed: int,
    folder: Path,
    splits: tuple[str, ...] = ("test",),
) -> tuple[dict[str, SampleAverages], dict[str, str]]:
    """The averages of settings.samples samples of each variant around the mean `template`'s
    parameters, resumed from and saved to <folder>/state.pt; and why a variant was skipped."""
    mean = list(template.parameters())
    planned, skipped = plan_variants(swag, settings)
    store = AverageStore(folder, evaluator, identity(swag, mean, settings, seed, splits))
    averages = {key: SampleAverages(splits) for key, _, _ in planned}
    saved = store.saved(settings.samples)
    for key, state in (saved or {}).get("variants", {}).items():
        if key in averages:
            averages[key].load_whole(state, evaluator)
    scratch = copy.deepcopy(template)  # receives every sample in turn
    for key, scale, low_rank in planned:
        for index in range(averages[key].samples, settings.samples):
            swag.draw(
                mean, sample_generator(seed, index), scale, low_rank, list(scratch.parameters())
            )
            evaluator.refresh(scratch, seed=derive_seed(seed, "swag_bn", index))
            averages[key].add(scratch, evaluator)
            store.save(averages)
    return averages, skipped


def identity(swag: Swag, mean: list, settings: PosteriorSettings, seed: int, splits) -> dict:
    """What a saved average must match to be continued (swag.samples may grow)."""
    return {
        "scale": settings.scale,
        "scale_diag": settings.scale_diag,
        "seed": seed,
        "splits": list(splits),
        "posterior": fingerprint(swag, mean),
    }


def settings_dict(settings: PosteriorSettings, seed: int) -> dict:
    return {**asdict(settings), "seed": seed}


# --- the command --------------------------------------------------------------------------------

COMMAND_KEYS = {
    "checkpoint": "last, or a kept epoch's name (epoch_0250) or file",
    "swag.samples": "posterior samples per variant",
    "swag.scale": "covariance scale of SWAG samples",
    "swag.scale_diag": "covariance scale of SWAG-Diag samples",
    "seed": "seed of the samples (default: the run's)",
    "temperature": "auto (with a held-out split), true or false",
    "device": "auto, cpu, cuda or cuda:N",
    "out": "output folder (default RUN_DIR/posterior/<checkpoint>)",
}


def parse_overrides(argv: list[str]) -> dict:
    """key=value arguments (values read as YAML scalars); ConfigError for anything else."""
    values = {}
    for arg in argv:
        key, sep, text = arg.partition("=")
        if not sep or key not in COMMAND_KEYS:
            valid = ", ".join(f"{k} ({v})" for k, v in COMMAND_KEYS.items())
            raise ConfigError(f"unknown argument {arg!r}; valid: key=value with key one of {valid}")
        values[key] = text if key in ("checkpoint", "out", "device") else yaml.safe_load(text)
    return values


def checkpoint_path(run_dir: Path, name: str) -> Path:
    """checkpoints/<name>.pt ("last", "epoch_0250"), or `name` itself when it is a file."""
    path = Path(name) if Path(name).is_file() else run_dir / "checkpoints" / f"{name}.pt"
    if not path.is_file():
        kept = ", ".join(p.stem for p in sorted((run_dir / "checkpoints").glob("*.pt")))
        raise ConfigError(f"no checkpoint {path}; this run has: {kept or 'none'}")
    return path


def posterior_of(saved: dict, path: Path) -> Swag:
    """The SWAG posterior a checkpoint holds; ConfigError when the run never collected one."""
    state = (saved.get("collectors") or {}).get("swag")
    if state is None or int(state["count"]) == 0:
        raise ConfigError(
            f"{path} holds no SWAG posterior (an SGD run, swag.collect=false, or a checkpoint "
            "from before SWA began collecting): nothing to average"
        )
    return Swag.from_state_dict(state)


def mean_network(cfg, saved: dict) -> nn.Module:
    """The run's network holding the SWA mean (and the SWA model's BN buffers) of a checkpoint."""
    from swa_repro.models import instantiate_model

    no_download = {"pretrained": None} if "pretrained" in cfg.model else {}
    network = instantiate_model(cfg.model, **no_download)
    average = saved["collectors"]["swa"]
    network.load_state_dict(
        {k.removeprefix("module."): v for k, v in average.items() if k != "n_averaged"}
    )
    return network


def command_settings(cfg, values: dict) -> tuple[PosteriorSettings, int, bool | None]:
    """The settings, seed and temperature choice of a command, checked (one-line errors)."""
    from swa_repro.config_check import check_int, check_swag_settings

    run_swag = cfg.get("swag") or {}
    defaults = asdict(PosteriorSettings())
    chosen = {k: values.get(f"swag.{k}", run_swag.get(k, v)) for k, v in defaults.items()}
    check_swag_settings(2, chosen["samples"], chosen["scale"], chosen["scale_diag"], False)
    seed = values.get("seed", cfg.seed)
    check_int(seed, "seed", minimum=0)
    temperature = values.get("temperature", "auto")
    if temperature not in ("auto", True, False):
        raise ConfigError(f"temperature must be auto, true or false, got {temperature!r}")
    held_out = (cfg.data.get("val_size") or 0) > 0
    if temperature is True and not held_out:
        raise ConfigError(
            "temperature scaling needs a held-out split, and this run has none (data.val_size=0): "
            "train with data.val_size > 0, or leave temperature=auto"
        )
    return PosteriorSettings(**chosen), seed, None if temperature == "auto" else temperature


def on_device(swag: Swag, device: torch.device, deviations_on_cpu: bool) -> Swag:
    state = {**swag.state_dict(), "sq_mean": [t.to(device) for t in swag.sq_mean]}
    return Swag.from_state_dict(state, "cpu" if deviations_on_cpu else device)


def results_table(summary: dict[str, dict], samples: int) -> str:
    """Test metrics of each variant (and after temperature scaling), 15 equal-width ECE bins."""
    lines = [f"{'':<34}{'test acc %':>11}{'NLL':>9}{'ECE':>8}{'Brier':>8}"]
    for key, entry in summary.items():
        rows = [(f"{report.model_label(key)} ({samples} samples)", entry["test"])]
        if entry["scaled"] is not None:
            rows.append((f"  temperature-scaled (T={entry['temperature']:.3f})", entry["scaled"]))
        for label, m in rows:
            lines.append(
                f"{label:<34}{m['acc']:>11.2f}{m['nll']:>9.4f}{m['ece']:>8.4f}{m['brier']:>8.4f}"
            )
        if entry["reason"]:
            lines.append(f"  ({entry['reason']})")
    return "\n".join(lines + [f"ECE: {BINNING}"])


def command_inputs(argv: list[str]) -> dict:
    """Everything the command needs, checked (one-line errors) before any work."""
    if not argv or "=" in argv[0]:
        raise ConfigError("usage: python -m swa_repro.posterior RUN_DIR [key=value ...]")
    run_dir, values = Path(argv[0]), parse_overrides(argv[1:])
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml there)")
    cfg = read_yaml(run_dir / "config.yaml", "run config")
    settings, seed, temperature = command_settings(cfg, values)
    cfg.device = values.get("device", "auto")
    check_device(cfg.device)
    path = checkpoint_path(run_dir, values.get("checkpoint", "last"))
    saved = load_checkpoint(path)
    swag, template = posterior_of(saved, path), mean_network(cfg, saved)
    out = Path(values["out"]) if "out" in values else RunPaths(run_dir).posterior(path.stem)
    check_output_folder(out, f"out={out}")
    held_out = (cfg.data.get("val_size") or 0) > 0 and temperature is not False
    splits = ("test", "val") if held_out else ("test",)
    ident = identity(swag, list(template.parameters()), settings, seed, splits)
    AverageStore(out, None, ident).saved(settings.samples)  # another average's folder: refused
    return {"run_dir": run_dir, "cfg": cfg, "settings": settings, "seed": seed, "path": path,
            "temperature": temperature, "epoch": saved["epoch"], "swag": swag,
            "template": template, "out": out}  # fmt: skip


@one_line_errors
def main(argv: list[str]) -> None:
    from swa_repro.run_end import RunEnd  # which runs model_average: imported here, not above

    if "--help" in argv or "-h" in argv:
        print("usage: " + __doc__.split("\n\n", 1)[1].split("\n\n", 1)[0].strip())
        print("\n" + __doc__.split("\n", 1)[0])
        print("Every key is described in docs/beyond_paper.md; --help: this text.")
        return
    given = command_inputs(argv)
    cfg, out, settings = given["cfg"], given["out"], given["settings"]
    dist = Distributed.from_env(cfg.device)
    evaluator = Evaluator.open(cfg, given["epoch"], dist)
    on_cpu = bool((cfg.get("swag") or {}).get("deviations_on_cpu"))
    swag = on_device(given["swag"], evaluator.device, on_cpu)
    metadata = run_metadata(cfg, given["epoch"])
    end = RunEnd(evaluator, given["seed"], out, metadata, None, given["temperature"])
    end.finish_posterior(swag, given["template"].to(evaluator.device), settings)
    if dist.is_main:
        end.write_calibration(out / "calibration.json")
        print(f"{given['run_dir']} ({given['path'].name}, {swag.count} models collected, "
              f"rank {swag.rank}):")  # fmt: skip
        print(results_table(end.summary(), settings.samples))
        for key, reason in end.skipped.items():
            print(f"{report.model_label(key)}: not averaged, {reason}")
        print(f"results: {out / 'posterior.json'}  reliability: {out / 'calibration.json'}")


if __name__ == "__main__":
    main(sys.argv[1:])
