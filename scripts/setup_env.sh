# Sourced by the quick-start scripts: make (or reuse) a virtual environment with
# torch, then build and install gan_fast into it. Safe to run again.
#  - a python that already has torch (e.g. a GPU machine) -> the venv sees it
#    (--system-site-packages) and no torch is installed;
#  - otherwise the CPU build of torch 2.13.0 is installed (never the multi-GB CUDA one).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GAN_FAST_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    if "$PY" -c "import torch" 2>/dev/null; then
        echo "setup: reusing the torch found in $PY"
        "$PY" -m venv --system-site-packages "$VENV"
    else
        "$PY" -m venv "$VENV"
    fi
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" 2>/dev/null; then
    echo "setup: installing the CPU build of torch 2.13.0"
    python -m pip install -q "torch==2.13.0"
fi
if ! python -c "import triton" 2>/dev/null; then
    # Triton runs its kernels on CPU tensors under TRITON_INTERPRET=1 (the tests do).
    python -m pip install -q "triton==3.6.0" || echo "setup: triton unavailable; its tests will be skipped"
fi
# --no-build-isolation: build the extension against the torch above, not a fresh one.
STAMP="$VENV/.gan_fast_build_stamp"
SRC_HASH="$(cd "$ROOT" && cat setup.py pyproject.toml $(find csrc -type f | sort) | sha1sum | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$SRC_HASH" ] || ! python -c "import gan_fast" 2>/dev/null; then
    echo "setup: building and installing gan_fast (C++ extension: about 2 minutes on 2 cores)"
    python -m pip install -q --no-build-isolation -e "$ROOT[test,train,bench]"
    echo "$SRC_HASH" > "$STAMP"
fi
