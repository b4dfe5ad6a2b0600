"""The modality seam (tasks/modality/): one object decides what varies by modality, and no module
outside it compares or dispatches on modality names (checked from the source); the resolution from
data, backbones, version tags and names; the one table of refusals."""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd
import pytest

from graftline.tasks import modality as modalities
from graftline.tasks.errors import GraftlineError
from graftline.tasks.modality import base
from graftline.tasks.registry import contract
from graftline.tasks.settings import AdaptParams, DataParams, FinetuneParams

ROOT = Path(__file__).resolve().parents[1]
NAMES = {contract.TEXT, contract.IMAGE}
RESOLVERS = {"kind_of", "modality_of"}  # name -> modality guesses that only tasks/modality/ may call
# The engine's backbones module states a backbone's kind (kind_of) and checks it against a modality
# the caller names (require_kind): the facts the modality's resolution reads.
RESOLVERS_DEFINED_IN = {"tasks/engine/backbones.py"}
# Literals that state a fact rather than choose by it: a served text model reads the `text` column when
# a caller sends one (its input schema, in the pyfuncs' shared body); the catalog states each backbone's kind.
STATED = {("tasks/export/onnx_pyfunc.py", "text"), ("tasks/engine/catalog.py", "text")}


def _is_name_literal(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value in NAMES


def _is_contract_name(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr in ("TEXT", "IMAGE") and _dotted(node.value) == "contract"


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _called(node: ast.Call) -> str:
    return _dotted(node.func).rpartition(".")[2]


def modality_decisions(path: Path) -> list[str]:
    """Where a module decides by modality name: a comparison with "text"/"image" (`==`, `!=`, `in`),
    contract.TEXT/IMAGE, isinstance against ImageProcessor, hasattr(..., "layer_depth"), or a call of
    kind_of/modality_of. Column names used as data (`frame["text"]`) are not comparisons."""
    relative = path.relative_to(ROOT).as_posix()
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        line = f"{relative}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            literals = {o.value for o in operands if _is_name_literal(o)}
            if any(_is_contract_name(o) for o in operands) or literals - {c for f, c in STATED if f == relative}:
                found.append(f"{line} compares with a modality name")
        elif _is_contract_name(node):
            found.append(f"{line} uses contract.{node.attr}")
        elif isinstance(node, ast.Call):
            called, args = _called(node), node.args
            if called == "isinstance" and len(args) == 2 and "ImageProcessor" in ast.unparse(args[1]):
                found.append(f"{line} isinstance against ImageProcessor")
            elif called == "hasattr" and len(args) == 2 and getattr(args[1], "value", None) == "layer_depth":
                found.append(f"{line} hasattr layer_depth")
            elif called in RESOLVERS and relative not in RESOLVERS_DEFINED_IN:
                found.append(f"{line} calls {called}")
    return sorted(found, key=lambda entry: int(entry.split(":")[1].split()[0]))


def _sources() -> list[Path]:
    modality_code = ROOT / "tasks" / "modality"
    paths = [*(ROOT / "flows").rglob("*.py"), *(ROOT / "tasks").rglob("*.py")]
    return sorted(p for p in paths if modality_code not in p.parents)


def test_no_module_outside_the_modality_code_decides_by_modality_name():
    offenders = [line for path in _sources() for line in modality_decisions(path)]
    assert not offenders, "modality decisions outside tasks/modality/:\n" + "\n".join(offenders)


def test_the_source_check_tells_a_decision_from_a_column_name(tmp_path, monkeypatch):
    monkeypatch.setattr("tests.test_modality.ROOT", tmp_path)
    module = tmp_path / "m.py"
    module.write_text(
        "texts = frame['text'].tolist()\n"  # a column of the data: fine
        "frame = pd.DataFrame({'image': paths})\n"  # fine
        "if splits.modality == 'image': pass\n"
        "column = 'image' if 'image' in frame.columns else 'text'\n"
        "if tags.get(MODALITY) == contract.IMAGE: pass\n"
        "if isinstance(tokenizer, image_inputs.ImageProcessor): pass\n"
        "if hasattr(model, 'layer_depth'): pass\n"
        "kind = backbones.kind_of(spec)\n"
    )
    found = modality_decisions(module)
    assert [int(line.split(":")[1].split()[0]) for line in found] == [3, 4, 5, 5, 6, 7, 8]


# -- resolution -------------------------------------------------------------------------------------


def _class_folders(root: Path) -> Path:
    from PIL import Image

    for label in ("ants", "bees"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / label / f"{i}.png")
    return root


def test_auto_data_resolves_by_its_layout(tmp_path):
    folder = _class_folders(tmp_path / "train")
    assert modalities.of_data(DataParams(train_path=str(folder))).name == "image"
    table = tmp_path / "pictures.csv"
    pd.DataFrame({"image": ["ants/0.png"], "label": ["ants"]}).to_csv(table, index=False)
    assert modalities.of_data(DataParams(train_path=str(table))).name == "image"
    texts = tmp_path / "texts.csv"
    pd.DataFrame({"text": ["a text"], "image": ["a.png"], "label": ["x"]}).to_csv(texts, index=False)
    assert modalities.of_data(DataParams(train_path=str(texts))).name == "text"  # a text column: text
    assert modalities.of_data(DataParams(train_path=str(folder), modality="text")).name == "text"  # as given


def test_backbones_resolve_by_their_kind(tiny_image_backbone):
    assert modalities.of_backbone("efficientnet-lite0").name == "image"
    assert modalities.of_backbone("minilm-l6").name == "text"
    assert modalities.of_backbone(str(tiny_image_backbone)).name == "image"
    assert modalities.of_backbone("some-org/some-model").name == "text"  # a hub id: text


def test_versions_resolve_by_their_modality_tag():
    assert modalities.of_version({contract.MODALITY: "image"}).name == "image"
    assert modalities.of_version({contract.MODALITY: "text"}).name == "text"
    assert modalities.of_version({}).name == "text"  # registered before the tag was


def test_an_unknown_name_is_a_one_line_error():
    with pytest.raises(GraftlineError, match=r"^unknown modality 'audio': expected one of image, text$"):
        modalities.by_name("audio")
    assert modalities.by_name("image") is modalities.by_name("image")  # one object per modality


def test_every_modality_implements_the_interface_and_names_the_registry_tag():
    found = modalities.every()
    assert [m.name for m in found] == ["image", "text"] and {m.name for m in found} == {contract.IMAGE, contract.TEXT}
    assert found[-1].claims(DataParams())  # the last one is the fallback of `auto`
    for modality in found:
        assert not getattr(modality, "__abstractmethods__", None)
        assert set(modality.refused) <= set(base.CAPABILITIES)


# -- the one table of refusals ------------------------------------------------------------------------


def test_image_refuses_lora_privacy_and_adaptation_in_one_line():
    image = modalities.by_name("image")
    params = FinetuneParams(backbone="efficientnet-lite0", strategy="lora").model_copy(
        update={"privacy": FinetuneParams().privacy.model_copy(update={"enabled": True})}
    )
    with pytest.raises(
        GraftlineError,
        match=r"^backbone 'efficientnet-lite0' is an image backbone; strategy lora, finetune\.privacy, "
        r"adapt\.method mlm train text models only$",
    ):
        image.refuse_unsupported(params, AdaptParams(method="mlm"))
    with pytest.raises(GraftlineError, match=r"^backbone 'efficientnet-lite0' is an image backbone; finetune\.privacy"):
        image.refuse_unsupported(params.model_copy(update={"strategy": "full"}), AdaptParams())
    image.refuse_unsupported(FinetuneParams(backbone="efficientnet-lite0", strategy="lp-ft"), AdaptParams())


def test_text_supports_everything_and_image_says_why_not():
    text, image = modalities.by_name("text"), modalities.by_name("image")
    text.refuse_unsupported(FinetuneParams(strategy="lora"), AdaptParams(method="mlm"))
    assert all(text.supports(c) for c in base.CAPABILITIES) and text.refusal(base.EXPLAIN) is None
    assert not image.supports(base.REINIT) and not image.supports(base.EXPLAIN)
    assert image.refusal(base.EXPLAIN) == "token attributions are for text"
    assert image.refusal(base.REINIT) == "re-initialises transformer layers; image backbones have none"
    assert image.refusal(base.TEXT_SCORING, uri="models:/m/1").startswith(
        "classifies images; predict, monitor and explain read texts (score images with "
        "mlflow.pyfunc.load_model('models:/m/1')"
    )
    with pytest.raises(ValueError, match="unknown capability"):
        image.supports("teleport")


def test_only_text_rows_are_scanned_for_personal_data():
    assert modalities.by_name("text").scans_personal_data and not modalities.by_name("image").scans_personal_data


def test_image_defaults_are_the_settings_image_defaults():
    from graftline.tasks import settings

    image = modalities.by_name("image")
    assert image.default_settings(DataParams(), given_train_path=False) == {
        **settings.IMAGE_DEFAULTS,
        **settings.IMAGE_DEMO_DEFAULTS,
    }
    given = DataParams(train_path="elsewhere")
    assert image.default_settings(given, given_train_path=True) == settings.IMAGE_DEFAULTS
    assert modalities.by_name("text").default_settings(DataParams(), given_train_path=False) == {}


def test_image_data_refuses_transfer_rows_and_reads_its_splits(tmp_path):
    from graftline.tasks.errors import DataError

    folder = _class_folders(tmp_path / "train")
    image = modalities.by_name("image")
    data = DataParams(train_path=str(folder), eval_sets={}, test_fraction=0.34, validation_fraction=0.34)
    with pytest.raises(DataError, match=r"image data; unlabeled distillation files and target sets are read for text"):
        image.read_splits(data, ["an unlabeled text"])
    splits = image.read_splits(data)
    assert splits.modality == "image" and image.export_calibration(splits) == splits.train.inputs
    assert modalities.by_name("text").export_calibration(splits) is None
    _, line = image.read_to_check(data, preflight=None)
    assert line.startswith("image data: train ") and line.endswith(" images, 2 classes")
    kept = image.kept_split("test", splits.test.frame[["image", "label"]], "runs:/r/evaluation_sets/test.parquet")
    assert kept.inputs == splits.test.inputs and kept.digest == splits.test.digest


def test_image_training_is_augmented_and_freezes_batchnorm_at_small_batches():
    calls = []

    class Split:
        def augmented(self, augmentation):
            calls.append(("augmented", augmentation.crop_scale_min, augmentation.flip))
            return "augmented rows"

    class Model:
        def freeze_batchnorm(self, frozen):
            calls.append(("frozen", frozen))

    params = FinetuneParams(batch_size=8)
    rows = modalities.by_name("image").prepare_training(Model(), Split(), params, seed=3)
    assert rows == "augmented rows"
    assert calls == [("augmented", params.images.crop_scale_min, params.images.flip), ("frozen", True)]
    assert modalities.by_name("text").prepare_training(Model(), "rows", params, seed=3) == "rows"
    assert calls[-1] == ("frozen", True) and len(calls) == 2  # text: untouched


def test_backbones_and_students_of_the_other_modality_are_refused():
    from graftline.tasks.errors import BackboneError

    with pytest.raises(BackboneError, match=r"backbone 'minilm-l6' is a text backbone; image data needs an image one"):
        modalities.by_name("image").require_backbone("minilm-l6")
    with pytest.raises(BackboneError, match=r"distill.student 'efficientnet-lite0' is an image backbone"):
        modalities.by_name("text").require_student("efficientnet-lite0")
    modalities.by_name("text").require_student("teacher-layers:2")


def test_the_step_context_carries_the_modality():
    from graftline.tasks.records import StepContext

    assert StepContext("run", Path(".")).modality.name == "text"
    assert StepContext("run", Path("."), modality=modalities.by_name("image")).modality.name == "image"
