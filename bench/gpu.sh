#!/usr/bin/env bash
# The GPU checks of the training engine, in one call of a few minutes, on a GPU machine as it is:
# no installs from a registry, graftline's source on PYTHONPATH, the machine's own torch and
# transformers, and what it lacks carried in .gpu/ (made here by `bench/gpu_prepare.py`: MiniLM-L6
# weights in bf16, a BERT-base-shaped config, SST-2's rows, the missing wheels).
#
#   .venv/bin/python bench/gpu_prepare.py            # here, once: writes .gpu/ (~55 MB, git-ignored)
#   bash bench/gpu.sh                                # there: prints two tables; JSON in $OUT or bench/results
#   bash bench/gpu.sh --device cpu --tiny            # the rehearsal on a CPU (after gpu_prepare.py --tiny)
#
# Table 1, throughput: a BERT-base-shaped model (12 x 768, random weights: weights do not change
# speed) on SST-2, graftline's engine against the HF Trainer at its best (length-grouped, fused
# AdamW, bf16), with and without torch.compile: examples/s, tokens/s, MFU, peak memory.
# Table 2, accuracy: MiniLM-L6 fine-tuned 2 epochs on SST-2 by graftline in bf16, scored on dev.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
packed=$repo/.gpu
device=cuda rows=20000 accuracy_rows=20000 batch=64
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device=$2; shift 2 ;;
        --tiny) rows=256 accuracy_rows=256 batch=32; shift ;;
        --packed) packed=$2; shift 2 ;;
        *) echo "unknown option $1 (--device cuda|cpu, --tiny, --packed DIR)" >&2; exit 2 ;;
    esac
done
for need in minilm-l6 bert-base sst2 wheels; do
    if [ ! -e "$packed/$need" ]; then
        echo "$packed/$need: missing; run bench/gpu_prepare.py first (and carry .gpu to this machine)" >&2
        exit 2
    fi
done
python=${PYTHON:-python3}
work=$(mktemp -d /tmp/graftline-gpu.XXXXXX)
# graftline's packages as the installed distribution names them, from the source folders
mkdir -p "$work/src/graftline" "$work/site"
touch "$work/src/graftline/__init__.py"
ln -s "$repo/tasks" "$work/src/graftline/tasks"
ln -s "$repo/flows" "$work/src/graftline/flows"
"$python" -m pip install --quiet --no-index --no-deps --no-compile --target "$work/site" "$packed"/wheels/*.whl
export PYTHONPATH="$work/src:$work/site${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
results=${OUT:-$repo/bench/results}
mkdir -p "$results"

if [ "$device" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
"$python" -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__)"

cd "$repo"
"$python" bench/train.py --data "$packed" --device "$device" --backbone "$packed/bert-base" --random-init \
    --rows "$rows" --batch "$batch" --epochs 1 --results "$results/gpu-throughput.json" \
    --runs "graftline bf16" "graftline bf16 compiled" "trainer best" "trainer best compiled"
"$python" bench/train.py --data "$packed" --device "$device" --backbone "$packed/minilm-l6" \
    --rows "$accuracy_rows" --batch "$batch" --epochs 2 --results "$results/gpu-accuracy.json" \
    --runs "graftline bf16"
rm -rf "$work"
