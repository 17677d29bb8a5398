#!/usr/bin/env bash
# Build gan_fast._C with its CUDA kernels against a CUDA build of torch, on a machine
# without a GPU, and check what can be checked there:
#
#   bash scripts/build_cuda_extension.sh [--jobs N]
#
# 1. a separate venv ($CUDATORCH_VENV, default /tmp/cudatorch) with torch==$CUDATORCH_VERSION
#    (default 2.14.1, a CUDA build: pip takes it from the local wheel store, ~5.5 GB;
#    reused when present), plus setuptools, wheel, ninja;
# 2. a clean copy of the committed HEAD ($CUDABUILD_DIR, default /tmp/cudabuild: `git clone`,
#    so the checkout's own in-tree gan_fast/_C*.so is never touched);
# 3. `pip install --no-build-isolation .` there (CPU + CUDA kernels, GAN_FAST_CUDA_ARCH
#    default "80;90a", MAX_JOBS default 2), then the JIT build path
#    (gan_fast._cuda_jit, torch.utils.cpp_extension.load) of the same sources;
# 4. scripts/check_cuda_extension.py in that venv: import gan_fast._C with every symbol
#    resolved (RTLD_NOW, plus `ldd -r`), every gan_fast_C op has a CUDA kernel registered,
#    and a fused DCGAN training step traced by torch.compile on CUDA fake tensors.
#
# Takes ~10-20 min on 2 cores (the pip download of torch aside). Run it when csrc/,
# setup.py or gan_fast/_build_flags.py change (too heavy for every CI run).
# Writes the log to $CUDABUILD_DIR.log and prints a one-line verdict; exit 0 = all passed.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${CUDATORCH_VENV:-/tmp/cudatorch}
TORCH_VERSION=${CUDATORCH_VERSION:-2.14.1}
DIR=${CUDABUILD_DIR:-/tmp/cudabuild}
export MAX_JOBS=${MAX_JOBS:-2}
export GAN_FAST_CUDA_ARCH=${GAN_FAST_CUDA_ARCH:-80;90a}
[ "${1:-}" = "--jobs" ] && MAX_JOBS=$2
START=$SECONDS
step() { echo "== [$((SECONDS - START))s] $*"; }

step "venv $VENV with torch==$TORCH_VERSION"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" || exit 1
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION' or torch.version.cuda is None)" 2>/dev/null; then
  "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" || { echo "FAIL: pip install torch==$TORCH_VERSION"; exit 1; }
fi
"$VENV/bin/python" -c "import setuptools, wheel, ninja" 2>/dev/null || "$VENV/bin/pip" install -q setuptools wheel ninja || exit 1
PY="$VENV/bin/python"
export PATH="$VENV/bin:$PATH"
if [ -z "${CUDA_HOME:-}" ]; then
  # the toolkit root: where include/cuda_runtime.h is. Not simply nvcc's parent: on this
  # machine /usr/local/bin/nvcc is a wrapper script (exec /usr/local/cuda-13.0/bin/nvcc),
  # so that gave CUDA_HOME=/usr/local and the host compile of bindings_cuda.cpp failed on
  # "cuda_runtime.h: No such file or directory" (2026-12-01).
  NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  for c in "$(dirname "$(readlink -f "$NVCC")")/.." \
           "$(sed -n 's|^exec \(/[^ ]*\)/bin/nvcc .*|\1|p' "$NVCC" 2>/dev/null | head -n 1)" /usr/local/cuda; do
    [ -n "$c" ] && [ -f "$c/include/cuda_runtime.h" ] && { CUDA_HOME=$(cd "$c" && pwd); break; }
  done
  [ -n "${CUDA_HOME:-}" ] || { echo "FAIL: no CUDA toolkit with include/cuda_runtime.h (set CUDA_HOME)"; exit 1; }
  export CUDA_HOME
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
echo "nvcc: $("$CUDA_HOME/bin/nvcc" --version | tail -n 2 | head -n 1) (CUDA_HOME=$CUDA_HOME)"

step "clean copy of HEAD $(git -C "$ROOT" rev-parse --short HEAD) in $DIR"
rm -rf "$DIR"
git clone -q --no-hardlinks "$ROOT" "$DIR" || exit 1
cd "$DIR" || exit 1

step "pip install --no-build-isolation . (GAN_FAST_CUDA_ARCH=$GAN_FAST_CUDA_ARCH MAX_JOBS=$MAX_JOBS)"
t0=$SECONDS
if ! "$PY" -m pip install --no-build-isolation --no-deps -v . >"$DIR/pip-build.log" 2>&1; then
  tail -n 40 "$DIR/pip-build.log"
  echo "FAIL: the build failed (log $DIR/pip-build.log)"
  exit 1
fi
BUILD_S=$((SECONDS - t0))
grep -E "nvcc|Compiling objects|g\+\+ .*-shared" "$DIR/pip-build.log" | grep -c nvcc | sed 's/^/nvcc invocations: /'
echo "build: ${BUILD_S}s"

step "checks (import, symbols, CUDA dispatch key, JIT build, torch.compile on CUDA fake tensors)"
cd /tmp || exit 1   # import the installed package, not the source tree
TORCH_EXTENSIONS_DIR="$DIR/jit" "$PY" "$ROOT/scripts/check_cuda_extension.py" --src "$DIR"
rc=$?
echo "build_cuda_extension: $([ $rc = 0 ] && echo PASS || echo FAIL) in $((SECONDS - START))s" \
  "(torch $TORCH_VERSION, git $(git -C "$DIR" rev-parse --short HEAD), $(date -u +%Y-%m-%d))"
exit $rc
