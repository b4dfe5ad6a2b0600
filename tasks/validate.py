"""Data validation with Great Expectations 1.x, before anything is trained.

Every split gets a suite: required columns, no null or blank text, text-length bounds, duplicate
rate, labels inside the training label set. The training split also gets a class suite (minimum
examples per class, largest/smallest class ratio); test and extra evaluation sets get a leakage
check (share of their texts that also occur in train). Results and Data Docs HTML are written to
a folder so the caller can log them; `ValidationReport.failures` lists every failed expectation
with its counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from graftline.tasks.data import Split, Splits
from graftline.tasks.settings import ValidationParams


@dataclass
class ValidationReport:
    success: bool
    failures: list[str]
    results: dict[str, dict] = field(default_factory=dict)  # split name -> GX result as JSON
    docs_dir: Path | None = None
    statistics: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        return "; ".join(self.failures) if self.failures else "all expectations met"


def validate_splits(splits: Splits, thresholds: ValidationParams, out_dir: Path) -> ValidationReport:
    """Run the suites over every split; never raises on bad data, the report says what failed."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    source = context.data_sources.add_pandas("graftline")
    train_texts = set(splits.train.frame["text"].dropna())
    labels = splits.labels

    failures, results, statistics = [], {}, {}
    for split in [splits.train, splits.validation, *splits.evaluation_sets().values()]:
        frame = split.frame.assign(seen_in_train=split.frame["text"].isin(train_texts))
        suite = context.suites.add(
            gx.ExpectationSuite(name=split.name, expectations=_expectations(split, labels, thresholds))
        )
        batch = source.add_dataframe_asset(split.name).add_batch_definition_whole_dataframe("all")
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=split.name, data=batch, suite=suite)
        )
        result = definition.run(batch_parameters={"dataframe": frame})
        results[split.name] = result.to_json_dict()
        failures += [f"{split.name}: {_describe(r)}" for r in result.results if not r.success]
        statistics[f"{split.name}_rows"] = len(frame)
        if split.name != "train":
            statistics[f"{split.name}_overlap_with_train"] = float(frame["seen_in_train"].mean())

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gx_results.json").write_text(json.dumps(results, indent=1, default=str))
    docs_dir = _build_docs(context, out_dir / "data_docs")
    return ValidationReport(not failures, failures, results, docs_dir, statistics)


def _expectations(split: Split, labels: list[str], t: ValidationParams) -> list:
    import great_expectations.expectations as gxe

    rules = [
        gxe.ExpectColumnToExist(column="text"),
        gxe.ExpectColumnToExist(column="label"),
        gxe.ExpectColumnValuesToNotBeNull(column="text"),
        gxe.ExpectColumnValuesToNotBeNull(column="label"),
        gxe.ExpectColumnValuesToNotMatchRegex(column="text", regex=r"^\s*$"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=t.min_text_chars, max_value=t.max_text_chars),
        gxe.ExpectColumnProportionOfUniqueValuesToBeBetween(column="text", min_value=1 - t.max_duplicate_fraction),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=labels),
    ]
    if split.name == "train":
        rules.append(
            _class_balance_expectation()(
                column="label", min_count=t.min_examples_per_class, max_ratio=t.max_class_ratio
            )
        )
    elif split.name != "validation":
        # Leakage: a test text that is also a training text measures memory, not transfer.
        rules.append(
            gxe.ExpectColumnValuesToBeInSet(
                column="seen_in_train", value_set=[False], mostly=1 - t.max_overlap_fraction
            )
        )
    return rules


_BALANCE = None


def _class_balance_expectation():
    """GX has no class-balance expectation; this one reads `column.value_counts` (defined once)."""
    global _BALANCE
    if _BALANCE is None:
        from great_expectations.expectations.expectation import ColumnAggregateExpectation

        class ExpectColumnClassCountsToBeBalanced(ColumnAggregateExpectation):
            """Every class has at least `min_count` rows and largest/smallest is at most `max_ratio`."""

            min_count: int = 1
            max_ratio: float = 10.0
            metric_dependencies = ("column.value_counts",)
            success_keys = ("min_count", "max_ratio")

            def _validate(self, metrics, runtime_configuration=None, execution_engine=None):
                counts = metrics["column.value_counts"]
                smallest, largest = int(counts.min()), int(counts.max())
                ratio = largest / max(smallest, 1)
                return {
                    "success": smallest >= self.min_count and ratio <= self.max_ratio,
                    "result": {
                        "observed_value": {str(k): int(v) for k, v in counts.items()},
                        "details": {"smallest": smallest, "largest": largest, "ratio": round(ratio, 3)},
                    },
                }

        _BALANCE = ExpectColumnClassCountsToBeBalanced
    return _BALANCE


def _describe(result) -> str:
    """One clause per failed expectation: what was expected and what was counted."""
    config, r = result.expectation_config, result.result or {}
    kwargs = config.kwargs
    kind = config.type.removeprefix("expect_")
    if "unexpected_count" in r and r.get("unexpected_count") is not None:
        examples = ", ".join(repr(v)[:40] for v in (r.get("partial_unexpected_list") or [])[:3])
        detail = f"{r['unexpected_count']} of {r.get('element_count')} rows fail"
        return f"{kind}({kwargs.get('column')}) {detail}" + (f", e.g. {examples}" if examples else "")
    observed = r.get("observed_value")
    bounds = {k: kwargs[k] for k in ("min_value", "max_value", "min_count", "max_ratio") if k in kwargs}
    details = r.get("details")
    return (
        f"{kind}({kwargs.get('column')}) observed {observed}"
        + (f" {details}" if details else "")
        + (f", bounds {bounds}" if bounds else "")
    )


def _build_docs(context, docs_dir: Path) -> Path | None:
    """Build the Data Docs site and copy it where the caller expects it (ephemeral: a temp folder)."""
    import shutil
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    sites = context.build_data_docs()
    for url in sites.values():
        index = Path(url2pathname(urlparse(url).path))
        if index.exists():
            shutil.copytree(index.parent, docs_dir, dirs_exist_ok=True)
            return docs_dir
    return None
