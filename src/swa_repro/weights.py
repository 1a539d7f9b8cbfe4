"""The final models of a run as safetensors files anyone can load, and loading them back.

At the end of a run (swa_repro.run_end) rank 0 writes RUN_DIR/weights/:
    sgd.safetensors            the final SGD model: parameters and its trained BN statistics
    swa.safetensors            the SWA average, with BN statistics recomputed for it
    ema_<decay>.safetensors    each EMA, with BN statistics recomputed for it
    swag.safetensors           the SWAG posterior: "mean.<param>" (the SWA mean), "sq_mean.<param>",
                               "deviations.<param>" (K x numel, oldest first)
A model file's tensors are the network's state_dict (no "module." prefix, no n_averaged); its
metadata (all strings) name the network (`target`, `arguments` as JSON: the model config's
_target_ and arguments), the data (`data`, `num_classes`), the input (`input_mean`, `input_std`
as JSON lists, `image_size`; the network takes (image / 255 - mean) / std), `bn` (whose
statistics these are), `test_acc` (the run's test accuracy of these weights), and per model
`n_averaged`, `ema_decay`, `ema_updates`. An averaged model is only ever written with the BN
statistics of its own last refresh (the one its reported accuracy was measured with).

    load_model(run_dir, "swa")    the network in eval mode with the input normalisation
                                  included (takes float images in [0, 1]); normalize=False: the
                                  bare network (inputs normalised by the caller)
    load_swag(run_dir)            the posterior; .sample(generator) a network drawn from it,
                                  its BN statistics recomputed over the run's training data
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn

from swa_repro.checkpoint import write_atomic
from swa_repro.cli import read_yaml
from swa_repro.config_check import ConfigError
from swa_repro.ema import ema_name
from swa_repro.models import has_batchnorm, instantiate_model, model_arguments
from swa_repro.rng import derive_seed
from swa_repro.swag import Swag

FORMAT = "swa_repro weights 1"


def run_metadata(cfg: DictConfig, epochs_done: int) -> dict[str, str]:
    """The metadata every weights file of a run carries."""
    target, args = model_arguments(cfg.model)
    args.pop("pretrained", None)  # the weights come from the file
    return {
        "format": FORMAT,
        "target": target,
        "arguments": json.dumps(args),
        "model_name": str(cfg.model.name),
        "method": str(cfg.method.name),
        "data": str(cfg.data.name),
        "num_classes": str(cfg.data.num_classes),
        "input_mean": json.dumps(list(cfg.model.mean)),
        "input_std": json.dumps(list(cfg.model.std)),
        "image_size": str(cfg.data.get("image_size", 32)),
        "epochs": str(epochs_done),
        "seed": str(cfg.seed),
    }


def bn_note(key: str, module: nn.Module, epochs_done: int) -> str:
    if not has_batchnorm(module):
        return "no BatchNorm layers"
    if key == "sgd":
        return "running statistics of SGD training"
    return f"recomputed for these weights over the training images of epoch {epochs_done}"


def export_model(path: Path, key: str, module: nn.Module, metadata: dict) -> None:
    """weights/<key>.safetensors: `module`'s state_dict with `metadata` (values made strings)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    epochs = int(metadata["epochs"])
    meta = {**metadata, "model": key, "bn": bn_note(key, module, epochs)}
    write_file(path, tensors, meta)


def export_swag(path: Path, swag: Swag, mean_module: nn.Module, metadata: dict) -> None:
    """weights/swag.safetensors: the SWA mean, the second moment and (low rank) the deviations."""
    tensors = {}
    deviations = swag.chronological_deviations() if swag.low_rank else None
    for i, (name, mean) in enumerate(mean_module.named_parameters()):
        tensors[f"mean.{name}"] = mean.detach().cpu().contiguous()
        tensors[f"sq_mean.{name}"] = swag.sq_mean[i].detach().cpu().contiguous()
        if deviations is not None:
            tensors[f"deviations.{name}"] = deviations[i].cpu().contiguous()
    counts = {"count": swag.count, "max_rank": swag.max_rank, "rank": swag.rank}
    write_file(path, tensors, {**metadata, "model": "swag", **counts})


def write_file(path: Path, tensors: dict, metadata: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, save(tensors, {k: str(v) for k, v in metadata.items()}))


def weights_file(run_dir: str | Path, name: str) -> Path:
    """The file of model `name` ("sgd", "swa", "ema" = the first of ema.decays, "ema_<decay>",
    "swag"); ConfigError naming the models the run has when it has no such file."""
    folder = Path(run_dir) / "weights"
    if name == "ema":
        decays = read_yaml(Path(run_dir) / "config.yaml", "run config").get("ema", {})
        decays = decays.get("decays") or []
        name = ema_name(decays[0]) if decays else name
    path = folder / f"{name}.safetensors"
    if not path.is_file():
        held = sorted(p.stem for p in folder.glob("*.safetensors"))
        raise ConfigError(
            f"{run_dir} has no {name} model ({path} not found); it has: "
            f"{', '.join(held) or 'none (the run has not finished)'}"
        )
    return path


def read_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


class Normalized(nn.Module):
    """network((x - mean) / std) for float images x in [0, 1], as the run's data pipeline feeds
    it ((image / 255 - mean) / std)."""

    def __init__(self, network: nn.Module, mean, std):
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network((images - self.mean) / self.std)


def network_of(metadata: dict[str, str]) -> nn.Module:
    """The (untrained) network named by a weights file's metadata."""
    return instantiate_model({"_target_": metadata["target"], **json.loads(metadata["arguments"])})


def with_input(network: nn.Module, metadata: dict[str, str], normalize: bool) -> nn.Module:
    if not normalize:
        return network.eval()
    mean, std = json.loads(metadata["input_mean"]), json.loads(metadata["input_std"])
    return Normalized(network, mean, std).to(next(network.parameters()).device).eval()


def load_model(
    run_dir: str | Path, name: str = "swa", normalize: bool = True, device: str = "cpu"
) -> nn.Module:
    """Model `name` of a finished run (sgd, swa, ema, ema_<decay>) in eval mode, ready to
    predict: by default with the input normalisation included (float images in [0, 1]);
    normalize=False gives the bare network, which takes normalised inputs."""
    if name == "swag":
        raise ConfigError("swag is a posterior, not one network: use load_swag(run_dir)")
    path = weights_file(run_dir, name)
    metadata = read_metadata(path)
    network = network_of(metadata)
    network.load_state_dict(load_file(str(path)))
    return with_input(network.to(device), metadata, normalize)


class SwagPosterior:
    """A run's SWAG posterior (weights/swag.safetensors); .sample() draws networks from it."""

    def __init__(self, run_dir: Path, device: str = "cpu"):
        self.run_dir, self.device = Path(run_dir), device
        path = weights_file(run_dir, "swag")
        self.metadata = read_metadata(path)
        tensors = load_file(str(path), device=device)
        self.names = [k.removeprefix("mean.") for k in tensors if k.startswith("mean.")]
        self.mean = [tensors[f"mean.{n}"] for n in self.names]
        sq_mean = [tensors[f"sq_mean.{n}"] for n in self.names]
        has_deviations = f"deviations.{self.names[0]}" in tensors
        deviations = [tensors[f"deviations.{n}"] for n in self.names] if has_deviations else None
        meta = self.metadata
        self.swag = Swag.from_moments(
            sq_mean, int(meta["count"]), int(meta["max_rank"]), deviations
        )
        self.evaluator = None

    def sample(
        self,
        generator: torch.Generator,
        low_rank: bool = True,
        scale: float | None = None,
        normalize: bool = True,
    ) -> nn.Module:
        """A network drawn from SWAG (low_rank) or SWAG-Diag with covariance `scale` (None: the
        run's swag.scale / swag.scale_diag), BN statistics recomputed over the run's training
        images (loaded on first use); eval mode."""
        cfg = read_yaml(self.run_dir / "config.yaml", "run config")
        if scale is None:
            scale = cfg.swag.scale if low_rank else cfg.swag.scale_diag
        network = network_of(self.metadata).to(self.device)
        params = dict(network.named_parameters())
        self.swag.draw(self.mean, generator, scale, low_rank, [params[n] for n in self.names])
        if has_batchnorm(network):
            self.refresh(network, cfg, derive_seed("load_swag", generator.initial_seed()))
        return with_input(network, self.metadata, normalize)

    def refresh(self, network: nn.Module, cfg: DictConfig, seed: int) -> None:
        from swa_repro.evaluator import Evaluator  # loads the run's data: only when sampling

        if self.evaluator is None:
            cfg.device = self.device
            self.evaluator = Evaluator.open(cfg, int(self.metadata["epochs"]))
        self.evaluator.refresh(network, seed=seed)


def load_swag(run_dir: str | Path, device: str = "cpu") -> SwagPosterior:
    """The SWAG posterior of a finished SWA run, with .sample(generator)."""
    return SwagPosterior(Path(run_dir), device)
