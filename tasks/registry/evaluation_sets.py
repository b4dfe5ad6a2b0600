"""The evaluation sets a version keeps for its later promotions, which score it on them again.

Two ways to keep them, chosen by `tracking.copy_data`:

- copied (default): each set as `<name>.parquet` in the ingest run's `evaluation_sets/` folder. The
  store then holds those rows (redacted under `validation.pii: redact`), and a promotion needs
  nothing but the store.
- referenced: `evaluation_sets/reference.json` records how the sets were read (the `data` parameters,
  the redaction applied) and each set's source URI, row count and content digest. No row enters the
  store; a promotion reads the files again, redacts them as the run did, re-carves a test split
  taken from the training file with the same seed, and refuses (naming the set and its file) when a
  digest no longer matches: the version would be gated on data it was never scored on.
"""

from __future__ import annotations

import json
from pathlib import Path

from graftline.tasks import modality as modalities
from graftline.tasks.data import pii
from graftline.tasks.data.splits import Split, Splits
from graftline.tasks.errors import GraftlineError
from graftline.tasks.modality.base import Modality
from graftline.tasks.registry import contract
from graftline.tasks.settings import DataParams, ValidationParams

REFERENCE = "reference.json"


class EvaluationSetsError(GraftlineError):
    """A version's kept evaluation sets cannot be read back as they were."""


def keep(splits: Splits, data: DataParams, validation: ValidationParams, copy: bool, folder: Path) -> None:
    """Write what `load` needs into `folder` (then logged as the run's `evaluation_sets/`)."""
    sets = splits.evaluation_sets()
    if copy:
        for name, split in sets.items():  # images: their paths (the pictures stay where they are)
            split.frame[[split.input_column, "label"]].to_parquet(folder / f"{name}.parquet", index=False)
        return
    reference = {
        "data": data.model_dump(mode="json", exclude={"target_sets"}),  # adaptation input: never scored
        "pii": validation.pii if validation.pii == "redact" else "none",
        "pii_patterns": validation.pii_patterns if validation.pii == "redact" else {},
        "sets": {name: {"source": s.source, "rows": len(s.frame), "digest": s.digest} for name, s in sets.items()},
    }
    (folder / REFERENCE).write_text(json.dumps(reference, indent=2))


def load(folder: Path, run_id: str, modality: Modality | None = None) -> dict[str, Split]:
    """The evaluation sets kept in `folder` (the downloaded `evaluation_sets/` of ingest run `run_id`),
    `test` first. Copied sets are read back as `modality` says (default: text); referenced ones as
    their `data` settings say."""
    reference = folder / REFERENCE
    if reference.exists():
        sets = _read_referenced(json.loads(reference.read_text()))
    else:
        import pandas as pd

        modality = modality or modalities.default()
        sets = {}
        for p in folder.glob("*.parquet"):
            source = f"runs:/{run_id}/{contract.EVALUATION_SETS}/{p.name}"
            sets[p.stem] = modality.kept_split(p.stem, pd.read_parquet(p), source)
    return dict(sorted(sets.items(), key=lambda item: (item[0] != "test", item[0])))


def _read_referenced(reference: dict) -> dict[str, Split]:
    data = DataParams.model_validate(reference["data"])
    try:
        splits = modalities.of_data(data).read_splits(data)
    except GraftlineError as error:
        raise EvaluationSetsError(
            f"the version's evaluation sets are referenced, not copied, and cannot be read again: {error}; "
            "pass the evaluation sets to score on (eval_sets / --eval)"
        ) from None
    if reference["pii"] == "redact":
        splits, _ = pii.redact_splits(splits, pii.Scanner(reference["pii_patterns"]))
    found = splits.evaluation_sets()
    for name, expected in reference["sets"].items():
        split = found.get(name)
        if split is None or split.digest != expected["digest"]:
            now = "is missing" if split is None else f"now reads as {len(split.frame)} rows, digest {split.digest}"
            raise EvaluationSetsError(
                f"evaluation set {name!r} ({expected['source']}) changed since the version was scored on it: "
                f"it {now}, not {expected['rows']} rows, digest {expected['digest']}; "
                "pass the evaluation sets to score on (eval_sets / --eval)"
            )
    return {name: found[name] for name in reference["sets"]}


def of_version(client, name: str, version: str) -> dict[str, Split]:
    """The evaluation sets registered version `name` v`version` was scored on (its ingest run's), `test` first."""
    import mlflow

    tags = client.get_model_version(name, version).tags
    run_id = tags.get(contract.INGEST_RUN)
    if not run_id:
        raise EvaluationSetsError(
            f"{name} v{version} has no {contract.INGEST_RUN} tag: its evaluation sets are not known"
        )
    folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=contract.EVALUATION_SETS))
    return load(folder, run_id, modalities.of_version(tags))
