#!/usr/bin/env bash
# Compile-check the CUDA sources without a GPU.
#
#   .ci/check_cuda.sh            # from anywhere; exit status 0 = all good
#
# * every csrc/cuda/*.cu: `nvcc -c` for sm_80 and sm_90a, warnings as errors
#   (these files include no torch headers, so no torch is needed), with ptxas's
#   resource usage (registers, spill bytes, shared memory) printed per kernel and arch;
#   any spill store or load fails the check;
# * csrc/cuda/bindings_cuda.cpp: `g++ -fsyntax-only` against the torch headers of
#   the python on PATH (or $PYTHON), when that torch and the CUDA headers exist.
#   A CPU-only torch lacks c10/cuda/impl/cuda_cmake_macros.h; a one-line stub
#   stands in for it.
# Prints one line per file. Skips (exit 0) only when nvcc is absent.
# Environment: NVCC (compiler), PYTHON (for the torch headers), CHECK_CUDA_ARCHS
# (gencode list, default "80 90a").
set -u

cd "$(dirname "$0")/.." || exit 1

NVCC="${NVCC:-}"
if [ -z "$NVCC" ]; then
  if command -v nvcc >/dev/null 2>&1; then
    NVCC=nvcc
  elif [ -x /usr/local/cuda/bin/nvcc ]; then
    NVCC=/usr/local/cuda/bin/nvcc
  fi
fi
if [ -z "$NVCC" ]; then
  echo "check_cuda: SKIP: nvcc not found (set NVCC or install the CUDA toolkit); CUDA sources not checked"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

gencode=()
for a in ${CHECK_CUDA_ARCHS:-80 90a}; do
  gencode+=(-gencode "arch=compute_${a},code=sm_${a}")
done

status=0
shopt -s nullglob
cu_files=(csrc/cuda/*.cu)
if [ ${#cu_files[@]} -eq 0 ]; then
  echo "check_cuda: FAIL: no csrc/cuda/*.cu files found"
  exit 1
fi

for f in "${cu_files[@]}"; do
  start=$SECONDS
  if out="$("$NVCC" -c "$f" -o "$tmp/$(basename "$f").o" -std=c++17 "${gencode[@]}" \
            --threads 2 -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror -Xptxas -v 2>&1)"; then
    # ptxas -v: "Compiling entry function 'NAME' for 'sm_XX'", then "N bytes spill stores,
    # M bytes spill loads" and "Used R registers, ... S bytes smem"
    usage="$(printf '%s\n' "$out" | awk -f .ci/ptxas_usage.awk)"
    spill=$?
    if [ "$spill" = 0 ]; then
      echo "ok    $f (nvcc, ${CHECK_CUDA_ARCHS:-80 90a}, $((SECONDS - start))s)"
      printf '%s\n' "$usage"
    else
      echo "FAIL  $f (ptxas: spills)"
      printf '%s\n' "$usage"
      status=1
    fi
  else
    echo "FAIL  $f (nvcc)"
    printf '%s\n' "$out" | sed 's/^/      /'
    status=1
  fi
done

# Torch-side wrappers: syntax only (linking needs a CUDA build of torch).
bind=csrc/cuda/bindings_cuda.cpp
if [ -f "$bind" ]; then
  PY="${PYTHON:-python3}"
  tinc="$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "include"))' 2>/dev/null || true)"
  cuinc="$(dirname "$(command -v "$NVCC" 2>/dev/null || echo "$NVCC")")/../include"
  [ -f "$cuinc/cuda_runtime_api.h" ] || cuinc=/usr/local/cuda/include
  CXX="${CXX:-g++}"
  if [ -z "$tinc" ] || [ ! -d "$tinc" ]; then
    echo "skip  $bind (no torch importable by $PY)"
  elif [ ! -f "$cuinc/cuda_runtime_api.h" ]; then
    echo "skip  $bind (CUDA headers not found)"
  elif ! command -v "$CXX" >/dev/null 2>&1; then
    echo "skip  $bind ($CXX not found)"
  else
    mkdir -p "$tmp/stub/c10/cuda/impl"
    if [ ! -f "$tinc/c10/cuda/impl/cuda_cmake_macros.h" ]; then
      printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "$tmp/stub/c10/cuda/impl/cuda_cmake_macros.h"
    fi
    start=$SECONDS
    if out="$("$CXX" -fsyntax-only -std=c++17 -Wall -Wextra -Werror -DWITH_CUDA \
              -isystem "$tinc" -isystem "$tinc/torch/csrc/api/include" -isystem "$tmp/stub" \
              -isystem "$cuinc" "$bind" 2>&1)"; then
      echo "ok    $bind (syntax only, $((SECONDS - start))s)"
    else
      echo "FAIL  $bind (syntax)"
      printf '%s\n' "$out" | sed 's/^/      /'
      status=1
    fi
  fi
fi

exit $status
