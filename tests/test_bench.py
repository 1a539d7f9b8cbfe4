"""The throughput benchmark (python -m swa_repro.bench) end to end at a tiny size on CPU."""

import json
import math
import sys

import pytest
import torch

from swa_repro import bench
from swa_repro.analysis.common import POINTS_PER_PASS
from swa_repro.bench import DERIVED, MEASUREMENT_FIELDS, MEASUREMENTS, markdown, run

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
# Where the speed settings, the reference's worker processes and the sizes are not what a test
# is about (test_bench_tiny_writes_every_field runs the defaults: bf16, a worker): fp32 (bf16 is
# slow on a CPU), the reference's loading in-process, one repeat.
QUICK = ["--size=tiny", "--repeats=1", "--ref-workers=0", "--speed=faithful"]
SMALLER = ["--train-size=128", "--test-size=64"]


def test_bench_tiny_writes_every_field(tmp_path):
    out = tmp_path / "bench.json"
    lines = []
    result = run(
        [
            "--size=tiny",
            "--train-size=128",
            "--test-size=64",
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
    assert saved["settings"]["size"] == "custom"  # tiny's sizes overridden
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


def test_markdown_tables_show_the_saved_numbers(tmp_path):
    out = tmp_path / "bench.json"
    lines = []
    result = run([*QUICK, f"--out={out}"], log=lines.append)
    text = markdown(json.loads(out.read_text()))
    assert lines[-1] == text  # the run ends with the tables
    m = result["models"]["small_cnn"]["measurements"]
    d = result["models"]["small_cnn"]["derived"]
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    e = m["train_images_per_s"]
    assert rows["training"] == (
        f"| training | {e['ours']:.0f} images/s | {e['reference']:.0f} images/s | x{e['ratio']:.2f} |"
    )
    e = m["plane_point_s"]
    assert (
        rows["plane point"]
        == f"| plane point | {e['ours']:.3f} s | {e['reference']:.3f} s | x{e['ratio']:.2f} |"
    )
    # tiny data (320 + 192): the 21 x 21 plane scaled to CIFAR's 2 x 50000 + 10000 images
    scale = 110000 / (2 * 320 + 192)
    scaled = next(v for k, v in rows.items() if k.startswith("derived: 21 x 21 plane on CIFAR"))
    assert f"| {d['plane_21x21_s']['ours'] * scale / 60:.1f} min |" in scaled
    assert sum(line.startswith("- target ") for line in text.splitlines()) == 4


def test_a_model_without_bn_has_no_refresh_to_compare(tmp_path):
    """VGG16 has no BN: the refresh reads no data, so its images/s is marked, not tabled."""
    out = tmp_path / "bench.json"
    run([*QUICK, *SMALLER, f"--out={out}", "--models=small_cnn_nobn"], log=lambda line: None)
    entry = json.loads(out.read_text())["models"]["small_cnn_nobn"]["measurements"]
    assert entry["bn_refresh_images_per_s"]["note"] == bench.NO_BN_NOTE
    assert "note" not in entry["train_images_per_s"]
    text = markdown(json.loads(out.read_text()))
    assert f"| BN refresh | {bench.NO_BN_NOTE} | | |" in text.splitlines()


def test_finished_models_survive_a_later_failure(tmp_path, monkeypatch):
    """The JSON is rewritten after every model, so a crash (out of memory, a kill) keeps them."""
    real = bench.bench_model

    def second_fails(name, *args, **kwargs):
        if name == "vgg16":
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(bench, "bench_model", second_fails)
    out = tmp_path / "bench.json"
    with pytest.raises(RuntimeError, match="simulated"):
        run(
            [*QUICK, *SMALLER, "--models=small_cnn,vgg16", f"--out={out}"],
            log=lambda line: None,
        )
    saved = json.loads(out.read_text())
    assert list(saved["models"]) == ["small_cnn"]
    assert set(saved["models"]["small_cnn"]["measurements"]) == set(MEASUREMENTS)


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--models=small_cnn,foo"], ["unknown --models name 'foo'", "small_cnn", "wrn28x10"]),
        pytest.param(["--device=cuda"], ["CUDA is not available"], marks=NO_CUDA),
        (["--device=mps"], ["device must be auto, cpu, cuda or cuda:N, got 'mps'"]),
        (["--speed=nope"], ["--speed nope", "valid names: faithful, fast"]),
        (["--speed={tmp}/bad.yaml"], ["--speed {tmp}/bad.yaml is not valid YAML"]),
        (["--markdown", "{tmp}/none.json"], ["--markdown {tmp}/none.json: no such file"]),
        (["--markdown", "{tmp}/bad.json"], ["--markdown {tmp}/bad.json is not valid JSON"]),
        (["--markdown", "{tmp}/other.json"], ["{tmp}/other.json is not a benchmark JSON"]),
        (["--train-size=-5"], ["--train-size must be a positive integer, got -5"]),
        (["--train-size=0"], ["--train-size must be a positive integer, got 0"]),
        (["--test-size=0"], ["--test-size must be a positive integer, got 0"]),
        (["--ref-workers=-1"], ["--ref-workers must be an integer >= 0, got -1"]),
        (["--threads=-1"], ["--threads must be a positive integer"]),
        (["--out={tmp}"], ["is a folder; it must be the JSON file"]),
        (["--out={tmp}/bad.json/bench.json"], ["{tmp}/bad.json is a file, not a folder"]),
    ],
)
def test_bad_options_are_one_line_errors(argv, needles, tmp_path, capsys, monkeypatch):
    (tmp_path / "bad.yaml").write_text("compile: true\n  bf16: false\n")
    (tmp_path / "bad.json").write_text('{"models": ')
    (tmp_path / "other.json").write_text('{"models": {}}')
    monkeypatch.chdir(tmp_path)  # the default --out, should a check be missed
    args = [a.format(tmp=tmp_path) for a in argv]
    monkeypatch.setattr(sys, "argv", ["bench", "--size=tiny", "--repeats=1", *args])
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), captured.err
    for needle in needles:
        assert needle.format(tmp=tmp_path) in err[0]
    assert captured.out == "" and not (tmp_path / "bench.json").exists()
