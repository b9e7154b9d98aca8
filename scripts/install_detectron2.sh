#!/usr/bin/env bash
# Install detectron2 (for `mimrepro detect`) into VENV, pinned, from the package registry only.
# Usage: bash scripts/install_detectron2.sh VENV        (idempotent: exits early when installed)
#
# detectron2 is not on PyPI under its own name. `sal-detectron2==0.7.2` is a faithful
# repackaging (upstream commit a59f0563, Apache-2.0) but ships as a CPython-3.10 wheel with
# a compiled `detectron2._C` for an old torch. ViTDet Mask R-CNN needs none of `_C` (only
# rotated boxes and deformable conv do), so we re-tag that wheel as pure Python:
#   download -> unpack -> delete _C*.so and the stray top-level `tools/` scripts ->
#   WHEEL: `Tag: py3-none-any`, `Root-Is-Purelib: true` -> repack -> pip install --no-deps,
# then install its real runtime dependencies explicitly (its metadata omits fvcore/iopath
# and wrongly pins numpy<2; it runs on numpy 2.x).
# With internet and a GPU, build upstream from source instead for the CUDA ops:
#   pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git@a59f0563'
set -euo pipefail
VENV=${1:?usage: install_detectron2.sh VENV}
PY="$VENV/bin/python"
[ -x "$PY" ] || { echo "install_detectron2: no python at $PY" >&2; exit 1; }

D2_VERSION=0.7.2
D2_SHA256=491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561
WHEEL_TOOL=wheel==0.45.1
# Runtime deps, pinned to the versions resolved beside torch 2.14.1 / numpy 2.4.6 on Python 3.11.
DEPS=(
    "fvcore==0.1.5.post20221221"
    "iopath==0.1.9"
    "portalocker==4.4.2"
    "omegaconf==2.3.1"
    "hydra-core==1.3.8"
    "yacs==0.1.8"
    "termcolor==3.3.0"
    "tabulate==0.10.0"
    "cloudpickle==3.1.3"
    "pycocotools==2.0.11"
    "shapely==2.2.0"  # fvcore crops polygons with it (LSJ's FixedSizeCrop)
)

# Installed already?  The pinned re-tagged wheel, or an upstream build (kept: it has the CUDA ops).
check() {
    "$PY" - "$D2_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import PackageNotFoundError, version
import detectron2, fvcore, iopath, shapely  # noqa: F401
from detectron2.modeling import ViT, SimpleFeaturePyramid  # noqa: F401
from detectron2.evaluation import COCOEvaluator  # noqa: F401
try:
    print(f"sal-detectron2=={version('sal-detectron2')}")
    ok = version("sal-detectron2") == sys.argv[1]
except PackageNotFoundError:  # built from source: upstream's distribution is named "detectron2"
    print(f"detectron2=={version('detectron2')} (built from source)")
    ok = True
sys.exit(0 if ok else 1)
EOF
}

if found=$(check); then
    echo "detectron2 already installed in $VENV: $found"
    exit 0
fi

start=$(date +%s)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pip_() { "$PY" -m pip --disable-pip-version-check "$@"; }

pip_ download --quiet --no-deps --only-binary :all: --python-version 3.10 \
    "sal-detectron2==$D2_VERSION" -d "$tmp/dl"
whl=$(ls "$tmp"/dl/sal_detectron2-"$D2_VERSION"-*.whl)
echo "$D2_SHA256  $whl" | sha256sum --check --quiet -

# The `wheel` CLI goes into the temp dir, not into VENV.
pip_ install --quiet --no-deps --target "$tmp/wheeltool" "$WHEEL_TOOL"
wheel_() { PYTHONPATH="$tmp/wheeltool" "$PY" -m wheel "$@"; }
wheel_ unpack --dest "$tmp/src" "$whl" >/dev/null
root="$tmp/src/sal_detectron2-$D2_VERSION"
rm -f "$root"/detectron2/_C*.so
rm -rf "$root/tools"  # upstream's example scripts as a top-level package named `tools`
info="$root/sal_detectron2-$D2_VERSION.dist-info"
sed -i '/^tools$/d' "$info/top_level.txt"
# Its metadata asks for numpy<2 (runs on 2.x), black and tensorboard (never imported at run time).
sed -i -e '/^Requires-Dist: numpy<2$/d' -e '/^Requires-Dist: black$/d' -e '/^Requires-Dist: tensorboard$/d' "$info/METADATA"
sed -i -e 's/^Root-Is-Purelib: .*/Root-Is-Purelib: true/' -e 's/^Tag: .*/Tag: py3-none-any/' "$info/WHEEL"
mkdir -p "$tmp/out"
wheel_ pack --dest-dir "$tmp/out" "$root" >/dev/null

pip_ install --quiet --no-deps "$tmp/out/sal_detectron2-$D2_VERSION-py3-none-any.whl"
pip_ install --quiet "${DEPS[@]}"

if ! check >/dev/null; then
    echo "install_detectron2: detectron2 still does not import in $VENV" >&2
    exit 1
fi
echo "installed detectron2 (sal-detectron2==$D2_VERSION, no _C ops) into $VENV in $(( $(date +%s) - start )) s"
