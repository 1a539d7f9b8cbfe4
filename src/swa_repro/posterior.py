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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from swa_repro.bma import ModelAverage
from swa_repro.checkpoint import load_checkpoint, save_checkpoint
from swa_repro.config_check import ConfigError
from swa_repro.data.stream import rank_share
from swa_repro.rng import derive_seed
from swa_repro.swag import Swag, sample_generator

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
        skipped["swag"] = (
            "no deviations (swag.low_rank=false, or a kept checkpoint): SWAG-Diag only"
        )
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

    def saved(self) -> dict | None:
        """The saved state if it is of this posterior and these settings; ConfigError naming
        what differs otherwise."""
        if not self.path.is_file():
            return None
        state = load_checkpoint(self.path)
        different = sorted(k for k, v in self.identity.items() if state["identity"].get(k) != v)
        if different:
            raise ConfigError(
                f"{self.path} holds the model average of another posterior or other settings "
                f"(differs in: {', '.join(different)}); give another out=DIR, or move it away"
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
    store = AverageStore(folder, evaluator, identity(swag, mean, settings, seed))
    averages = {key: SampleAverages(splits) for key, _, _ in planned}
    saved = store.saved()
    for key, state in (saved or {}).get("variants", {}).items():
        if key in averages:
            averages[key].load_whole(state, evaluator)
    done = max(a.samples for a in averages.values())
    if done > settings.samples:
        raise ConfigError(
            f"{store.path} already averages {done} samples, more than swag.samples="
            f"{settings.samples}; give another out=DIR for fewer"
        )
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


def identity(swag: Swag, mean: list[torch.Tensor], settings: PosteriorSettings, seed: int) -> dict:
    """What a saved average must match to be continued (swag.samples may grow)."""
    return {
        "scale": settings.scale,
        "scale_diag": settings.scale_diag,
        "seed": seed,
        "posterior": fingerprint(swag, mean),
    }


def settings_dict(settings: PosteriorSettings, seed: int) -> dict:
    return {**asdict(settings), "seed": seed}
