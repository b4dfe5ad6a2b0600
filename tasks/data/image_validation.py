"""Data validation of image sets with Great Expectations, on each image's metadata (images.profile).

The same report and the same `fail | warn` modes as text validation (validate.py: `Finding`,
`ValidationReport`); the checks are the ones that matter for pictures:

    every file decodes                  decodes in {True}
    width and height within bounds      validation.min_image_side .. max_image_side pixels
    channels                            1 (grey), 3 (RGB) or 4 (RGBA)
    duplicates within a split           exact (same bytes) or near (difference hash within
                                        validation.near_duplicate_bits bits): at most max_duplicate_fraction
    leakage                             a test or evaluation image that is a (near) copy of a training
                                        image: at most max_overlap_fraction
    labels                              evaluation labels inside the training labels
    classes (train)                     min_examples_per_class, max_class_ratio, one label vocabulary

A finding names the files (the report quotes a few paths per finding, never pixels).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from graftline.tasks.data import images
from graftline.tasks.data.validate import EXAMPLES, Finding, ValidationReport, _custom_expectations
from graftline.tasks.settings import ValidationParams

CHANNELS = [1, 3, 4]
SHARES = {  # column -> (the check's name, the parameter bounding the share of rows it flags)
    "duplicate": ("duplicate images", "max_duplicate_fraction"),
    "seen_in_train": ("leakage from train", "max_overlap_fraction"),
}


def validate_images(splits: dict[str, pd.DataFrame], t: ValidationParams, out_dir: Path) -> ValidationReport:
    """Validate image splits (`train` first; frames from images.read_images); never raises on bad
    data: the report says what failed."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    source = context.data_sources.add_pandas("graftline-images")
    profiled = {name: _profiled(frame, t) for name, frame in splits.items()}
    train = profiled["train"]
    labels = sorted(train["label"].dropna().unique())
    findings, results, statistics = [], {}, {}
    for name, frame in profiled.items():
        if name != "train":
            seen = images.near_duplicate_of(frame["dhash"].tolist(), train["dhash"].tolist(), t.near_duplicate_bits)
            exact = frame["sha256"].isin(set(train["sha256"]))
            frame["seen_in_train"] = exact | (pd.Series(seen, index=frame.index) >= 0)
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=_expectations(name, labels, t)))
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        result = definition.run(batch_parameters={"dataframe": frame.drop(columns=["dhash"])})
        results[name] = result.to_json_dict()
        findings += [_finding(name, frame, r, t) for r in result.results if not r.success]
        statistics[f"{name}_rows"] = float(len(frame))
        statistics[f"{name}_undecodable"] = float((~frame["decodes"]).sum())
        statistics[f"{name}_duplicate_share"] = float(frame["duplicate"].mean())
        if name != "train":
            statistics[f"{name}_overlap_with_train"] = float(frame["seen_in_train"].mean())
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gx_results.json").write_text(json.dumps(results, indent=1, default=str))
    report = ValidationReport(not findings, findings, results, None, statistics, folder=out_dir)
    (out_dir / "report.md").write_text(report.markdown())
    return report


def _profiled(frame: pd.DataFrame, t: ValidationParams) -> pd.DataFrame:
    meta = images.profile(frame["image"].tolist())
    out = pd.concat([frame.reset_index(drop=True), meta], axis=1)
    near = images.near_duplicate_of(out["dhash"].tolist(), max_distance=t.near_duplicate_bits)
    out["duplicate"] = out["sha256"].duplicated() | (pd.Series(near) >= 0)
    return out


def _expectations(name: str, labels: list[str], t: ValidationParams) -> list:
    import great_expectations.expectations as gxe

    rules = [
        gxe.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True]),
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=t.min_image_side, max_value=t.max_image_side),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=t.min_image_side, max_value=t.max_image_side),
        gxe.ExpectColumnValuesToBeInSet(column="channels", value_set=CHANNELS),
        gxe.ExpectColumnValuesToBeInSet(column="duplicate", value_set=[False], mostly=1 - t.max_duplicate_fraction),
        gxe.ExpectColumnValuesToNotBeNull(column="label"),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=labels),
    ]
    if name == "train":
        balance, vocabulary, _ = _custom_expectations()
        rules.append(balance(column="label", min_count=t.min_examples_per_class, max_ratio=t.max_class_ratio))
        rules.append(vocabulary(column="label"))
    elif name != "validation":
        rules.append(
            gxe.ExpectColumnValuesToBeInSet(
                column="seen_in_train", value_set=[False], mostly=1 - t.max_overlap_fraction
            )
        )
    return rules


def _finding(split: str, frame: pd.DataFrame, result, t: ValidationParams) -> Finding:
    """A failed GX result in words, with a few of the files it is about."""
    config, r = result.expectation_config, result.result or {}
    kind, column = config.type.removeprefix("expect_"), config.kwargs.get("column")
    total = len(frame)
    count = r.get("unexpected_count")
    failing = f"{count} of {total} images" if count is not None else "-"
    share = f"{count / total:.1%}" if count is not None and total else "-"
    bad = _failing_rows(frame, kind, column, t)
    files = tuple(f"row {row}: {image}" + (f" ({error})" if error else "") for row, image, error in bad[:EXAMPLES])
    make = lambda check, threshold, observed, relax: Finding(  # noqa: E731
        split, check, failing, threshold, observed, relax, files
    )
    named = _names(bad)  # the files themselves: a path names a picture, it does not show it
    if column == "decodes":
        return make("undecodable image", "none", named, "remove or replace those files")
    if column in ("width", "height"):
        observed = f"{int(frame[column].min())}..{int(frame[column].max())} px"
        smallest, largest = int(frame[column].min()), int(frame[column].max())
        relax = (
            f"validation.min_image_side={smallest}"
            if smallest < t.min_image_side
            else f"validation.max_image_side={largest}"
        )
        bounds = f"{t.min_image_side}..{t.max_image_side} px"
        return make(f"{column} out of bounds", bounds, f"{observed}: {named}", relax)
    if column == "channels":
        return make("unsupported channels", "1, 3 or 4", named, "convert those images to RGB")
    if column in SHARES:  # a share of the split: the parameter, and a value that would pass
        check, parameter = SHARES[column]
        passing = min(1.0, (count or 0) / max(total, 1) + 0.01)
        return make(check, f"<= {getattr(t, parameter):.0%}", share, f"validation.{parameter}={passing:.2f}")
    if kind == "column_class_counts_to_be_balanced":
        details = r.get("details") or {}
        observed = f"smallest {details.get('smallest')}, ratio {details.get('ratio')}"
        threshold = f">= {t.min_examples_per_class} per class, ratio <= {t.max_class_ratio}"
        return Finding(split, "class balance", "-", threshold, observed, "add images to the small classes")
    if kind == "column_labels_to_be_one_vocabulary":
        return Finding(split, "label vocabulary", "-", "one vocabulary", str(r.get("details")), "rename the labels")
    if kind == "column_values_to_be_in_set" and column == "label":
        unknown = sorted(set(frame["label"].dropna()) - set(config.kwargs.get("value_set") or []))
        return make("unknown labels", "training labels", ", ".join(map(repr, unknown)), "fix or remove those images")
    return make(kind.replace("_", " "), "-", failing, "see the report")


def _names(bad: list[tuple], shown: int = 3) -> str:
    """The first failing files by name, and how many more."""
    names = [Path(str(image).split("?")[0]).name for _, image, _ in bad[:shown]]
    return ", ".join(names) + (f" (+{len(bad) - shown} more)" if len(bad) > shown else "")


def _failing_rows(frame: pd.DataFrame, kind: str, column: str | None, t: ValidationParams) -> list[tuple]:
    if column == "decodes":
        bad = frame[~frame["decodes"]]
    elif column in ("width", "height"):
        size = frame[column].astype("float")  # undecodable images have none: not out of bounds, just broken
        bad = frame[(size < t.min_image_side) | (size > t.max_image_side)]
    elif column == "channels":
        bad = frame[frame["channels"].notna() & ~frame["channels"].isin(CHANNELS)]
    elif column in ("duplicate", "seen_in_train"):
        bad = frame[frame[column]]
    else:
        bad = frame.iloc[0:0]
    return list(zip(bad["row"], bad["image"], bad["error"], strict=True))
