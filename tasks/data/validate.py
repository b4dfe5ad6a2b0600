"""Data validation with Great Expectations 1.x, before anything is trained.

Every labeled split gets a suite: required columns, no null or blank text, text-length bounds,
duplicate rate, labels inside the training label set (a target set of unlabeled texts gets the text
checks only). The training split also gets a class suite (minimum examples per class,
largest/smallest class ratio, one label vocabulary); test and extra evaluation sets get a leakage
check (share of their texts that also occur in train). Results and Data Docs
HTML are written to a folder so the caller can log them.

Personal data (`validation.pii`, tasks/data/pii.py): with `fail` or `warn`, every split's texts are
scanned and a custom expectation holds each split to none; its result names kinds and counts, never
the text, and the report quotes such rows redacted. Under `warn` its finding is a notice: recorded,
not a failure. Under `redact` the texts were redacted before validation (by the ingest step).

A failed expectation becomes a `Finding`: split, check, failing rows, threshold, observed value and
the parameter that relaxes it (with the value that would have passed). `ValidationReport.table()`
is the short table the command line prints under its one-line error; `markdown()` is the report
file, the only place row text appears (it may be personal data), as a few examples per finding.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from graftline.tasks.data.pii import Scanner, counts_of
from graftline.tasks.data.splits import Split, Splits, text_hashes
from graftline.tasks.errors import ValidationFailed
from graftline.tasks.registry.tracking import StepLog
from graftline.tasks.settings import ValidationParams

EXAMPLES = 3  # rows quoted per finding in the report file
PERSONAL_DATA = "personal data"  # the check's name in findings
RELAX_HINT = "relax a check with --set <parameter>=<value>, or record and go on with --validation-mode warn"


@dataclass(frozen=True)
class Finding:
    """One failed expectation, in words a person can act on."""

    split: str
    check: str  # e.g. "leakage from train"
    failing: str  # e.g. "9 of 500 rows"
    threshold: str  # e.g. "<= 1%"
    observed: str  # e.g. "1.8%"
    relax: str  # the parameter (and a value that passes), or what to change in the data
    examples: tuple[str, ...] = ()  # "row 12: <text>": only for the report file

    def line(self) -> str:
        return f"{self.split}: {self.check}: {self.failing} (threshold {self.threshold}, observed {self.observed})"


@dataclass
class ValidationReport:
    success: bool
    findings: list[Finding]
    results: dict[str, dict] = field(default_factory=dict)  # split name -> GX result as JSON
    docs_dir: Path | None = None
    statistics: dict[str, float] = field(default_factory=dict)
    notices: list[Finding] = field(default_factory=list)  # recorded, not failures (validation.pii=warn)
    folder: Path | None = None  # where gx_results.json and report.md were written

    @property
    def failures(self) -> list[str]:
        return [f.line() for f in self.findings]

    def summary(self) -> str:
        """One line, without row text: what the command line and the run log print."""
        if not self.findings:
            return "all expectations met"
        splits = len({f.split for f in self.findings})
        return (
            f"data validation failed: {_count(len(self.findings), 'expectation')} "
            f"on {_count(splits, 'split')}; see the report"
        )

    def table(self) -> str:
        """The findings as an aligned plain-text table (no row text)."""
        header = ("split", "check", "failing rows", "threshold", "observed", "relax with")
        rows = [header] + [(f.split, f.check, f.failing, f.threshold, f.observed, f.relax) for f in self.findings]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)

    def logged(self) -> StepLog:
        """The validate step's run: statistics, the results and report files, the failures, the Data Docs."""
        files = [(self.folder / name, "validation") for name in ("gx_results.json", "report.md")] if self.folder else []
        if self.docs_dir:
            files.append((self.docs_dir, "validation/data_docs"))
        return StepLog(
            metrics={**self.statistics, "failed_expectations": len(self.findings)},
            tags={"validation.success": str(self.success).lower()},
            files=files,
            texts={"validation/failures.txt": "\n".join(self.failures) or "all expectations met\n"},
            warnings=[f"{notice.line()}; kept: validation.pii is 'warn'" for notice in self.notices],
        )

    def error(self, report: str, docs: str | None) -> ValidationFailed:
        """The error a failed validation raises: the summary line, then the table, where the report
        file (`report`) and the Data Docs page (`docs`) are, and how to relax a check."""
        where = f"report: {report}" + (f"\nData Docs: {docs}" if docs else "")
        return ValidationFailed(self.summary(), f"{self.table()}\n{where}\n{RELAX_HINT}")

    def markdown(self, examples: bool = True) -> str:
        """The report file: the table, then (with `examples`) a few example rows per finding."""
        lines = ["# Data validation", "", self.summary(), ""]
        if self.findings:
            lines += ["| split | check | failing rows | threshold | observed | relax with |", "|---" * 6 + "|"]
            lines += [
                f"| {f.split} | {f.check} | {f.failing} | {f.threshold} | {f.observed} | `{f.relax}` |"
                for f in self.findings
            ]
            for f in (f for f in self.findings if f.examples and examples):
                lines += ["", f"## {f.split}: {f.check}", ""] + [f"- {_markdown_escape(e)}" for e in f.examples]
        for f in self.notices:  # recorded, not failed (validation.pii=warn)
            lines += ["", f"Notice: {f.line()}; kept as it is (validation.pii=warn)."]
        return "\n".join(lines) + "\n"


def validate_splits(splits: Splits, thresholds: ValidationParams, out_dir: Path) -> ValidationReport:
    """Run the suites over every split; never raises on bad data, the report says what failed."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    source = context.data_sources.add_pandas("graftline")
    # Leakage is read from 8-byte text fingerprints: a set of a million training texts as Python
    # strings, looked up per row, costs more memory than the texts themselves (+1.2 GB at a million).
    train_ids = _present_hashes(splits.train.frame["text"])
    labels = splits.labels

    scanner = Scanner(thresholds.pii_patterns) if thresholds.pii in ("fail", "warn") else None
    findings, notices, results, statistics = [], [], {}, {}
    labeled = [splits.train, splits.validation, *splits.evaluation_sets().values()]
    targets = [Split(f"target_{name}", s.frame, s.source) for name, s in splits.targets.items()]
    target_names = {t.name for t in targets}
    for split in labeled + targets:
        is_target = split.name in target_names
        texts = split.frame["text"]
        seen = texts.notna() if split is splits.train else pd.Series(_seen(texts, train_ids), index=texts.index)
        frame = split.frame.assign(seen_in_train=seen)
        rules = _target_expectations(thresholds) if is_target else _expectations(split, labels, thresholds)
        if scanner is not None:
            frame["personal_data"] = scanner.kinds_per_row(texts)
            rules.append(_custom_expectations()[2](column="personal_data"))
            for kind, rows in counts_of(frame["personal_data"]).items():
                statistics[f"{split.name}_pii_{kind}_rows"] = float(rows)
        suite = context.suites.add(gx.ExpectationSuite(name=split.name, expectations=rules))
        batch = source.add_dataframe_asset(split.name).add_batch_definition_whole_dataframe("all")
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=split.name, data=batch, suite=suite)
        )
        result = definition.run(batch_parameters={"dataframe": frame})
        results[split.name] = result.to_json_dict()
        for r in result.results:
            if not r.success:
                finding = _finding(split.name, frame, r, thresholds, scanner)
                is_notice = finding.check == PERSONAL_DATA and thresholds.pii == "warn"
                (notices if is_notice else findings).append(finding)
        lengths = frame["text"].str.len().dropna()
        statistics[f"{split.name}_rows"] = len(frame)
        statistics[f"{split.name}_text_chars_p95"] = float(lengths.quantile(0.95)) if len(lengths) else 0.0
        if split.name != "train" and not is_target:
            statistics[f"{split.name}_overlap_with_train"] = float(frame["seen_in_train"].mean())

    if scanner is not None:  # rows that any check quotes (a repeated text, a too long one) are quoted redacted
        findings = [replace(f, examples=tuple(scanner.redact(e)[0] for e in f.examples)) for f in findings]
        results = _redacted(results, scanner)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gx_results.json").write_text(json.dumps(results, indent=1, default=str))
    docs_dir = _build_docs(context, out_dir / "data_docs")
    report = ValidationReport(not findings, findings, results, docs_dir, statistics, notices, folder=out_dir)
    (out_dir / "report.md").write_text(report.markdown())
    return report


def _present_hashes(texts: pd.Series) -> np.ndarray:
    """The fingerprints (`text_hashes`) of the texts that are there, sorted."""
    return np.sort(text_hashes(texts)[texts.notna().to_numpy()])


def _seen(texts: pd.Series, ids: np.ndarray) -> np.ndarray:
    """Per row: the text is there and its fingerprint is among `ids` (sorted)."""
    hashes = text_hashes(texts)
    at = np.minimum(np.searchsorted(ids, hashes), max(len(ids) - 1, 0))
    return texts.notna().to_numpy() & (ids[at] == hashes if len(ids) else False)


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
        balance, vocabulary, _ = _custom_expectations()
        rules.append(balance(column="label", min_count=t.min_examples_per_class, max_ratio=t.max_class_ratio))
        rules.append(vocabulary(column="label"))
    elif split.name != "validation":
        # Leakage: a test text that is also a training text measures memory, not transfer.
        rules.append(
            gxe.ExpectColumnValuesToBeInSet(
                column="seen_in_train", value_set=[False], mostly=1 - t.max_overlap_fraction
            )
        )
    return rules


def _target_expectations(t: ValidationParams) -> list:
    """Unlabeled target texts: present, not blank, within the length bounds."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnToExist(column="text"),
        gxe.ExpectColumnValuesToNotBeNull(column="text"),
        gxe.ExpectColumnValuesToNotMatchRegex(column="text", regex=r"^\s*$"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=t.min_text_chars, max_value=t.max_text_chars),
    ]


def vocabulary_faults(labels: list[str]) -> dict[str, list[str]]:
    """Signs that a label column mixes two vocabularies: class names that are numbers next to class
    names that are words (`0`/`1`/`2` beside `positive`/`negative`), or names that differ only in
    case (`Positive`, `positive`). Empty when the labels read as one vocabulary."""
    numeric = [x for x in labels if _is_number(x)]
    words = [x for x in labels if not _is_number(x)]
    faults: dict[str, list[str]] = {}
    if numeric and words:
        faults["numbers"], faults["words"] = numeric, words
    folded: dict[str, list[str]] = {}
    for label in labels:
        folded.setdefault(label.casefold(), []).append(label)
    same = [name for names in folded.values() if len(names) > 1 for name in names]
    if same:
        faults["same but for case"] = same
    return faults


_CUSTOM = None


def _custom_expectations():
    """GX has no class-balance or label-vocabulary expectation; these read `column.value_counts`
    (classes are defined once per process: GX registers expectation types globally)."""
    global _CUSTOM
    if _CUSTOM is None:
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

        class ExpectColumnLabelsToBeOneVocabulary(ColumnAggregateExpectation):
            """The class names read as one vocabulary (see `vocabulary_faults`)."""

            metric_dependencies = ("column.value_counts",)

            def _validate(self, metrics, runtime_configuration=None, execution_engine=None):
                labels = sorted(str(k) for k in metrics["column.value_counts"].index)
                faults = vocabulary_faults(labels)
                return {"success": not faults, "result": {"observed_value": labels, "details": faults}}

        class ExpectColumnToHoldNoPersonalData(ColumnAggregateExpectation):
            """No row holds personal data. The column is tasks.pii's kinds per row ("email,phone"),
            so the result carries kinds and counts, never the text itself."""

            metric_dependencies = ("column.value_counts",)

            def _validate(self, metrics, runtime_configuration=None, execution_engine=None):
                per_value = metrics["column.value_counts"]
                rows = Counter()
                for value, count in per_value.items():
                    for kind in filter(None, str(value).split(",")):
                        rows[kind] += int(count)
                flagged = int(sum(count for value, count in per_value.items() if value))
                return {
                    "success": flagged == 0,
                    "result": {"observed_value": dict(rows), "details": {"rows_with_personal_data": flagged}},
                }

        _CUSTOM = (
            ExpectColumnClassCountsToBeBalanced,
            ExpectColumnLabelsToBeOneVocabulary,
            ExpectColumnToHoldNoPersonalData,
        )
    return _CUSTOM


def _finding(split: str, frame: pd.DataFrame, result, t: ValidationParams, scanner: Scanner | None) -> Finding:
    """A failed GX result in words: which check, how many rows, against what, and how to relax it."""
    config, r = result.expectation_config, result.result or {}
    kind, column = config.type.removeprefix("expect_"), config.kwargs.get("column")
    total = len(frame)
    failing = f"{r['unexpected_count']} of {total} rows" if r.get("unexpected_count") is not None else "-"
    where = frame.index.isin(r.get("partial_unexpected_index_list") or [])
    examples = _examples(frame[where])
    make = lambda check, threshold, observed, relax, examples=(): Finding(  # noqa: E731
        split, check, failing, threshold, observed, relax, tuple(examples)
    )
    texts = frame["text"].dropna()
    if kind == "column_values_to_not_be_null":
        return make(f"missing {column}", "none", failing, "fill or remove those rows")
    if kind == "column_values_to_not_match_regex":
        return make("blank text", "none", failing, "fill or remove those rows", examples)
    if kind == "column_value_lengths_to_be_between":
        lengths = texts.str.len()
        if lengths.max() > t.max_text_chars:
            longest = frame.loc[[lengths.idxmax()]]
            return make(
                "text length",
                f"<= {t.max_text_chars:,} chars",
                f"longest {int(lengths.max()):,} chars (row {_row(longest)})",
                f"validation.max_text_chars={int(lengths.max())}",
            )
        return make(
            "text length",
            f">= {t.min_text_chars:,} chars",
            f"shortest {int(lengths.min()):,} chars",
            f"validation.min_text_chars={int(lengths.min())}",
            examples,
        )
    if kind == "column_proportion_of_unique_values_to_be_between":
        repeated = 1 - texts.nunique() / max(len(texts), 1)
        copies = frame[frame["text"].duplicated(keep=False) & frame["text"].notna()]
        return Finding(
            split,
            "repeated texts",
            f"{int(texts.duplicated().sum())} of {total} rows",
            f"<= {_percent(t.max_duplicate_fraction)}",
            _percent(repeated),
            f"validation.max_duplicate_fraction={_ceil(repeated)}",
            _examples(copies),
        )
    if kind == "column_values_to_be_in_set" and column == "seen_in_train":
        share = float(frame["seen_in_train"].mean())
        leaked = int(frame["seen_in_train"].sum())
        return Finding(
            split,
            "leakage: texts also in train",
            f"{leaked} of {total} rows",
            f"<= {_percent(t.max_overlap_fraction)}",
            _percent(share),
            f"validation.max_overlap_fraction={_ceil(share)} (or remove them from one split)",
            _examples(frame[frame["seen_in_train"]]),
        )
    if kind == "column_values_to_be_in_set":
        unknown = sorted({str(v) for v in r.get("partial_unexpected_list") or []})
        return make("labels outside the training labels", "none", ", ".join(unknown), "relabel or remove those rows")
    if kind == "column_class_counts_to_be_balanced":
        counts = frame["label"].value_counts()
        smallest, ratio = counts.idxmin(), counts.max() / counts.min()
        too_few, too_skewed = int(counts.min() < t.min_examples_per_class), int(ratio > t.max_class_ratio)
        relax = [f"validation.min_examples_per_class={int(counts.min())}"] * too_few
        relax += [f"validation.max_class_ratio={math.ceil(ratio)}"] * too_skewed
        return make(
            "class balance",
            f">= {t.min_examples_per_class} rows per class, largest/smallest <= {t.max_class_ratio:g}",
            f"{smallest!r} has {int(counts.min())} rows; largest/smallest {ratio:.1f}",
            " and ".join(relax),
        )
    if kind == "column_to_hold_no_personal_data":
        flagged = frame[frame["personal_data"] != ""]
        counts = counts_of(flagged["personal_data"])
        redacted = flagged.assign(text=[scanner.redact(t)[0] for t in flagged["text"].fillna("")])
        return Finding(
            split,
            PERSONAL_DATA,
            f"{len(flagged)} of {total} rows",
            "none",
            ", ".join(f"{n} {kind}" for kind, n in counts.most_common()),
            "validation.pii=redact (placeholders before anything reads the texts), or pii=warn to keep them",
            _examples(redacted),  # the report quotes them redacted: it is stored with the run
        )
    if kind == "column_labels_to_be_one_vocabulary":
        faults = r.get("details") or {}
        observed = "; ".join(f"{name} {', '.join(map(repr, labels))}" for name, labels in faults.items())
        return make("label vocabulary", "one vocabulary", observed, "map the labels to one set of names")
    observed = r.get("observed_value")
    return make(kind.replace("_", " "), str(config.kwargs), str(observed), "see the report")


def _redacted(value, scanner: Scanner):
    """A GX result with personal data in every string replaced (its lists of unexpected values
    quote rows)."""
    if isinstance(value, str):
        return scanner.redact(value)[0]
    if isinstance(value, dict):
        return {k: _redacted(v, scanner) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v, scanner) for v in value]
    return value


def _examples(rows: pd.DataFrame) -> list[str]:
    return [f"row {_row(rows.loc[[i]])}: {_clip(rows.at[i, 'text'])}" for i in rows.index[:EXAMPLES]]


def _row(one: pd.DataFrame) -> int:
    """The file row of a one-row frame (its position when the frame was not read from a file)."""
    return int(one["row"].iloc[0]) if "row" in one else int(one.index[0]) + 1


def _clip(text, width: int = 160) -> str:
    text = "<missing>" if pd.isna(text) else " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _markdown_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;")


def _percent(share: float) -> str:
    return f"{share * 100:.1f}%".replace(".0%", "%")


def _ceil(share: float) -> float:
    """The two-decimal threshold at or above `share` (0.018 -> 0.02)."""
    return math.ceil(round(share * 100, 6)) / 100


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _is_number(label: str) -> bool:
    try:
        float(label)
        return True
    except ValueError:
        return False


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
