"""The export step: the served model exported and measured (onnx.py), which exported form is served,
and what the step logs.

The form served is the fastest ONNX file that passed parity, INT8 first (`servable_form`); it is logged
as an MLflow pyfunc beside the run (servable.py for text, image_servable.py for images). No form
passed: nothing is served from this export, and the registry serves the torch model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from graftline.tasks.data.splits import Splits
from graftline.tasks.engine import backbones
from graftline.tasks.export.onnx import ExportReport, Measured, export_and_measure, plot_tradeoff
from graftline.tasks.registry.tracking import StepLog
from graftline.tasks.settings import ExportParams


@dataclass(frozen=True)
class ExportResult:
    """The export report of the served model (`role`), its picture, and the URI of the form served."""

    report: ExportReport
    role: str
    picture: Path  # accuracy against CPU latency
    servable_uri: str | None  # None: no ONNX form passed parity

    def logged(self) -> StepLog:
        """Every form's metrics and latency table, the files that passed parity, and the parity verdict."""
        import pandas as pd

        rows, failures = self.report.rows, self.report.failures()
        passed = [(Path(row.file), "export") for row in rows if row.file and row.passed]
        return StepLog(
            metrics=self.report.metrics(),
            tags={"graftline.export": "; ".join(failures) + " (not logged)" if failures else "parity passed"},
            files=[(self.picture, "export"), *passed],
            tables={"export/latency.json": pd.DataFrame(self.report.table())},
            lines=[_line(row) for row in rows],
            warnings=[f"export parity failed: {failure}; the file is not logged" for failure in failures],
        )


def export_served(
    served_dir: Path,
    role: str,
    modality,
    temperature: float,
    compared_dir: Path | None,
    splits: Splits,
    params: ExportParams,
    max_length: int,
    folder: Path,
) -> ExportResult:
    """ONNX (and INT8) export of the served model in `served_dir`, parity on the test set, CPU latency
    of all (and of `compared_dir`, the teacher, when a student is served); the fastest form that
    passed parity logged as the run's servable pyfunc (with `temperature`) of the data's `modality`
    (tasks/modality/: text or image servable; what an INT8 file is calibrated on)."""
    report = export_and_measure(
        served_dir,
        compared_dir,
        splits.test,
        params,
        max_length,
        folder,
        calibration=modality.export_calibration(splits),
    )
    title = f"{role} export: accuracy against CPU latency"
    picture = plot_tradeoff(report, folder / "tradeoff.png", title)
    chosen = servable_form(report)
    uri = None
    if chosen is not None:
        labels = backbones.labels_of(backbones.load_classifier(str(served_dir)))
        servable = folder / "servable"
        servable.mkdir(parents=True, exist_ok=True)
        uri = modality.log_servable(served_dir, Path(chosen.file), labels, temperature, max_length, servable)
    return ExportResult(report, role, picture, uri)


def servable_form(report: ExportReport) -> Measured | None:
    """The form to serve: the fastest ONNX file that passed parity (INT8 first); None when none did."""
    rows = [report.row(f"{report.served}-onnx-int8"), report.row(f"{report.served}-onnx")]
    return next((r for r in rows if r and r.file and r.passed), None)


def _line(row: Measured) -> str:
    return (
        f"{row.name:<18} accuracy {row.accuracy:.4f}  batch 1: {row.ms_batch_1:.2f} ms  "
        f"batch 32: {row.examples_per_second_batch_32:.0f} examples/s  {row.size_mb:.1f} MB"
        + ("" if row.passed else "  PARITY FAILED")
    )
