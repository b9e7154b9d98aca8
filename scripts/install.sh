#!/usr/bin/env bash
# Create the project's virtual environment and install everything it needs, pinned.
# Usage: scripts/install.sh [python] [venv-dir]. Registries only; pip's cache is reused when warm.
set -euo pipefail
PY=${1:-python3}
VENV=${2:-.venv}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV with $($PY --version)"
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade "pip>=24" 
"$VENV/bin/python" -m pip install --quiet -e ".[test]"
echo "installed: $("$VENV/bin/python" -c 'import torch, timm, dvc; print("torch", torch.__version__, "timm", timm.__version__)')"
bash scripts/install_mmseg.sh "$VENV"  # segment stage: mmseg 1.2.2 + mmcv-lite 2.1.0 + mmengine 0.10.7
bash scripts/install_detectron2.sh "$VENV"  # detectron2 for `mimrepro detect` (re-tagged wheel, pinned)
# BEiT's DALL-E tokenizer classes (dall_e.Encoder; pure Python, runs on torch 2.14.1). --no-deps:
# its metadata also asks for blobfile, mypy and pytest, which it never imports at run time.
"$VENV/bin/python" -m pip install --quiet --no-deps "dall-e==0.1"
