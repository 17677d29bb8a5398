"""Plans the cases, runs every (case, variant) pair in one process, builds the result.

For each case (a shape / dtype / memory format point of one op) and each variant
that can run here: build fresh models and rotated inputs (same seed for every
variant), run one iteration (this compiles torch.compile variants: its time is
recorded as ``first_call_s`` and never timed), warm up, time each mode, compare the
forward output with eager's, and probe memory. A variant that cannot run is
recorded with its reason; an exception in one pair is recorded and the run goes on.

A time budget (``--budget``, seconds) bounds the run: cases are run in priority
order (first dtype/format, first batch, all ops, then the next batch ...), and those
left when the budget is spent are recorded as skipped, with that reason.
"""
from __future__ import annotations

import datetime as _dt
import gc
import os
import platform
import subprocess
import sys
import time
import traceback
from typing import Callable, Optional

import torch

from benchmarks import shapes, timing, variants
from benchmarks.common import OPS, Case, Options
from benchmarks.variants import Unavailable

SCHEMA = 1
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")


def _case_module(op: str):
    import importlib
    return importlib.import_module(f"benchmarks.bench_{op}")


def plan(opts: Options) -> list[Case]:
    """Every case of the selected ops, highest priority first."""
    out: list[Case] = []
    for op in opts.ops:
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}; choose from {OPS}")
        out += _case_module(op).cases(opts)
    out.sort(key=lambda c: c.priority)
    return out


# --------------------------------------------------------------------- environment
def _git(*args) -> Optional[str]:
    try:
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else None
    except Exception:  # noqa: BLE001
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict:
    env = {
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else _cpu_name(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "git_revision": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "models": shapes.models_source(),
    }
    try:
        import triton
        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        env["triton"] = None
    try:
        import gan_fast
        from gan_fast import backends
        env["gan_fast"] = gan_fast.__version__
        env["backends"] = {f"{n}@{d}": (r if r else "available") for (n, d), r in backends.report().items()}
    except Exception as e:  # noqa: BLE001
        env["gan_fast"] = f"not importable: {type(e).__name__}: {e}"
    if device == "cuda":
        env["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
        env["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
        env["matmul_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
        p = torch.cuda.get_device_properties(0)
        env["gpu_memory_bytes"] = int(p.total_memory)
        env["gpu_capability"] = f"{p.major}.{p.minor}"
    try:
        env["load_average_start"] = list(os.getloadavg())
    except OSError:
        pass
    return env


# ---------------------------------------------------------------------- the run
def _short(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}".strip()
    first = msg.splitlines()[0] if msg else type(e).__name__
    return first[:300]


def _max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    if a.shape != b.shape:
        return float("inf")
    scale = max(1.0, float(b.abs().max()))
    return float((a - b).abs().max()) / scale


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)


def _peak(mem: dict, device: str, fn) -> None:
    """Training peak of one iteration: CUDA allocator stats, or the CPU profiler's events."""
    if device == "cuda":
        mem["peak_bytes"] = timing.cuda_peak(fn)
        mem["peak_method"] = "torch.cuda.max_memory_allocated"
    else:
        try:
            peak = timing.cpu_peak(fn)
        except Exception as e:  # noqa: BLE001
            peak, mem["peak_error"] = None, _short(e)
        if peak is not None:
            mem["peak_bytes"] = peak
            mem["peak_method"] = "torch.profiler CPU allocation events"


def _probe(bench, case: Case, variant, opts: Options, ref_out: dict, rec: dict) -> None:
    """One untimed iteration on input set 0: its training peak (CUDA allocator stats or
    the CPU profiler), and under saved-tensor hooks the memory held for backward; its
    forward output is compared with eager's."""
    device = opts.device
    mem: dict = {}
    if case.modes == ("step",):
        # A step holds several graphs one after the other: only its peak is meaningful
        # ("held" would add up storages that are never alive together).
        if opts.memory:
            _peak(mem, device, bench.run_step)
            rec["memory"] = mem
        return
    exclude = list(_tensors(bench.rotator.sets)) + list(bench.exclude)
    s0 = bench.rotator.sets[0]

    def iteration():
        bench._pre()
        with timing.SavedBytes() as sb:
            out = bench.forward(*s0)
        mem["saved_bytes"], mem["held_bytes"] = sb.saved, sb.held(list(_tensors(out)), exclude)
        kept["out"] = next(_tensors(out)).detach()  # no copy: the peak stays the iteration's own
        bench.backward(out, s0)

    kept: dict = {}
    if opts.memory:
        _peak(mem, device, iteration)
        mem.update(bench.extras)
        rec["memory"] = mem
    else:
        iteration()
    if opts.check:
        out_t = kept["out"].clone() if variant.uses_cuda_graphs else kept["out"]
        if variant.name == "eager":
            ref_out[case.key] = out_t
        elif case.key in ref_out:
            rec["max_rel_diff_vs_eager"] = _max_rel_diff(out_t, ref_out[case.key])


def run_pair(case: Case, variant, opts: Options, ref_out: dict, log: Callable[[str], None]) -> dict:
    """Build, warm up, time, check and probe one (case, variant); returns its record."""
    rec = {"variant": variant.name, "status": "ok", "reason": None, "timings": {}}
    device = opts.device
    bench = None
    wall0, cpu0 = time.perf_counter(), time.process_time()
    try:
        with variant.active():
            t0 = time.perf_counter()
            bench = case.build(variant)
            rec["build_s"] = round(time.perf_counter() - t0, 3)
            it = bench.iteration("step" if case.modes == ("step",) else "fwd+bwd")
            t0 = time.perf_counter()
            it()  # compiles the torch.compile variants: never timed
            timing.sync(device)
            rec["first_call_s"] = round(time.perf_counter() - t0, 3)
            t0 = time.perf_counter()
            it()
            timing.sync(device)
            one = time.perf_counter() - t0
            # more warm-up for fast calls (caches, allocator, autotuned launch configs)
            for _ in range(max(0, opts.warmup - 1) if one < 0.2 else 0):
                it()
            timing.sync(device)
            if opts.memory or opts.check:
                try:
                    _probe(bench, case, variant, opts, ref_out, rec)
                except Exception as e:  # noqa: BLE001 - a probe problem is not a timing problem
                    rec["memory"] = {"error": _short(e)}
            for mode in [m for m in case.modes if not opts.modes or m in opts.modes]:
                if mode == "bwd":
                    st = timing.time_with_setup(bench.setup_bwd, bench.run_bwd, device,
                                                min_time=opts.min_time, min_samples=opts.min_samples)
                else:
                    st = timing.time_callable(bench.iteration(mode), device, min_time=opts.min_time,
                                              min_samples=opts.min_samples)
                rec["timings"][mode] = st.to_dict()
    except Unavailable as e:
        rec.update(status="n/a", reason=str(e))
    except Exception as e:  # noqa: BLE001 - record and go on
        rec.update(status="error", reason=_short(e), traceback=traceback.format_exc(limit=6)[-2000:])
        if device == "cuda":
            try:
                torch.cuda.synchronize()
            except Exception:  # noqa: BLE001
                pass
    finally:
        del bench
        if variant.is_compiled:
            variants.compile_reset()
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    rec["wall_s"] = round(time.perf_counter() - wall0, 2)
    rec["cpu_s"] = round(time.process_time() - cpu0, 2)  # all threads: ~wall x threads when quiet
    return rec


def _fmt_rec(rec: dict) -> str:
    if rec["status"] != "ok":
        return f"{rec['variant']}: {rec['status']} ({rec['reason']})"
    parts = [f"{m} {t['median_ms']:.3f}" for m, t in rec["timings"].items()]
    extra = f" [first call {rec.get('first_call_s', 0):.1f}s]" if rec.get("first_call_s", 0) > 1 else ""
    return f"{rec['variant']}: " + ", ".join(parts) + " ms" + extra


def run(opts: Options, log: Callable[[str], None] = None, argv=None) -> dict:
    """Run everything `opts` selects; returns the result dict (see report.py for its use)."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    opts = opts.resolve()
    if opts.device == "cuda":
        # as DCGAN training scripts do; the untimed first call of each pair autotunes
        torch.backends.cudnn.benchmark = True
    allocator = None
    if opts.device == "cpu":
        allocator = "system default (--system-malloc)" if opts.system_malloc else timing.steady_cpu_allocator()
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    deadline = t_start + opts.budget if opts.budget else float("inf")
    result = {"schema": SCHEMA, "env": environment(opts.device), "options": opts.to_dict(),
              "argv": list(argv) if argv is not None else None, "variants": {}, "cases": [],
              "complete": False}
    if allocator is not None:
        result["env"]["cpu_allocator"] = allocator
    # which variants can run here, once
    runnable = []
    for name in opts.variants:
        v = variants.parse(name)
        why = variants.unavailable(v, opts.device, opts)
        if why is None:
            result["variants"][name] = {"status": "ok", "reason": None}
            runnable.append(v)
        else:
            result["variants"][name] = {"status": why[0], "reason": why[1]}
            log(f"variant {name}: {why[0]} ({why[1]})")
    runnable.sort(key=lambda v: v.name != "eager")  # eager first: it is the check's reference
    cases = plan(opts)
    log(f"benchmarks: {len(cases)} cases x {len(runnable)} variants on {result['env']['device_name']} "
        f"({opts.device}, {torch.get_num_threads()} threads), budget "
        f"{'none' if not opts.budget else f'{opts.budget:.0f}s'}")
    la = result["env"].get("load_average_start")
    if opts.device == "cpu" and la and la[0] > 0.5 * (os.cpu_count() or 1):
        log(f"WARNING: load average {la[0]:.1f} on {os.cpu_count()} CPUs: other processes are running, "
            "the timings will be noisy (OpenMP regions stall when another process takes a core)")
    ref_out: dict = {}
    last_wall: dict = {}
    try:
        for i, case in enumerate(cases):
            crec = {"op": case.op, "case": case.label, "batch": case.batch, "dtype": case.dtype,
                    "format": case.fmt, "shape": case.shape, "describe": case.describe,
                    "modes": list(case.modes), "runs": []}
            result["cases"].append(crec)
            if case.threads:
                crec["threads"] = case.threads
            lines = []
            todo = []  # interleaved cases: the variants to build and time together
            for v in runnable:
                # skip a pair that would likely end well past the deadline (estimate: the
                # last pair of this op, variant and batch)
                guess = last_wall.get((case.op, v.name, case.batch), 0.0)
                if time.perf_counter() + 0.5 * guess >= deadline:
                    crec["runs"].append({"variant": v.name, "status": "skipped", "timings": {},
                                         "reason": f"time budget of {opts.budget:.0f}s used up (--budget)"})
                    continue
                why = case.variant_filter(v, opts) if case.variant_filter else None
                if why:
                    crec["runs"].append({"variant": v.name, "status": "skipped", "timings": {},
                                         "reason": why})
                    continue
                if case.interleaved:
                    todo.append(v)
                    continue
                rec = run_pair(case, v, opts, ref_out, log)
                last_wall[(case.op, v.name, case.batch)] = rec["wall_s"]
                crec["runs"].append(rec)
                lines.append(_fmt_rec(rec))
            if todo:
                from benchmarks import interleave
                for rec in interleave.run_case(case, todo, opts, log):
                    last_wall[(case.op, rec["variant"], case.batch)] = rec["wall_s"]
                    crec["runs"].append(rec)
                    lines.append(_fmt_rec(rec))
            ref_out.pop(case.key, None)
            elapsed = time.perf_counter() - t_start
            if lines:
                log(f"[{elapsed:6.1f}s {i + 1}/{len(cases)}] {case.key} {case.shape}\n    " + "\n    ".join(lines))
        result["complete"] = True
    except KeyboardInterrupt:
        log("interrupted: writing the results so far")
        result["interrupted"] = True
    result["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    result["process_cpu_s"] = round(time.process_time() - cpu_start, 1)
    try:
        result["env"]["load_average_end"] = list(os.getloadavg())
    except OSError:
        pass
    skipped = sum(1 for c in result["cases"] for r in c["runs"]
                  if r["status"] == "skipped" and r["reason"].startswith("time budget"))
    if skipped:
        log(f"WARNING: {skipped} (case, variant) pairs skipped: the time budget was used up")
    return result


def default_name(result: dict) -> str:
    env = result["env"]
    stamp = env["date_utc"].replace("-", "").replace(":", "").replace("T", "-").rstrip("Z")
    rev = (env.get("git_revision") or "norev")[:7]
    quick = "-quick" if result["options"].get("quick") else ""
    return f"{env['device']}-{stamp}-{rev}{quick}"
