"""Pack what `bench/gpu.sh` needs on a GPU machine that reaches no package registry and receives only
a small copy of the repository (no datasets folder, no installed backbones).

Writes FOLDER (default `.gpu/`, ignored by git), about 55 MB:
- `minilm-l6/`: the packaged MiniLM-L6 encoder with its weights stored as bf16
  safetensors (45 MB instead of 91 MB; loaded back as fp32, so training starts from the same
  weights rounded to bf16) and its tokenizer, for the accuracy check;
- `bert-base/`: a BERT-base-shaped config (12 layers x 768, the MiniLM tokenizer's vocabulary) and
  the tokenizer, no weights: `bench/train.py --random-init` builds random ones there, since weights
  do not change speed, for throughput and MFU;
- `sst2/`: SST-2's train.csv and dev.csv from the datasets folder (--data);
- `wheels/`: the Python packages graftline's engine imports that such a machine lacks (pydantic and
  its parts), at the lock's versions, for CPython 3.12 on x86-64 Linux (`--python-version`).

    .venv/bin/python bench/gpu_prepare.py                 # then: bash bench/gpu.sh (on the GPU machine)
    .venv/bin/python bench/gpu_prepare.py --tiny          # a 2-layer random model instead of BERT-base
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from common import add_data_option, require_folders  # noqa: E402

from graftline.tasks.environment import apply_defaults

apply_defaults(HF_HUB_OFFLINE="1")

REPO = Path(__file__).resolve().parents[1]
# What bench/train.py imports beyond the GPU machine's own packages (torch, transformers, numpy,
# pandas, scikit-learn, matplotlib, pyarrow, fsspec, ...): pydantic, for the parameter models.
MISSING = ("pydantic", "pydantic_core", "annotated-types", "typing-inspection")
BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)


def pinned(name: str) -> str:
    """`name==version` from the lock."""
    wanted = name.lower().replace("_", "-")
    for line in (REPO / "constraints.txt").read_text().splitlines():
        package, _, version = line.partition("==")
        if package.strip().lower().replace("_", "-") == wanted:
            return f"{package.strip()}=={version.strip()}"
    sys.exit(f"{name}: not in constraints.txt")


def pack_minilm(out: Path) -> None:
    import torch

    from graftline.tasks.engine import backbones

    tokenizer = backbones.load_tokenizer("minilm-l6")
    encoder = backbones.load_encoder("minilm-l6").to(torch.bfloat16)  # the classification head is new anyway
    encoder.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def pack_random(out: Path, shape: dict) -> None:
    from transformers import BertConfig

    from graftline.tasks.engine import backbones

    tokenizer = backbones.load_tokenizer("minilm-l6")  # bert-base-uncased's vocabulary
    BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=512, **shape).save_pretrained(out)
    tokenizer.save_pretrained(out)


def download_wheels(out: Path, python_version: str) -> None:
    platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (17, 27, 28)] + ["--platform=manylinux2014_x86_64"]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               f"--python-version={python_version}", "--implementation=cp", *platforms, "-d", str(out),
               *(pinned(name) for name in MISSING)]  # fmt: skip
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_option(parser, "holding sst2/")
    parser.add_argument("--out", type=Path, default=REPO / ".gpu")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer random model for the CPU rehearsal")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (for the wheels)")
    args = parser.parse_args()
    require_folders(args.data / "sst2")
    if args.out.exists():
        shutil.rmtree(args.out)
    (args.out / "sst2").mkdir(parents=True)
    for name in ("train.csv", "dev.csv"):
        shutil.copy(args.data / "sst2" / name, args.out / "sst2" / name)
    pack_minilm(args.out / "minilm-l6")
    pack_random(args.out / "bert-base", TINY if args.tiny else BERT_BASE)
    download_wheels(args.out / "wheels", args.python_version)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{args.out}: {size / 2**20:.1f} MiB ({', '.join(sorted(p.name for p in args.out.iterdir()))})")


if __name__ == "__main__":
    main()
