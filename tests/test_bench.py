"""The throughput benchmark (python -m swa_repro.bench) end to end at a tiny size on CPU."""

import json
import math

from swa_repro.analysis.common import POINTS_PER_PASS
from swa_repro.bench import DERIVED, MEASUREMENT_FIELDS, MEASUREMENTS, run

ENVIRONMENT = (
    "device",
    "device_name",
    "cpu_count",
    "cpu_cores_usable",
    "torch_threads",
    "torch",
    "torchvision",
    "python",
    "platform",
    "cuda",
    "cudnn",
    "load_average_start",
    "load_average_end",
)
SETTINGS = (
    "size",
    "train_size",
    "test_size",
    "batch_size",
    "repeats",
    "warmup",
    "ref_workers",
    "speed_name",
    "speed",
    "plane_points_per_pass",
    "plane_mode",
    "averaging_updates_per_repeat",
)
TARGET_FIELDS = ("target", "value", "op", "threshold", "met", "applies")


def test_bench_tiny_writes_every_field(tmp_path):
    out = tmp_path / "bench.json"
    lines = []
    result = run(
        [
            "--size=tiny",
            "--train-size=256",
            "--test-size=128",
            "--repeats=2",
            "--ref-workers=1",
            f"--out={out}",
        ],
        log=lines.append,
    )
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    for key in ("schema", "created", "command", "environment", "settings", "models"):
        assert key in saved
    assert set(ENVIRONMENT) <= set(saved["environment"])
    assert saved["environment"]["device"] == "cpu"
    assert set(SETTINGS) <= set(saved["settings"])
    assert saved["settings"]["speed"]["compile"] is False  # off on CPU unless asked for
    # plane points in the analyses' chunks (evaluate_grid), loop mode on CPU as its "auto"
    assert saved["settings"]["plane_points_per_pass"] == POINTS_PER_PASS
    assert saved["settings"]["plane_mode"] == "loop"
    assert list(saved["models"]) == ["small_cnn"]
    model = saved["models"]["small_cnn"]
    assert model["params"] > 0
    assert set(model["measurements"]) == set(MEASUREMENTS)
    for name, m in model["measurements"].items():
        assert set(MEASUREMENT_FIELDS) <= set(m), name
        assert len(m["ours_repeats"]) == len(m["reference_repeats"]) == 2
        for key in ("ours", "reference", "ratio"):
            assert math.isfinite(m[key]) and m[key] > 0, (name, key)
    assert set(DERIVED) == set(model["derived"])
    for values in model["derived"].values():
        assert all(math.isfinite(v) and v > 0 for v in values.values())
    assert len(model["targets"]) == 4
    for t in model["targets"]:
        assert set(TARGET_FIELDS) <= set(t)
        assert t["applies"] is False  # the targets are set for a GPU
    assert any("plane_point_s" in line for line in lines)
