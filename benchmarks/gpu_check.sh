#!/usr/bin/env bash
# GPU validation in one command, on a fresh GPU machine with only its preinstalled
# torch and no network: build the extension, run the test suite on CUDA, run
# compute-sanitizer (memcheck) over every CUDA/Triton kernel, run the benchmarks.
#
#   bash benchmarks/gpu_check.sh [--quick] [OUTDIR]
#
#   OUTDIR    where everything goes (default: $OUT if set, else
#             benchmarks/results/gpu-check-<UTC date>). At most 8 files:
#             summary.txt (environment, one line per phase), build.log, tests.log,
#             sanitizer.log, bench.log and the benchmark's <name>.json/.md/.png.
#   --quick   a ~3-minute check: CUDA/Triton tests only (-k "cuda or triton", stop at
#             the first failure; not the minutes-long CUDA JIT build test), a shorter
#             sanitizer pass, `python -m benchmarks --quick`.
#   The full run finishes inside 8 minutes (--quick inside 4): each phase has a time limit, and the
#   benchmarks get what is left (--budget), so a slow phase shortens, never overruns.
#
# Other options: --no-build (use the gan_fast._C already built), --allow-cpu (run
# without a GPU: only to try this script). Environment: PYTHON (default python3),
# GAN_FAST_CUDA_ARCH (default: this GPU's, e.g. 90), MAX_JOBS (default: nproc),
# GPU_CHECK_PYTEST_ARGS (replace the test selection), GPU_CHECK_WORKERS (pytest-xdist
# workers, default 8; 0 = none), GPU_CHECK_BENCH_ARGS (extra `python -m benchmarks` args;
# they come last, so e.g. "--batch 64,512" replaces the script's choice).
# Exit status: 0 if the build, the tests and the sanitizer passed (the benchmarks'
# numbers are reported, not judged), else 1.
set -u

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

QUICK=0
BUILD=1
ALLOW_CPU=0
OUTDIR=""
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    --no-build) BUILD=0 ;;
    --allow-cpu) ALLOW_CPU=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) echo "gpu_check: unknown option $arg" >&2; exit 2 ;;
    *) OUTDIR="$arg" ;;
  esac
done
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUTDIR=${OUTDIR:-${OUT:-benchmarks/results/gpu-check-$STAMP}}
mkdir -p "$OUTDIR" || exit 1
OUTDIR=$(cd "$OUTDIR" && pwd)
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # real GPU kernels, never the interpreter

if [ "$QUICK" = 1 ]; then TOTAL=180; else TOTAL=440; fi  # budgets: quick <= 4 min, full <= 8 min with start-up
START=$SECONDS
SUMMARY="$OUTDIR/summary.txt"
: >"$SUMMARY"
FAILED=0

left() { echo $((TOTAL - (SECONDS - START))); }
note() { echo "$*" | tee -a "$SUMMARY"; }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }

# phase NAME LIMIT_SECONDS CMD...: runs CMD with a time limit, output to NAME.log;
# prints the log's tail when it fails. Returns CMD's status (124: timed out).
phase() {
  local name=$1 limit=$2
  shift 2
  local log="$OUTDIR/$name.log" t0=$SECONDS rc
  if [ "$limit" -lt 5 ]; then
    note "$name: SKIPPED (no time left)"
    return 125
  fi
  echo "== $name (limit ${limit}s): $*" | tee -a "$log"
  timeout -s TERM -k 15 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  local how="rc=$rc"
  [ "$rc" = 124 ] && how="TIMED OUT after ${limit}s"
  note "$name: $how ($((SECONDS - t0)) s) -> $(basename "$log")"
  if [ "$rc" != 0 ]; then
    echo "---- last lines of $name.log ----"
    tail -n 25 "$log"
    echo "----"
  fi
  return $rc
}

# --------------------------------------------------------------------- environment
note "gan_fast gpu_check $([ "$QUICK" = 1 ] && echo --quick) at $STAMP UTC, git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty)'), out $OUTDIR"
{
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
  command -v nvcc >/dev/null && nvcc --version | tail -n 2 | head -n 1
  "$PY" - <<'EOF'
import platform, torch
print(f"python {platform.python_version()}  torch {torch.__version__}  CUDA {torch.version.cuda}  "
      f"cuda available: {torch.cuda.is_available()}"
      + (f"  device: {torch.cuda.get_device_name(0)} (sm_{''.join(map(str, torch.cuda.get_device_capability()))})"
         if torch.cuda.is_available() else ""))
try:
    import triton
    print(f"triton {triton.__version__}")
except ImportError:
    print("triton: not installed")
EOF
} 2>&1 | tee -a "$SUMMARY"

HAS_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [ "$HAS_CUDA" != 1 ] && [ "$ALLOW_CPU" != 1 ]; then
  note "FAIL: torch sees no CUDA device (pass --allow-cpu to try this script without one)"
  exit 1
fi
DEVICE=cpu
[ "$HAS_CUDA" = 1 ] && DEVICE=cuda

# --------------------------------------------------------------------------- build
if [ "$BUILD" = 1 ]; then
  if [ -z "${GAN_FAST_CUDA_ARCH:-}" ] && [ "$HAS_CUDA" = 1 ]; then
    GAN_FAST_CUDA_ARCH=$("$PY" -c "import torch; print('%d%d' % torch.cuda.get_device_capability())")
    export GAN_FAST_CUDA_ARCH
  fi
  export MAX_JOBS=${MAX_JOBS:-$(nproc)}
  note "build: GAN_FAST_CUDA_ARCH=${GAN_FAST_CUDA_ARCH:-default} MAX_JOBS=$MAX_JOBS"
  if [ "$QUICK" = 1 ]; then BLIMIT=$(min 120 $(($(left) - 55))); else BLIMIT=$(min 300 $(($(left) - 240))); fi
  if ! phase build "$BLIMIT" "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .; then
    note "build: pip install -e failed; trying python setup.py build_ext --inplace"
    phase build "$(($(left) - 50))" "$PY" setup.py build_ext --inplace || FAILED=1
  fi
else
  note "build: skipped (--no-build)"
fi
"$PY" - <<'EOF' 2>&1 | tee -a "$SUMMARY"
try:
    from gan_fast import backends
    for (name, dev), why in backends.report().items():
        print(f"backend {name:9s} on {dev:4s}: {'available' if why is None else 'UNAVAILABLE: ' + why}")
except Exception as e:
    print(f"gan_fast not importable: {type(e).__name__}: {e}")
EOF
if [ "$HAS_CUDA" = 1 ] && ! "$PY" -c "from gan_fast import backends as b; import sys; sys.exit(b.why_unavailable('cuda', 'cuda') is not None)" 2>/dev/null; then
  note "FAIL: the cuda backend is unavailable after the build (see build.log)"
  FAILED=1
fi

# --------------------------------------------------------------------------- tests
WORKERS=${GPU_CHECK_WORKERS:-8}
XDIST=()
if [ "$WORKERS" != 0 ] && "$PY" -c "import xdist" 2>/dev/null; then XDIST=(-n "$WORKERS"); fi
if [ -n "${GPU_CHECK_PYTEST_ARGS:-}" ]; then
  # shellcheck disable=SC2206
  TESTARGS=($GPU_CHECK_PYTEST_ARGS)
elif [ "$QUICK" = 1 ]; then
  TESTARGS=(tests -q -x -k "(cuda or triton) and not jit_build")  # the JIT build test takes minutes
else
  TESTARGS=(tests -q -ra)
fi
if [ "$QUICK" = 1 ]; then TLIMIT=$(min 40 $(($(left) - 60))); else TLIMIT=$(min 200 $(($(left) - 220))); fi
phase tests "$TLIMIT" "$PY" -m pytest "${TESTARGS[@]}" "${XDIST[@]}" -p no:cacheprovider || FAILED=1
grep -E "passed|failed|error" "$OUTDIR/tests.log" | tail -n 1 | sed 's/^/tests: /' | tee -a "$SUMMARY"

# ---------------------------------------------------------------------- sanitizer
if [ "$HAS_CUDA" = 1 ] && command -v compute-sanitizer >/dev/null; then
  if [ "$QUICK" = 1 ]; then SLIMIT=$(min 20 $(($(left) - 40))); else SLIMIT=$(min 90 $(($(left) - 160))); fi
  # no caching allocator: every tensor is its own allocation, so out-of-bounds accesses show
  phase sanitizer "$SLIMIT" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    compute-sanitizer --tool memcheck --leak-check no --error-exitcode 1 --print-limit 20 \
    "$PY" -m benchmarks.gpu_sanitize $([ "$QUICK" = 1 ] && echo --quick)
  rc=$?
  if [ "$rc" = 124 ]; then
    note "sanitizer: timed out: the kernels it reached are in sanitizer.log (not a failure)"
  elif [ "$rc" != 0 ]; then
    FAILED=1
  fi
  grep -E "ERROR SUMMARY|gpu_sanitize:" "$OUTDIR/sanitizer.log" | tail -n 2 | sed 's/^/sanitizer: /' | tee -a "$SUMMARY"
else
  note "sanitizer: SKIPPED ($([ "$HAS_CUDA" = 1 ] && echo 'compute-sanitizer not found' || echo 'no GPU'))"
fi

# ---------------------------------------------------------------------- benchmarks
BLEFT=$(($(left) - 25))
if [ "$QUICK" = 1 ]; then
  if [ "$DEVICE" = cuda ]; then V=eager,compile,gan_fast:auto,gan_fast:cuda,gan_fast:triton; else V=eager,compile,gan_fast:cpu; fi
  BENCH=(--quick --variants "$V")
else
  # what fits in the time left: the smallest and the largest batch, two loss kinds, every
  # variant (the complete GPU matrix: `python -m benchmarks --budget 0`, > 10 min)
  BENCH=(--batch 64,2048 --loss-kinds bce,hinge)
fi
# shellcheck disable=SC2206
EXTRA=(${GPU_CHECK_BENCH_ARGS:-})
phase bench "$((BLEFT + 20))" "$PY" -m benchmarks --device "$DEVICE" --out-dir "$OUTDIR" \
  --budget "$BLEFT" "${BENCH[@]}" "${EXTRA[@]}"
rc=$?
[ "$rc" != 0 ] && note "bench: the benchmark run did not finish cleanly (rc=$rc); see bench.log"
grep -E "^(json|md|png): " "$OUTDIR/bench.log" | sed 's/^/bench: /' | tee -a "$SUMMARY"
sed -n '/^| target/,/^$/p' "$OUTDIR/bench.log" | tee -a "$SUMMARY"

note "gpu_check: $([ "$FAILED" = 0 ] && echo PASS || echo FAIL) in $((SECONDS - START)) s; files in $OUTDIR:"
ls -1 "$OUTDIR" | tee -a "$SUMMARY"
exit "$FAILED"
