"""What each step's result says it logs (`logged()`: a tracking.StepLog), checked without MLflow or
Prefect; and `tracking.record`, which writes one, against a real local MLflow store."""

from collections import Counter
from pathlib import Path

import pandas as pd

from graftline.tasks import modality as modalities
from graftline.tasks.data.ingest import WITHHELD, IngestResult, redact, withholds_evaluation_sets
from graftline.tasks.data.splits import Split, Splits
from graftline.tasks.data.validate import Finding, ValidationReport
from graftline.tasks.evaluate.domain_gap import DomainGap, GapReport
from graftline.tasks.export.onnx import ExportReport, Measured
from graftline.tasks.export.served import ExportResult, servable_form
from graftline.tasks.records import Registered, Registration
from graftline.tasks.registry import contract, tracking
from graftline.tasks.settings import ValidationParams
from graftline.tasks.train.distill import PRIVATE_TEACHER_NOTE, Distilled, DistillResult, Judgement, student_privacy
from graftline.tasks.train.selection import BackboneChoice


def _export_report(int8_passed: bool) -> ExportReport:
    row = dict(max_logit_diff=0.0, ms_batch_1=2.0, examples_per_second_batch_32=100.0, size_mb=10.0)
    return ExportReport(
        "student",
        [
            Measured("teacher", 0.9, 1.0, **{**row, "ms_batch_1": 8.0, "examples_per_second_batch_32": 25.0}),
            Measured("student", 0.88, 1.0, **row),
            Measured("student-onnx", 0.88, 1.0, **row, file="/x/student.onnx"),
            Measured(
                "student-onnx-int8", 0.7 + 0.18 * int8_passed, 0.8, **row, file="/x/int8.onnx", passed=int8_passed
            ),
        ],
    )


def test_the_export_log_names_the_served_form_and_the_parity_verdict():
    failed = ExportResult(_export_report(int8_passed=False), "student", Path("/x/tradeoff.png"), "models:/m-1")
    assert servable_form(failed.report).name == "student-onnx"  # INT8 failed parity: the next fastest
    log = failed.logged()
    assert log.tags["graftline.export"].endswith("(not logged)") and "student-onnx-int8" in log.tags["graftline.export"]
    assert (Path("/x/student.onnx"), "export") in log.files and (Path("/x/int8.onnx"), "export") not in log.files
    assert log.metrics["student_onnx_int8_parity_passed"] == 0.0 and "export/latency.json" in log.tables
    assert any(line.endswith("PARITY FAILED") for line in log.lines)
    assert log.warnings and log.warnings[0].startswith("export parity failed: student-onnx-int8")

    passed = ExportResult(_export_report(int8_passed=True), "student", Path("/x/tradeoff.png"), "models:/m-1")
    assert servable_form(passed.report).name == "student-onnx-int8"
    assert passed.logged().tags["graftline.export"] == "parity passed" and not passed.logged().warnings


def _distilled(teacher_privacy: dict[str, str], gate_failure: str | None = None) -> Distilled:
    from graftline.tasks.engine.training import TrainResult
    from graftline.tasks.evaluate.calibration import Calibration
    from graftline.tasks.evaluate.scores import Evaluated, Evaluation

    training = TrainResult([], 1, 0.8, "cpu", False)
    result = DistillResult(Path("/s"), training, 1_000, 4_000, [0, 2], transfer_rows=12)
    report = {"parameter_ratio": 0.25, "test_accuracy_retention": 0.97, "cpu_speedup": 3.0}
    scores = {"test": Evaluation("test", 4, 0.75, 0.7, {}, [[2, 0], [1, 1]], ["a", "b"], 10.0)}
    calibration = Calibration(1.5, {"test": 0.2}, {"test": 0.1})
    judged = Judgement(scores, calibration, report, gate_failure)
    evaluated = Evaluated("student", scores, calibration, (Path("/x/reliability.png"),))
    return Distilled(result, judged, evaluated, (0.95, ["test"]), student_privacy(teacher_privacy))


def test_a_private_teachers_student_carries_the_note_and_says_so():
    private = _distilled({contract.PRIVACY_EPSILON: "3", contract.PRIVACY_DELTA: "1e-05"})
    assert private.privacy == {contract.PRIVACY_NOTE: PRIVATE_TEACHER_NOTE}
    assert f"student: {PRIVATE_TEACHER_NOTE}" in private.logged().warnings
    public = _distilled({}, gate_failure="test retention 0.900 < 0.95")
    assert public.privacy == {} and public.logged().warnings == [
        "student will not be registered: test retention 0.900 < 0.95"
    ]
    log = private.logged()
    assert log.params == {"distill.kept_layers": "0,2"} and log.metrics["transfer_rows"] == 12
    assert log.metrics["retention_gate_passed"] == 1.0 and log.metrics["best_val_macro_f1"] == 0.8
    assert log.tags["graftline.gate"] == "passed (floor 0.95 on test)"
    assert log.metrics["test_accuracy"] == 0.75 and log.metrics["test_ece_calibrated"] == 0.1  # the evaluation's
    assert "evaluation/test_report.json" in log.dicts and (Path("/x/reliability.png"), "evaluation") in log.files
    assert log.lines[0] == "student calibration: temperature 1.500; ECE test 0.200 -> 0.100"
    assert (
        log.lines[-1]
        == "student: 1,000 parameters (0.25x the teacher), test accuracy retention 0.970, CPU speedup 3.00x"
    )


def test_the_validation_log_holds_the_report_artifacts_and_the_notices(tmp_path):
    finding = Finding("test", "leakage from train", "9 of 500 rows", "<= 1%", "1.8%", "max_overlap_fraction=0.02")
    notice = Finding("train", "personal data", "2 of 80 rows", "0", "email 2", "validation.pii")
    report = ValidationReport(False, [finding], {}, tmp_path / "docs", {"train_rows": 80.0}, [notice], folder=tmp_path)
    log = report.logged()
    assert (tmp_path / "gx_results.json", "validation") in log.files and (
        tmp_path / "report.md",
        "validation",
    ) in log.files
    assert (tmp_path / "docs", "validation/data_docs") in log.files
    assert log.texts["validation/failures.txt"] == finding.line() and log.tags["validation.success"] == "false"
    assert log.metrics == {"train_rows": 80.0, "failed_expectations": 1}
    assert log.warnings == [f"{notice.line()}; kept: validation.pii is 'warn'"]
    clean = ValidationReport(True, [], folder=tmp_path).logged()
    assert clean.texts["validation/failures.txt"] == "all expectations met\n" and not clean.warnings


def _splits(test_texts: list[str]) -> Splits:
    frame = pd.DataFrame({"text": ["good day", "bad day", "fine", "awful"], "label": ["good", "bad", "good", "bad"]})
    test = pd.DataFrame({"text": test_texts, "label": ["good"] * len(test_texts)})
    return Splits(Split("train", frame, "t.csv"), Split("validation", frame, "t.csv"), Split("test", test, "x.csv"))


def test_the_personal_data_policy_redacts_and_withholds_as_the_run_and_check_share_it():
    text, image = modalities.by_name("text"), modalities.by_name("image")
    splits = _splits(["write to ann@example.com", "fine"])
    assert withholds_evaluation_sets(splits, ValidationParams(pii="fail"), text)
    assert not withholds_evaluation_sets(splits, ValidationParams(pii="warn"), text)
    assert not withholds_evaluation_sets(_splits(["fine"]), ValidationParams(pii="fail"), text)
    redacted, replaced = redact(splits, ValidationParams(pii="redact"), text)
    assert replaced["email"] == 1 and "ann@example.com" not in " ".join(redacted.test.texts)
    assert redact(splits, ValidationParams(pii="fail"), text) == (splits, None)
    # a modality whose rows hold no personal data (images) is left as it is by the policy
    assert redact(splits, ValidationParams(pii="redact"), image) == (splits, None)
    assert not withholds_evaluation_sets(splits, ValidationParams(pii="fail"), image)


def test_the_ingest_log_records_the_data_and_what_the_policy_did(tmp_path):
    splits = _splits(["fine"])
    kept = IngestResult(splits, Counter({"email": 2}), False, tmp_path).logged()
    assert kept.tags == {contract.MODALITY: "text", contract.DATA_DIGEST: splits.digest} and kept.datasets is splits
    assert (tmp_path, contract.EVALUATION_SETS) in kept.files and not kept.warnings
    assert (
        kept.metrics["pii_redacted_email"] == 2
        and kept.metrics["train_rows"] == 4
        and "unlabeled_rows" not in kept.metrics
    )
    assert kept.lines[0] == "personal data redacted: 2 email" and kept.lines[-1].startswith(
        "data: 4 train / 4 validation / 1 test"
    )
    assert kept.dicts == {"labels.json": {"labels": ["bad", "good"]}}
    withheld = IngestResult(splits, Counter(), True, None).logged()
    assert withheld.warnings == [WITHHELD] and not withheld.files
    assert withheld.metrics["pii_redacted"] == 0 and withheld.metrics["unlabeled_rows"] == 0


def test_the_register_log_tags_each_role_and_the_gap_log_reads_typed_fields():
    registered = Registered(
        ("teacher", "student"),
        (
            Registration("m", "3", ("candidate",), False, "registered as candidate"),
            Registration("m-student", "2", ("candidate", "staging"), True, "promoted to staging"),
        ),
    ).logged()
    assert registered.tags["student.promoted"] == "true" and registered.tags["teacher.version"] == "3"
    assert registered.lines[1] == "m-student v2 -> candidate, staging (promoted to staging)"
    before = {"books": DomainGap("books", 10, 1.5, 0.2)}
    after = {"books": DomainGap("books", 10, 0.5, 0.1, confident_share=0.75, label_shift=0.125)}
    gap = GapReport("teacher", before, after, Path("/x/gap.png")).logged()
    assert gap.metrics["gap_before_books_proxy_a_distance"] == 1.5 and gap.metrics["gap_books_label_shift"] == 0.125
    assert gap.lines == [
        "domain gap books: proxy A-distance 1.500 -> 0.500 (backbone -> teacher), confident 75%, label shift 0.125"
    ]


def test_a_fixed_backbone_is_logged_as_fixed_with_its_config():
    log = BackboneChoice("minilm-l6", {"backbone.hidden_size": 384}, "teacher-layers:3").logged()
    assert log.tags == {"graftline.selection": "minilm-l6: fixed by the finetune.backbone parameter"}
    assert log.params == {"backbone": "minilm-l6", "backbone.hidden_size": 384, "student": "teacher-layers:3"}


def test_record_writes_a_step_log_to_a_real_store(mlflow_store, tmp_path, unique_name):
    import mlflow
    from mlflow.tracking import MlflowClient

    picture = tmp_path / "a.png"
    picture.write_bytes(b"png")
    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "test.parquet").write_bytes(b"rows")
    log = tracking.StepLog(
        params={"export": {"opset": 17, "api_token": "hidden"}},
        metrics={"accuracy": 0.5},
        tags={"graftline.export": "parity passed"},
        files=[(picture, "export"), (tmp_path / "sets", "evaluation_sets")],
        dicts={"labels.json": {"labels": ["a"]}},
        texts={"validation/failures.txt": "none\n"},
        tables={"export/latency.json": pd.DataFrame({"name": ["x"], "ms": [1.0]})},
    ) + tracking.StepLog(metrics={"rows": 3})
    tracking.configure(unique_name)
    with tracking.lifecycle_run("parent") as parent, tracking.step_run("export", parent.info.run_id) as run:
        tracking.record(log)
    stored = MlflowClient().get_run(run.info.run_id)
    assert stored.data.params == {"export.opset": "17"}  # the secret left out, the group dotted
    assert stored.data.metrics == {"accuracy": 0.5, "rows": 3.0}
    assert stored.data.tags["graftline.export"] == "parity passed"
    paths = {
        f.path
        for folder in ("export", "evaluation_sets", "validation")
        for f in MlflowClient().list_artifacts(run.info.run_id, folder)
    }
    assert {"export/a.png", "export/latency.json", "evaluation_sets/test.parquet", "validation/failures.txt"} <= paths
    assert mlflow.artifacts.load_dict(f"{stored.info.artifact_uri}/labels.json") == {"labels": ["a"]}
