"""The benchmark's Hessian-vector-product cost (bench.hessian_cost): what it times is the hessian
analysis' own product and gradient, the JSON fields and the markdown line."""

from __future__ import annotations

import json

import torch
from torch import nn

from swa_repro import bench
from swa_repro.analysis.hessian import HessianOperator, data_gradient

FIELDS = ("images", "batch_size", "hvp_pass_s", "gradient_pass_s", "hvp_over_gradient",
          "hvp_repeats", "gradient_repeats", "target")  # fmt: skip


def test_hessian_cost_times_one_product_and_one_gradient_pass(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 10))
    x, y = torch.randn(10, 3, 6, 6), torch.arange(10)
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]
    calls = {"hvp": 0, "gradient": 0}
    matvec, gradient = HessianOperator.matvec, data_gradient

    def counted_matvec(self, v):
        calls["hvp"] += 1
        return matvec(self, v)

    def counted_gradient(*args):
        calls["gradient"] += 1
        return gradient(*args)

    monkeypatch.setattr(HessianOperator, "matvec", counted_matvec)
    monkeypatch.setattr(bench, "data_gradient", counted_gradient)
    lines = []
    cost = bench.hessian_cost(model, batches, torch.device("cpu"), 3, lines.append)
    assert calls == {"hvp": 4, "gradient": 4}  # one warm-up each, then 3 timed repeats
    assert set(FIELDS) == set(cost) and (cost["images"], cost["batch_size"]) == (10, 6)
    assert len(cost["hvp_repeats"]) == len(cost["gradient_repeats"]) == 3
    assert cost["hvp_pass_s"] == sorted(cost["hvp_repeats"])[1] > 0
    assert cost["gradient_pass_s"] == sorted(cost["gradient_repeats"])[1] > 0
    assert cost["hvp_over_gradient"] == cost["hvp_pass_s"] / cost["gradient_pass_s"]
    target = cost["target"]
    assert (target["threshold"], target["op"], target["applies"]) == (2.5, "<=", False)
    assert target["met"] == (cost["hvp_over_gradient"] <= 2.5)
    assert json.loads(json.dumps(cost)) == cost  # JSON as it is
    assert lines == [f"  hessian: {bench.hessian_line(cost)}"]
    assert bench.hessian_line(cost) == (
        f"| Hessian-vector product / gradient pass (10 images) | {cost['hvp_pass_s']:.3g} s / "
        f"{cost['gradient_pass_s']:.3g} s | | x{cost['hvp_over_gradient']:.2f} (goal <= 2.5: "
        "n/a here (GPU target)) |"
    )


def test_markdown_prints_the_hessian_line_when_the_json_has_it():
    """bench.markdown of a JSON with and without the entry (older JSONs lack it)."""
    cost = {"images": 512, "hvp_pass_s": 0.3, "gradient_pass_s": 0.1, "hvp_over_gradient": 3.0,
            "target": bench.target("t", 3.0, "<=", 2.5, True)}  # fmt: skip
    measurement = {"ours": 1.0, "reference": 1.0, "ratio": 1.0, "unit": "s"}
    derived = {"epoch_s": {"ours": 1.0, "reference": 1.0}, "plane_21x21_s": {"ours": 1.0,
               "reference": 1.0, "ratio": 1.0}, **{k: {"ours": 0.1, "reference": 0.1} for k in
               ("bn_refresh_fraction_of_epoch", "averaging_fraction_of_epoch")}}  # fmt: skip
    model = {"params": 10, "measurements": dict.fromkeys(bench.MEASUREMENTS, measurement),
             "derived": derived, "targets": []}  # fmt: skip
    result = {
        "environment": dict.fromkeys(("device_name", "torch", "torchvision", "python", "cuda",
                                      "cudnn"), "x"),
        "settings": {"train_size": 50000, "test_size": 10000, "repeats": 1, "speed_name": "fast",
                     "plane_points_per_pass": 8, "plane_mode": "loop"},
        "created": "now", "command": "bench", "models": {"m": {**model, "hessian": cost}},
    }  # fmt: skip
    line = "| Hessian-vector product / gradient pass (512 images) | 0.3 s / 0.1 s | | x3.00 "
    assert line + "(goal <= 2.5: NOT met) |" in bench.markdown(result).splitlines()
    del result["models"]["m"]["hessian"]
    assert "Hessian-vector product" not in bench.markdown(result)
