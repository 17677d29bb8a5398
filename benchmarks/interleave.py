"""Interleaved timing of one case over all its variants (``Case.interleaved``).

For host-bound calls (``bench_dispatch``) the differences between variants are a few
microseconds, less than the drift of a shared machine over the seconds that timing
one variant after the other takes. So every variant is built first; then each
repetition runs one batch of calls of every variant in turn (the order rotated from
one repetition to the next), and the reported time is the median over repetitions
of a batch's time per call. On CUDA each batch is synchronised once, after its last
call (the host time of back-to-back calls, as in training), never per call. The
case's torch thread count (``Case.threads``) is set for the whole case and restored.

Per variant the record has the runner's usual fields (``runner.run_pair``): status,
build_s, first_call_s (compiles torch.compile variants, never timed),
max_rel_diff_vs_eager (the first forward's output), timings[mode].
"""
from __future__ import annotations

import gc
import time
import traceback

import torch

from benchmarks import timing, variants
from benchmarks.common import Case, Options
from benchmarks.variants import Unavailable

BATCH_S = 0.003       # a batch of calls lasts about this long
MIN_REPS, MAX_REPS = 21, 400


def _short(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}".strip()
    return (msg.splitlines()[0] if msg else type(e).__name__)[:300]


def _first(obj):
    return obj if isinstance(obj, torch.Tensor) else next(t for t in obj if isinstance(t, torch.Tensor))


def _prepare(case: Case, v, mode: str, device: str, warmup: int, ref: dict, rec: dict):
    """Build, run the first (compiling) call, compare its output with eager's, warm up."""
    t0 = time.perf_counter()
    bench = case.build(v)
    rec["build_s"] = round(time.perf_counter() - t0, 3)
    s = bench.rotator.sets[0]
    t0 = time.perf_counter()
    bench._pre()
    out = bench.forward(*s)
    first = _first(out).detach().float().clone()
    if mode != "fwd":
        bench.backward(out, s)
    timing.sync(device)
    rec["first_call_s"] = round(time.perf_counter() - t0, 3)
    if v.name == "eager":
        ref["out"] = first
    elif "out" in ref:
        b = ref["out"]
        rec["max_rel_diff_vs_eager"] = (float("inf") if first.shape != b.shape else
                                        float((first - b).abs().max()) / max(1.0, float(b.abs().max())))
    it = bench.iteration(mode)
    for _ in range(max(1, warmup) * 5):
        it()
    timing.sync(device)
    return bench


def _batch(v, it, calls: int, device: str) -> float:
    """Seconds per call over one batch of `calls` back-to-back calls, synchronised once."""
    with v.active():
        t0 = time.perf_counter()
        for _ in range(calls):
            it()
        timing.sync(device)
        return (time.perf_counter() - t0) / calls


def _time_mode(entries, mode: str, opts: Options) -> dict:
    """{variant name: Stats} for `mode`, the variants alternating within each repetition."""
    its = [(v, b.iteration(mode)) for v, b, _ in entries]
    one = max(_batch(v, it, 3, opts.device) for v, it in its)
    calls = int(min(500, max(4, BATCH_S / max(one, 1e-7))))
    samples = {v.name: [] for v, _ in its}
    budget = max(opts.min_time, 0.05) * len(its) * 2
    t_end = time.perf_counter() + budget
    reps = 0
    gc_was = gc.isenabled()
    gc.disable()
    try:
        while reps < MAX_REPS and (reps < MIN_REPS or time.perf_counter() < t_end):
            k = reps % len(its)
            for v, it in its[k:] + its[:k]:
                samples[v.name].append(_batch(v, it, calls, opts.device))
            reps += 1
    finally:
        if gc_was:
            gc.enable()
    method = (f"interleaved: {reps} repetitions, each a batch of {calls} calls per variant in "
              f"rotating order{', synchronised once per batch' if opts.device == 'cuda' else ''}")
    return {name: timing.stats_from(xs, calls, method) for name, xs in samples.items()}


def run_case(case: Case, todo: list, opts: Options, log) -> list[dict]:
    """Records for every variant in `todo` (eager first), timed together."""
    old_threads = torch.get_num_threads()
    if case.threads:
        torch.set_num_threads(case.threads)
    recs, entries, ref = [], [], {}
    mode0 = case.modes[0]
    try:
        for v in todo:
            rec = {"variant": v.name, "status": "ok", "reason": None, "timings": {},
                   "threads": torch.get_num_threads()}
            recs.append(rec)
            wall0 = time.perf_counter()
            try:
                with v.active():
                    entries.append((v, _prepare(case, v, mode0, opts.device, opts.warmup, ref, rec), rec))
            except Unavailable as e:
                rec.update(status="n/a", reason=str(e))
            except Exception as e:  # noqa: BLE001 - record and go on
                rec.update(status="error", reason=_short(e), traceback=traceback.format_exc(limit=6)[-2000:])
            rec["wall_s"] = round(time.perf_counter() - wall0, 2)
        for mode in [m for m in case.modes if not opts.modes or m in opts.modes]:
            if not entries:
                break
            t0 = time.perf_counter()
            try:
                stats = _time_mode(entries, mode, opts)
            except Exception as e:  # noqa: BLE001
                for _, _, rec in entries:
                    rec.update(status="error", reason=_short(e), traceback=traceback.format_exc(limit=6)[-2000:])
                break
            share = (time.perf_counter() - t0) / len(entries)
            for v, _, rec in entries:
                rec["timings"][mode] = stats[v.name].to_dict()
                rec["wall_s"] = round(rec["wall_s"] + share, 2)
    finally:
        entries.clear()
        torch.set_num_threads(old_threads)
        if any(v.is_compiled for v in todo):
            variants.compile_reset()
        gc.collect()
        if opts.device == "cuda":
            torch.cuda.empty_cache()
    return recs
