"""The data's way in, shared by the lifecycle's ingest and validate steps and by `graftline check`.

- `ingest`: read every split (and the unlabeled transfer texts), apply the personal-data policy, and
  keep the evaluation sets in the run for later promotions (registry/evaluation_sets.py);
- the personal-data policy (`validation.pii`): `redact` replaces personal data by placeholders before
  anything is logged, hashed or trained on; under `fail`, evaluation sets holding personal data are
  not stored (validation then stops the run and says where);
The validation suite is the modality's (tasks/modality/: `modality.validate`), and so is the answer
to whether rows may hold personal data at all (images do not: the policy leaves them as they are).
Kept evaluation sets are the registry's input, so this module sits above the
registry in tests/test_layout.py's layers although it lives with the data it reads.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from graftline.tasks.data import pii
from graftline.tasks.data.splits import Splits, read_texts
from graftline.tasks.registry import contract, evaluation_sets
from graftline.tasks.registry.tracking import StepLog
from graftline.tasks.settings import DataParams, ValidationParams

WITHHELD = "evaluation sets not stored: they hold personal data (see validation)"


@dataclass(frozen=True)
class IngestResult:
    """The splits as the lifecycle trains on them, and what ingesting them did."""

    splits: Splits
    redacted: Counter | None  # personal data replaced, per kind; None: no redaction ran
    unlabeled_read: bool  # unlabeled transfer files were given
    kept: Path | None  # the evaluation sets kept for promotions; None: withheld (personal data)

    def logged(self) -> StepLog:
        splits = self.splits
        log = StepLog(
            params={f"data.eval_set.{name}": split.source for name, split in splits.extra.items()},
            tags={contract.MODALITY: splits.modality, contract.DATA_DIGEST: splits.digest},
            dicts={"labels.json": {"labels": splits.labels}},
            datasets=splits,
        )
        if self.redacted is not None:
            log.metrics |= {f"pii_redacted_{kind}": n for kind, n in self.redacted.items()} or {"pii_redacted": 0}
            log.lines.append(redaction_line(self.redacted))
        if self.unlabeled_read:
            log.metrics["unlabeled_rows"] = len(splits.unlabeled)
        log.metrics |= splits.row_counts()
        if self.kept is None:
            log.warnings.append(WITHHELD)
        else:
            log.files.append((self.kept, contract.EVALUATION_SETS))
        log.lines.append(
            f"data: {len(splits.train.frame)} train / {len(splits.validation.frame)} validation / "
            f"{len(splits.test.frame)} test rows, labels {splits.labels}, digest {splits.digest}"
        )
        return log


def ingest(
    data: DataParams,
    unlabeled_paths: list[str],
    unlabeled_text_column: str,
    validation: ValidationParams,
    copy_data: bool,
    folder: Path,
    modality,
) -> IngestResult:
    """Read the splits and the unlabeled transfer texts (so a bad path fails before training), redact
    them under `validation.pii: redact`, and keep the evaluation sets in `folder` (copied, or
    referenced by URI and digest: `copy_data`) unless they hold personal data under `fail`. `modality`
    (tasks/modality/) reads the splits."""
    unlabeled = [
        text for path in unlabeled_paths for text in read_texts(path, unlabeled_text_column, encoding=data.encoding)
    ]
    splits, redacted = redact(modality.read_splits(data, unlabeled), validation, modality)
    kept = None
    if not withholds_evaluation_sets(splits, validation, modality):
        folder.mkdir(parents=True, exist_ok=True)
        evaluation_sets.keep(splits, data, validation, copy_data, folder)
        kept = folder
    return IngestResult(splits, redacted, bool(unlabeled_paths), kept)


def redact(splits: Splits, validation: ValidationParams, modality) -> tuple[Splits, Counter | None]:
    """Under `validation.pii: redact`, the splits with personal data replaced by placeholders and the
    count per kind; otherwise (or when the `modality`'s rows hold no personal data to scan) the splits
    as they are and None."""
    if validation.pii != "redact" or not modality.scans_personal_data:
        return splits, None
    return pii.redact_splits(splits, pii.Scanner(validation.pii_patterns))


def redaction_line(replaced: Counter) -> str:
    found = ", ".join(f"{n} {kind}" for kind, n in replaced.most_common()) or "none found"
    return f"personal data redacted: {found}"


def withholds_evaluation_sets(splits: Splits, validation: ValidationParams, modality) -> bool:
    """Under `validation.pii: fail`, evaluation sets holding personal data stay out of the store:
    validation will stop the run and say where, and the raw rows must not reach the store first."""
    if validation.pii != "fail" or not modality.scans_personal_data:
        return False
    scanner = pii.Scanner(validation.pii_patterns)
    return any(scanner.find(text) for split in splits.evaluation_sets().values() for text in split.texts)
