#!/usr/bin/env bash
# Install mmsegmentation for the `segment` stage into VENV (pinned, idempotent, registries only).
# Usage: scripts/install_mmseg.sh [venv-dir]   (scripts/install.sh calls it)
#
# Route: mmcv-lite (pure Python, ~30 s) instead of full mmcv (compiled ops, 10-22 min build).
# mmseg 1.2.2 imports mmcv.ops at import time although UperNet + ViT uses no compiled op;
# downstream/mmcv_ext_shim.py stands in for `mmcv._ext` in memory (never in site-packages)
# and raises if any compiled op is called.  mmseg 1.2.2 asserts mmcv < 2.2.0.
#
# GPU users who want full mmcv (compiled CUDA ops; this stage gives the same results with either)
# build it from source instead (10-22 min on 2 cores; not run by this script). torch 2.14's headers
# need C++20 and mmcv 2.1.0's setup.py hard-codes -std=c++17 after any CXXFLAGS, so edit it:
#   pip download --no-deps --no-binary :all: --no-build-isolation mmcv==2.1.0 -d /tmp/mmcv
#   tar xzf /tmp/mmcv/mmcv-2.1.0.tar.gz -C /tmp/mmcv
#   sed -i 's/c++17/c++20/g' /tmp/mmcv/mmcv-2.1.0/setup.py
#   pip uninstall -y mmcv-lite
#   MMCV_WITH_OPS=1 MAX_JOBS=8 pip install --no-build-isolation --no-cache-dir /tmp/mmcv/mmcv-2.1.0
# (setuptools<81 is pinned by the project: mmcv's build imports pkg_resources.) Rerunning this
# script afterwards keeps full mmcv; the shim then stays out of the way.
set -euo pipefail
VENV=${1:-.venv}
[ -x "$VENV/bin/python" ] || { echo "install_mmseg.sh: no python at $VENV/bin/python (run scripts/install.sh first)" >&2; exit 1; }
PY="$(cd "$VENV" && pwd)/bin/python"
PINS=(
    "mmengine==0.10.7"
    "mmcv-lite==2.1.0"
    "mmsegmentation==1.2.2"
    "ftfy==6.3.1"
    "regex==2026.11.19"
    "opencv-python==5.0.0.93"
)
# Full mmcv 2.1.0 (built from source, above) also satisfies the stage: keep it, never clobber it.
if "$PY" -c "import sys; from importlib.metadata import version; sys.exit(version('mmcv') != '2.1.0')" 2>/dev/null; then
    PINS=("${PINS[@]/mmcv-lite==2.1.0/mmcv==2.1.0}")
fi
missing=$("$PY" - "${PINS[@]}" <<'PYEOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        have = version(name)
    except PackageNotFoundError:
        have = None
    if have != want:
        print(pin)
PYEOF
)
if [ -z "$missing" ]; then
    echo "install_mmseg.sh: pinned mmseg stack already in $VENV"
else
    start=$(date +%s)
    "$PY" -m pip install --quiet $missing
    echo "install_mmseg.sh: installed $(echo $missing) in $(( $(date +%s) - start )) s"
fi
# Verify the stage's import path (shim first, then mmseg) from the project root.
cd "$(dirname "$0")/.."
"$PY" -c "from downstream.mmseg_env import import_mmseg; m = import_mmseg(); print('install_mmseg.sh: mmseg', m.__version__, 'imports')"
