"""Distributed pieces checked against one process, run under torchrun (gloo, CPU).

    torchrun --standalone --nproc_per_node=2 tests/helpers/dist_check.py OUT.json [IMAGEFOLDER_ROOT]

Every rank holds the same model and the same list of batches. Rank r uses its own share of
them (the distributed code path); rank 0 also computes the single-process answer over all of
them and writes both, with the values gathered from every rank, to OUT.json:
  bn:       refresh_bn with the ranks' statistics combined vs refresh_bn over all batches
  eval:     evaluate over each rank's share of the test set, summed vs evaluate over all of it
  agree:    a ConfigError raised on rank 0 inside Distributed.agree, as seen on every rank
  same:     assert_same on identical tensors (passes) and on rank-dependent ones (raises)
  folders:  with IMAGEFOLDER_ROOT, FolderData opened as train.py does: the trees scanned on
            rank 0 only, the same samples on every rank; and a missing root's error on every rank
"""

from __future__ import annotations

import json
import sys

import torch
from omegaconf import OmegaConf

import swa_repro.data.imagenet as imagenet
from swa_repro.bn_refresh import refresh_bn
from swa_repro.config_check import ConfigError
from swa_repro.data import DataError, Normalizer, eval_batches
from swa_repro.distributed import Distributed, RanksDisagree
from swa_repro.metrics import evaluate
from swa_repro.models.small import SmallCNN


def bn_stats(model) -> list[float]:
    return torch.cat(
        [
            torch.cat([m.running_mean, m.running_var])
            for m in model.modules()
            if hasattr(m, "running_var")
        ]
    ).tolist()


def check_folders(dist: Distributed, root: str, normalize: Normalizer) -> dict:
    scans = []
    real_scan = imagenet.load_folders
    imagenet.load_folders = lambda cfg: scans.append(cfg.root) or real_scan(cfg)
    cfg = OmegaConf.load("conf/data/imagenet.yaml")
    cfg.merge_with({"root": root, "num_classes": 5, "image_size": 32, "resize": 36})
    data = imagenet.FolderData(cfg, normalize, 0, dist.rank, dist.world, dist.agree)
    samples = [(str(p), label) for p, label in data.train.folder.samples + data.val.samples]
    scanned = len(scans)
    try:
        imagenet.FolderData(
            OmegaConf.merge(cfg, {"root": root + "-missing"}),
            normalize,
            0,
            dist.rank,
            dist.world,
            dist.agree,
        )
        error = None
    except DataError as exc:
        error = str(exc)
    imagenet.load_folders = real_scan
    return {
        "folder_scans": dist.gather(scanned),
        "folder_samples": dist.gather(samples),
        "folder_errors": dist.gather(error),
    }


def main(out: str, folder_root: str | None = None) -> None:
    dist = Distributed.from_env("cpu")
    torch.manual_seed(0)
    model = SmallCNN(5)
    # 7 batches of uneven sizes (the last short), as a BN-refresh stream would give them
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(b, 3, 32, 32, generator=gen) * 2 + 1 for b in (8, 8, 8, 8, 8, 8, 3)]
    mine = batches[dist.rank :: dist.world]
    seen = refresh_bn(model, mine, dist.all_reduce_sum)
    result = {"world": dist.world, "bn_seen": seen, "bn_ranks": dist.gather(bn_stats(model))}

    images = torch.randint(0, 256, (37, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 5, (37,), generator=gen)
    normalize = Normalizer([0.5] * 3, [0.25] * 3, torch.device("cpu"))
    sharded = evaluate(
        model,
        eval_batches(images, labels, 4, normalize, dist.rank, dist.world),
        reduce=dist.all_reduce_sum,
    )
    result["eval_ranks"] = dist.gather(sharded)

    def refuse():
        raise ConfigError("rank 0 refuses")

    try:
        dist.agree(refuse)
        seen_error = None
    except ConfigError as exc:
        seen_error = str(exc)
    result["agree_errors"] = dist.gather(seen_error)
    result["agree_values"] = dist.gather(dist.agree(lambda: "chosen on rank 0"))

    dist.assert_same(list(model.parameters()), "parameters")
    try:
        dist.assert_same([torch.tensor([float(dist.rank)])], "rank numbers")
        result["disagreement_caught"] = False
    except RanksDisagree:
        result["disagreement_caught"] = True
    result["disagreement_ranks"] = dist.gather(result["disagreement_caught"])

    if folder_root is not None:
        result.update(check_folders(dist, folder_root, normalize))

    if dist.is_main:
        torch.manual_seed(0)
        single = SmallCNN(5)
        result["bn_single_seen"] = refresh_bn(single, batches)
        result["bn_single"] = bn_stats(single)
        result["eval_single"] = evaluate(single, eval_batches(images, labels, 4, normalize))
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
