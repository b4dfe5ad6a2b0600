"""Image classifiers through the engine: the network, the batches, the strategies, resume, export and
the registered pyfunc. The tiny EfficientNet-Lite is built from config (random weights): these tests
assert behaviour, not pretrained quality; the catalog's weights are checked where they are installed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from graftline.tasks import modality as modalities
from graftline.tasks.engine import backbones, catalog, vision
from graftline.tasks.engine.checkpoints import Checkpoints
from graftline.tasks.engine.image_inputs import Augmentation
from graftline.tasks.engine.training import TrainConfig, encode, make_optimizer, train
from graftline.tasks.errors import BackboneError, DataError
from graftline.tasks.settings import DataParams, FinetuneParams, ImageTrainingParams, ModelParams

MODEL = ModelParams(image_size=32, seed=13)


@pytest.fixture(scope="module")
def splits(shape_images):
    data = DataParams(train_path=str(shape_images["train"]), eval_sets={"outlines": str(shape_images["outlines"])})
    return modalities.of_data(data).read_splits(data)


@pytest.fixture(scope="module")
def tuned(splits, tiny_image_backbone, tmp_path_factory) -> Path:
    """The tiny network fine-tuned for two epochs on the shapes: what export and distillation start from."""
    from graftline.tasks.train.finetune import finetune

    params = FinetuneParams(backbone=str(tiny_image_backbone), epochs=2, batch_size=8, learning_rate=3e-3)
    return finetune(splits, params, MODEL, tmp_path_factory.mktemp("tuned") / "model").model_dir


def engine(**changes) -> TrainConfig:
    settings = dict(
        epochs=2,
        batch_size=8,
        learning_rate=3e-3,
        weight_decay=0.0,
        warmup_ratio=0.0,
        patience=5,
        seed=13,
        device="cpu",
        precision="fp32",
        grad_accumulation=1,
        group_by_length=False,
        compile=False,
        fast_cpu_dropout=True,
        layer_decay=1.0,
        backbone_rate=1.0,
        checkpoint_every=0,
        checkpoint_seconds=0,
    )
    return TrainConfig(**settings | changes)


def _setup(backbone: Path, splits, seed: int = 13):
    torch.manual_seed(seed)
    model = backbones.load_classifier(str(backbone), splits.labels, image_size=32)
    processor = backbones.load_tokenizer(str(backbone), image_size=32)
    ids = [splits.labels.index(label) for label in splits.train.frame["label"]]
    train_split = encode(processor, splits.train.inputs, ids, 0).augmented(Augmentation(13))
    val_ids = [splits.labels.index(label) for label in splits.validation.frame["label"]]
    return model, train_split, encode(processor, splits.validation.inputs, val_ids, 0)


def test_same_padding_gives_tensorflow_output_sizes_and_a_labelled_head(tiny_image_backbone):
    model = backbones.load_classifier(str(tiny_image_backbone), ["a", "b", "c"]).eval()
    for side, expected in ((32, 16), (33, 17)):  # stride-2 SAME: ceil(side / 2), whatever the parity
        assert model._conv_stem(torch.zeros(1, 3, side, side)).shape[-1] == expected
    out = model(pixel_values=torch.zeros(2, 3, 32, 32))
    assert out.logits.shape == (2, 3) and out.pooled.shape == (2, model.config.head)
    assert backbones.labels_of(model) == ["a", "b", "c"] and backbones.kind_of(str(tiny_image_backbone)) == "image"


@pytest.mark.skipif(
    not catalog.installed(catalog.get("efficientnet-lite0")), reason="graftline zoo install efficientnet-lite0"
)
def test_the_catalog_lite0_weights_fill_the_network_exactly():
    model = backbones.load_classifier("efficientnet-lite0", ["ants", "bees"])
    assert backbones.count_parameters(model) == 4_652_008 - 1000 * 1280 - 1000 + 2 * 1280 + 2  # new 2-class head
    assert backbones.load_tokenizer("efficientnet-lite0").image_size == 224


def test_text_and_image_backbones_are_refused_for_the_other_kind(tiny_image_backbone, tiny_backbone):
    with pytest.raises(BackboneError, match=r"'minilm-l6' is a text backbone; image data needs an image one"):
        backbones.require_kind("minilm-l6", "image")
    with pytest.raises(BackboneError, match=r"is an image backbone; text data needs a text one"):
        backbones.require_kind(str(tiny_image_backbone), "text")
    with pytest.raises(BackboneError, match=r"distill.student 'minilm-l3' is a text backbone"):
        backbones.require_student_kind("minilm-l3", "image")


def test_training_crops_follow_the_rows_and_the_seed_and_evaluation_takes_the_centre(splits, tiny_image_backbone):
    processor = backbones.load_tokenizer(str(tiny_image_backbone), image_size=32)
    decoded = encode(processor, splits.train.inputs, [0] * len(splits.train.frame), 0)
    assert decoded.pixels.shape[1:] == (processor.stored_size, processor.stored_size, 3)
    plain = decoded.collate(np.array([0, 1, 2]))["pixel_values"]
    assert plain.shape == (3, 3, 32, 32) and -1.01 <= float(plain.min()) and float(plain.max()) <= 1.01
    assert torch.equal(plain, decoded.collate(np.array([0, 1, 2]))["pixel_values"])
    augmented = decoded.augmented(Augmentation(seed=5))
    first = augmented.collate(np.array([0, 1, 2]))["pixel_values"]
    assert torch.equal(first, augmented.collate(np.array([0, 1, 2]))["pixel_values"])  # a resumed run sees the same
    assert not torch.equal(first, plain)
    assert not torch.equal(first, decoded.augmented(Augmentation(seed=6)).collate(np.array([0, 1, 2]))["pixel_values"])
    # the same image in another batch gets another crop
    assert not torch.equal(first[0], augmented.collate(np.array([0, 3, 4]))["pixel_values"][0])


def test_decoding_is_cached_and_an_undecodable_file_is_named(splits, tiny_image_backbone, tmp_path):
    processor = backbones.load_tokenizer(str(tiny_image_backbone), image_size=32)
    paths = splits.train.inputs[:4]
    first = processor.decode(paths, tmp_path)
    assert len(list(tmp_path.glob("pixels-*.u8"))) == 1
    assert np.array_equal(first, processor.decode(paths, tmp_path))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    with pytest.raises(DataError, match=r"broken\.png: cannot decode the image"):
        processor.decode([*paths, str(broken)])


def test_lp_ft_probes_with_the_backbone_fixed_then_tunes_it_at_a_lower_rate(splits, tiny_image_backbone, tmp_path):
    from graftline.tasks.train.finetune import finetune, set_backbone_frozen

    model = backbones.load_classifier(str(tiny_image_backbone), splits.labels)
    set_backbone_frozen(model, True)
    model.train()
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"_fc.weight", "_fc.bias"}
    assert not model._blocks[0].training and model._dropout.training  # the frozen backbone runs as in eval
    set_backbone_frozen(model, False)
    groups = make_optimizer(model, engine(backbone_rate=0.1), torch.device("cpu")).param_groups
    assert sorted({g["lr"] for g in groups}) == pytest.approx([3e-4, 3e-3])

    params = FinetuneParams(
        backbone=str(tiny_image_backbone),
        strategy="lp-ft",
        probe_epochs=2,
        epochs=2,
        patience=5,
        batch_size=8,
        learning_rate=3e-3,
    )
    result = finetune(splits, params, MODEL, tmp_path / "model")
    assert [r.epoch for r in result.training.history] == [1, 2, 3, 4]  # the probe's two, then the tuning's two
    saved = backbones.load_classifier(str(tmp_path / "model"))
    assert saved.config.image_size == 32 and backbones.labels_of(saved) == splits.labels
    assert backbones.load_tokenizer(str(tmp_path / "model")).image_size == 32


def test_frozen_batchnorm_keeps_the_pretrained_statistics(splits, tiny_image_backbone):
    model, train_split, val_split = _setup(tiny_image_backbone, splits)
    before = model._bn0.running_mean.clone()
    model.freeze_batchnorm(True)
    train(model, train_split, val_split, engine(epochs=1), 0)
    assert torch.equal(model._bn0.running_mean, before)
    model.freeze_batchnorm(False)
    train(model, train_split, val_split, engine(epochs=1), 0)
    assert not torch.equal(model._bn0.running_mean, before)
    assert ImageTrainingParams().freezes_batchnorm(8) and not ImageTrainingParams().freezes_batchnorm(32)


def test_image_training_resumes_after_a_crash_mid_epoch_to_the_uninterrupted_result(
    splits, tiny_image_backbone, tmp_path
):
    """The resumability check of the text engine, on images: random crops and dropped blocks included."""
    config = engine(epochs=2, batch_size=4, checkpoint_every=2)
    model, train_split, val_split = _setup(tiny_image_backbone, splits)
    straight = train(model, train_split, val_split, config, 0)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    steps_per_epoch = len(straight.step_losses) // 2

    calls = {"n": 0}

    def crashing_loss(outputs, batch):
        calls["n"] += 1
        if calls["n"] == steps_per_epoch + 3:
            raise KeyboardInterrupt  # a kill, as far as the loop can tell
        return torch.nn.functional.cross_entropy(outputs.logits.float(), batch["labels"])

    folder = tmp_path / "checkpoints"
    model, train_split, val_split = _setup(tiny_image_backbone, splits)
    with pytest.raises(KeyboardInterrupt):
        train(model, train_split, val_split, config, 0, crashing_loss, checkpoint_dir=folder)
    assert Checkpoints(folder).latest() is not None

    model, train_split, val_split = _setup(tiny_image_backbone, splits, seed=999)
    resumed = train(model, train_split, val_split, config, 0, checkpoint_dir=folder)
    assert resumed.resumed_from_step is not None and resumed.resumed_from_step > steps_per_epoch
    assert resumed.step_losses == straight.step_losses
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_static_int8_export_agrees_and_the_logged_model_predicts_from_paths_and_bytes(
    splits, tuned, mlflow_store, tmp_path
):
    import mlflow
    import pandas as pd

    from graftline.tasks.export.onnx import export_and_measure, log_image_model
    from graftline.tasks.settings import ExportParams

    model_dir = tuned
    report = export_and_measure(
        model_dir,
        None,
        splits.test,
        ExportParams(min_agreement=0.8, max_accuracy_drop=0.2, latency_rows=8),
        0,
        tmp_path / "export",
        calibration=splits.train.inputs,
    )
    rows = {r.name: r for r in report.rows}
    assert rows["teacher-onnx"].agreement == 1.0 and rows["teacher-onnx"].max_logit_diff < 1e-3
    int8 = rows["teacher-onnx-int8"]
    import onnx

    operators = {node.op_type for node in onnx.load(int8.file).graph.node}
    assert int8.passed and {"QuantizeLinear", "DequantizeLinear"} <= operators  # static QDQ, not ConvInteger
    assert "ConvInteger" not in operators

    classifier = backbones.load_classifier(str(model_dir)).eval()
    processor = backbones.load_tokenizer(str(model_dir))
    paths = splits.test.inputs[:5]
    with torch.no_grad():
        expected = classifier(pixel_values=processor.prepare(paths)).logits.argmax(-1).numpy()
    mlflow.set_experiment("vision-pyfunc")
    with mlflow.start_run():
        labels = backbones.labels_of(classifier)
        logged = log_image_model(Path(int8.file), model_dir, labels, processor, 1.0, tmp_path / "logged", "model")
    model = mlflow.pyfunc.load_model(logged.model_uri)
    from_paths = model.predict(pd.DataFrame({"image": paths}))
    from_bytes = model.predict(pd.DataFrame({"image_bytes": [Path(p).read_bytes() for p in paths]}))
    assert list(from_paths["label"]) == list(from_bytes["label"])
    assert np.allclose(from_paths.filter(like="score_").sum(axis=1), 1.0)
    agree = np.mean([labels.index(label) for label in from_paths["label"]] == expected)
    assert agree >= 0.8  # INT8 against the torch model, on five images
    from tests.test_export import predict_without_graftline

    isolated = predict_without_graftline(logged.model_uri, pd.DataFrame({"image": paths}), tmp_path / "isolated")
    pd.testing.assert_frame_equal(isolated, from_paths)  # a serving machine without graftline: the same rows

    from graftline.tasks.modality.image import image_weights

    assert backbones.labels_of(backbones.load_classifier(str(image_weights(logged.model_uri)))) == labels


def test_image_data_is_split_and_digested_by_its_bytes(splits, shape_images, tmp_path):
    assert splits.modality == "image" and set(splits.extra) == {"outlines"}
    assert len(splits.train.frame) + len(splits.validation.frame) + len(splits.test.frame) == 42
    assert splits.train.frame["label"].nunique() == 3
    import shutil

    copy = tmp_path / "renamed"
    shutil.copytree(shape_images["train"], copy)
    for picture in copy.rglob("*.png"):
        picture.rename(picture.with_name("x-" + picture.name))
    again = modalities.by_name("image").read_splits(DataParams(train_path=str(copy), eval_sets={}))
    assert again.train.digest == splits.train.digest  # the same pictures under other names
    assert replace(splits.train, frame=splits.train.frame.iloc[1:]).digest != splits.train.digest


def test_auto_selection_scores_image_candidates_on_their_features(splits, tiny_image_backbone, tmp_path):
    from graftline.tasks.settings import SelectParams
    from graftline.tasks.train.selection import select_backbone

    torch.manual_seed(1)
    other = tmp_path / "other"
    vision.build(vision.tiny_config(["x"])).save_pretrained(other)
    params = SelectParams(candidates=[str(tiny_image_backbone), str(other)], sample_size=30)
    selection = select_backbone(splits.train, params, MODEL)
    assert selection.choice in params.candidates and len(selection.leaderboard) == 2
    report = selection.leaderboard[0]
    assert report.width == 32 and report.layers == 3 and np.isfinite(report.scores["knn"])


def test_a_layer_student_keeps_every_stage_entry_and_computes_as_its_teacher_without_the_dropped_blocks():
    from graftline.tasks.modality.image import student_blocks as image_student_blocks

    config = vision.tiny_config(["a", "b"])
    config.stages = [[1, 3, 1, 1, 8, 8], [3, 3, 2, 2, 8, 16]]  # blocks 0 | 1 2 3: 2 and 3 are residual
    torch.manual_seed(0)
    teacher = vision.build(config).eval()
    assert image_student_blocks("teacher-layers:3", config) == [0, 1, 2]
    assert image_student_blocks("teacher-layers:0,1,3", config) == [0, 1, 3]
    for bad in ("teacher-layers:1", "teacher-layers:0,2", "teacher-layers:x"):
        with pytest.raises(BackboneError, match=r"distill.student 'teacher-layers:"):
            image_student_blocks(bad, config)
    student = vision.layer_student(teacher, [0, 1, 3]).eval()
    assert len(student._blocks) == 3 and backbones.labels_of(student) == ["a", "b"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        by_hand = teacher._blocks[3](
            teacher._blocks[1](teacher._blocks[0](teacher._bn0(teacher._conv_stem(x)).clamp(0, 6)))
        )
        head = teacher._fc(torch.nn.functional.relu6(teacher._bn1(teacher._conv_head(by_hand))).mean(dim=(2, 3)))
        assert torch.allclose(student(pixel_values=x).logits, head, atol=1e-5)


def test_an_image_teacher_distils_into_its_own_blocks(splits, tuned, tmp_path):
    from graftline.tasks.settings import DistillParams
    from graftline.tasks.train.distill import distill

    teacher = tuned
    student = DistillParams(student="teacher-layers:2", epochs=1, batch_size=8, learning_rate=3e-3)
    result = distill(teacher, splits, student, MODEL, tmp_path / "student")
    assert result.kept_layers == [0, 1] and result.student_parameters < result.teacher_parameters
    saved = backbones.load_classifier(str(tmp_path / "student"))
    assert len(saved._blocks) == 2 and saved.config.image_size == 32
    with pytest.raises(BackboneError, match="hidden_weight matches transformer layers"):
        distill(teacher, splits, student.model_copy(update={"hidden_weight": 1.0}), MODEL, tmp_path / "again")
