"""The end of a run: what the collectors' final_metrics are handed (swa_repro.collectors).

For every final model, in order (the SGD model, then each collector's: SWA, the SWAG model
averages "swag_diag" and "swag", each EMA):
  calibration  test metrics and reliability-diagram numbers (15 equal-width bins), and with a
               held-out split (data.val_size > 0) the temperature fitted on it and the test
               metrics after scaling (calibration.calibration_record); the whole record goes to
               calibration.json, its numbers to summary.json's "calibration"
  weights      weights/<model>.safetensors (swa_repro.weights; rank 0 writes)
A model is taken as it was last evaluated: an averaged model with the BN statistics of its
refresh after the last epoch, so its weights file gives the test accuracy the run reported.

The SWAG model average (swa_repro.posterior) runs here, resumable in RUN_DIR/posterior/last.
The posterior command uses the same object on a finished run (its own folder, no weights).
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from swa_repro.calibration import BINNING, NO_HELD_OUT, as_logits, calibration_record
from swa_repro.evaluator import Evaluator
from swa_repro.posterior import PosteriorSettings, model_average, settings_dict
from swa_repro.run_files import write_text_atomic
from swa_repro.swag import Swag
from swa_repro.weights import export_model, export_swag, run_metadata

NOT_ASKED = "not asked (temperature=false)"


class RunEnd:
    """Calibrates, exports and averages the final models of a run (see the module docstring)."""

    def __init__(
        self,
        evaluator: Evaluator,
        seed: int,
        posterior_dir: Path,
        metadata: dict,
        weights_dir: Path | None = None,
        temperature: bool | None = None,
    ):
        self.evaluator, self.seed, self.posterior_dir = evaluator, seed, Path(posterior_dir)
        self.metadata, self.weights_dir = metadata, weights_dir
        self.fit = evaluator.has_val if temperature is None else temperature
        self.no_fit_reason = NO_HELD_OUT if not evaluator.has_val else NOT_ASKED
        self.records: dict[str, dict] = {}
        self.skipped: dict[str, str] = {}  # posterior variants not averaged, and why

    @classmethod
    def of_run(cls, run) -> RunEnd:
        files = run.files
        metadata = run_metadata(run.cfg, run.state.epoch)
        evaluator = Evaluator.of_run(run)
        return cls(evaluator, run.cfg.seed, files.posterior("last"), metadata, files.weights)

    @property
    def is_main(self) -> bool:
        return self.evaluator.dist.is_main

    def evaluate(self, module: nn.Module) -> dict[str, float]:
        """BN refresh over the last epoch's pass, then the test metrics."""
        return self.evaluator.evaluate(module)

    def finish_model(self, key: str, module: nn.Module, **metadata) -> None:
        """Calibrate model `key` as it is, and export its weights."""
        logits, labels = self.evaluator.logits(module, "test")
        held_out = None
        if self.fit:
            val_logits, val_labels = self.evaluator.logits(module, "val")
            held_out = self.evaluator.gather(val_logits), self.evaluator.gather(val_labels)
        probs = logits.double().softmax(dim=1)
        self.records[key] = calibration_record(
            probs, logits, labels, held_out, self.evaluator.reduce, self.no_fit_reason
        )
        if self.weights_dir is not None and self.is_main:
            test_acc = self.records[key]["metrics"]["acc"]
            meta = {**self.metadata, **metadata, "test_acc": test_acc}
            export_model(self.weights_dir / f"{key}.safetensors", key, module, meta)

    def finish_posterior(
        self, swag: Swag, mean_module: nn.Module, settings: PosteriorSettings
    ) -> dict[str, dict]:
        """The model averages of SWAG-Diag and SWAG: their summary entries; their calibration
        and curves (posterior.json), the posterior's weights."""
        splits = ("test", "val") if self.fit else ("test",)
        averages, skipped = model_average(
            swag, mean_module, self.evaluator, settings, self.seed, self.posterior_dir, splits
        )
        entries, variants = {}, {}
        self.skipped.update(skipped)
        for key, average in averages.items():
            test = average.splits["test"]
            held_out = None
            if "val" in average.splits:
                val = average.splits["val"]
                val_probs = self.evaluator.gather(val.probabilities())
                held_out = as_logits(val_probs), self.evaluator.gather(val.labels)
            probs = test.probabilities()
            self.records[key] = calibration_record(
                probs, as_logits(probs), test.labels, held_out, self.evaluator.reduce,
                self.no_fit_reason,
            )  # fmt: skip
            scale = settings.scale if key == "swag" else settings.scale_diag
            entries[key] = {**test.curve[-1], "samples": test.samples, "scale": scale}
            variants[key] = {"final": entries[key], "curve": test.curve}
        if self.is_main:
            self.write_posterior(settings, variants, skipped, swag)
            if self.weights_dir is not None:
                export_swag(self.weights_dir / "swag.safetensors", swag, mean_module, self.metadata)
        return entries

    def write_posterior(self, settings, variants: dict, skipped: dict, swag: Swag) -> None:
        """posterior.json: settings, per variant its final metrics, curve and temperature fit."""
        for key, entry in variants.items():
            entry["calibration"] = self.summary()[key]
        posterior = {
            "settings": settings_dict(settings, self.seed),
            "collected": swag.count,
            "rank": swag.rank,
            "binning": BINNING,
            "variants": variants,
            "skipped": skipped,
        }
        self.posterior_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(posterior, indent=2) + "\n"
        write_text_atomic(self.posterior_dir / "posterior.json", text)

    def summary(self) -> dict[str, dict]:
        """Per model: test metrics, temperature, metrics after scaling (or why not)."""
        return {
            key: {
                "test": record["metrics"],
                "temperature": record["temperature"],
                "scaled": record["scaled"]["metrics"] if record["scaled"] else None,
                "reason": record["reason"],
            }
            for key, record in self.records.items()
        }

    def write_calibration(self, path: Path) -> None:
        """calibration.json: every model's whole record (reliability-diagram numbers included)."""
        meta = self.metadata
        run = {"data": meta["data"], "model": meta["model_name"], "method": meta["method"],
               "epochs": meta["epochs"]}  # fmt: skip
        document = {"run": run, "binning": BINNING, "models": self.records}
        write_text_atomic(Path(path), json.dumps(document, indent=2) + "\n")
