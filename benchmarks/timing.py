"""Timers and memory probes.

Timing
* CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` (with all of torch's
  threads, not its default of one) for calls shorter than ``min_time / 5``; slower
  calls are timed one by one with ``perf_counter``, at least ``min_samples`` times.
* CUDA: CUDA events around blocks of back-to-back calls (so launch overhead is
  counted, as in training), the block size chosen so a block lasts >= ~1 ms.
* ``time_with_setup`` (the backward alone): per sample, an untimed setup (the
  forward) then the timed call; CUDA events on GPU, ``perf_counter`` + sync on CPU.

Every timed callable draws its inputs from a ``Rotator`` (several input sets used
in turn, together larger than the last-level cache) so caches do not flatter.
Results are per-call milliseconds: median, p20, p80 over the samples.

Memory
* ``SavedBytes``: a ``torch.autograd.graph.saved_tensors_hooks`` probe that sums the
  storages saved for backward (each storage once). ``held`` also counts the output
  and leaves out the caller's inputs and parameters: the activation memory a
  layer adds between forward and backward, the quantity the memory target is about.
  Works on every device, with eager, torch.compile and custom ops.
* ``cuda_peak``: ``torch.cuda.max_memory_allocated`` over one call, minus what was
  allocated before it; ``cpu_peak``: the same from the CPU allocation events that
  ``torch.profiler(profile_memory=True)`` records (None where that is unavailable).
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import math
import os
import statistics
import sys
import time
from typing import Callable, Iterable, Optional, Sequence

import torch


@dataclasses.dataclass
class Stats:
    """Per-call times in milliseconds."""
    median_ms: float
    p20_ms: float
    p80_ms: float
    mean_ms: float
    samples: int           # number of samples the quantiles are taken over
    calls_per_sample: int  # calls averaged into one sample (blocked timing)
    method: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _quantile(xs: Sequence[float], q: float) -> float:
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def stats_from(samples_s: Sequence[float], calls_per_sample: int, method: str) -> Stats:
    ms = [s * 1e3 for s in samples_s]
    return Stats(_quantile(ms, 0.5), _quantile(ms, 0.2), _quantile(ms, 0.8), statistics.fmean(ms),
                 len(ms), int(calls_per_sample), method)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------ input rotation
def cache_bytes(device: str) -> int:
    """Size of the cache to defeat: the GPU's L2, or the CPU's last-level cache."""
    if device == "cuda":
        try:
            return int(torch.cuda.get_device_properties(0).L2_cache_size)
        except Exception:  # noqa: BLE001
            return 50 << 20
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for idx in os.listdir(base):
            try:
                with open(os.path.join(base, idx, "size")) as f:
                    s = f.read().strip().upper()
                mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1], 1)
                best = max(best, int(s.rstrip("KMG")) * mult)
            except (OSError, ValueError):
                continue
    except OSError:
        pass
    return best or (32 << 20)


def rotation_count(bytes_per_set: int, device: str, max_sets: int = 8,
                   max_total: int = 2 << 30) -> int:
    """How many input sets to rotate through: together >= 2x the cache, 2..max_sets,
    and no more than `max_total` bytes in all (at least 2 sets whatever the size)."""
    want = math.ceil(2 * cache_bytes(device) / max(1, bytes_per_set))
    cap = max(2, max_total // max(1, bytes_per_set))
    return int(max(2, min(max_sets, want, cap)))


class Rotator:
    """Cycles through input sets: ``next()`` returns the next one."""

    def __init__(self, sets: Sequence):
        if not sets:
            raise ValueError("Rotator needs at least one input set")
        self.sets = list(sets)
        self.i = -1

    def next(self):
        self.i = (self.i + 1) % len(self.sets)
        return self.sets[self.i]

    def __len__(self):
        return len(self.sets)


# ------------------------------------------------------------------------- timers
def _cpu_time(fn: Callable[[], object], min_time: float, min_samples: int, max_samples: int) -> Stats:
    # Slow calls (one call >= min_time / 5): one call per sample, timed with perf_counter
    # (Timer.timeit(n) would run 2 extra warm-up calls per sample). The fastest of a few
    # calls is the estimate: one call can be delayed by the OS.
    probes: list[float] = []
    while len(probes) < 5 and sum(probes) < min_time:
        t0 = time.perf_counter()
        fn()
        probes.append(time.perf_counter() - t0)
    one = min(probes)
    if one * 5 >= min_time:
        times = list(probes)
        n = int(min(max_samples, max(min_samples, math.ceil(min_time / max(one, 1e-9)))))
        while len(times) < n:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return stats_from(times, 1, "perf_counter per call (slow calls)")
    from torch.utils import benchmark as tb

    timer = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_time)
    times = list(m.times)
    while len(times) < min_samples:  # very few blocks: add some
        times += list(timer.timeit(m.number_per_run).times)
    return stats_from(times, m.number_per_run, "torch.utils.benchmark.Timer.blocked_autorange")


def _cuda_time(fn: Callable[[], object], min_time: float, min_samples: int, max_samples: int) -> Stats:
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    one = max(start.elapsed_time(end) / 1e3, 1e-6)
    per_block = max(1, min(1000, int(1e-3 / one)))           # a block lasts >= ~1 ms
    n = int(min(max_samples, max(min_samples, math.ceil(min_time / (one * per_block)))))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(n)]
    for s, e in events:
        s.record()
        for _ in range(per_block):
            fn()
        e.record()
    torch.cuda.synchronize()
    times = [s.elapsed_time(e) / 1e3 / per_block for s, e in events]
    return stats_from(times, per_block, "cuda-events (blocks of back-to-back calls)")


def time_callable(fn: Callable[[], object], device: str, *, min_time: float = 0.3,
                  min_samples: int = 3, max_samples: int = 200) -> Stats:
    """Per-call time of `fn` (already warmed up)."""
    if device == "cuda":
        return _cuda_time(fn, min_time, min_samples, max_samples)
    return _cpu_time(fn, min_time, min_samples, max_samples)


def time_with_setup(setup: Callable[[], object], fn: Callable[[object], object], device: str, *,
                    min_time: float = 0.3, min_samples: int = 3, max_samples: int = 200,
                    max_wall: Optional[float] = None) -> Stats:
    """Per-call time of ``fn(setup())``, the setup untimed (e.g. time the backward alone)."""
    max_wall = max_wall if max_wall is not None else 6 * min_time + 1.0
    times: list[float] = []
    wall0 = time.perf_counter()
    cuda = device == "cuda"
    while True:
        state = setup()
        if cuda:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn(state)
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
        else:
            t0 = time.perf_counter()
            fn(state)
            times.append(time.perf_counter() - t0)
        del state
        n, total = len(times), sum(times)
        if n >= max_samples:
            break
        if n >= min_samples and (total >= min_time or time.perf_counter() - wall0 >= max_wall):
            break
    return stats_from(times, 1, "cuda-events per call after an untimed setup" if cuda
                      else "perf_counter per call after an untimed setup")


# ------------------------------------------------------------------------- memory
def _storage_key(t: torch.Tensor):
    try:
        st = t.untyped_storage()
        return (t.device.type, t.device.index, st.data_ptr()), st.nbytes()
    except Exception:  # noqa: BLE001 - sparse/meta/odd tensors: count their own size
        return (t.device.type, id(t)), t.numel() * t.element_size()


class SavedBytes:
    """Context manager: which storages the forward inside saves for backward.

    ``saved``: bytes of all distinct saved storages. ``held(outputs, exclude)``: the
    saved storages plus the outputs', minus those of `exclude` (inputs, parameters).
    """

    def __init__(self):
        self.storages: dict = {}
        self._cm = None

    def _pack(self, t):
        k, n = _storage_key(t)
        self.storages[k] = n
        return t

    @staticmethod
    def _unpack(t):
        return t

    def __enter__(self):
        self._cm = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._cm.__enter__()
        return self

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        return False

    @property
    def saved(self) -> int:
        return sum(self.storages.values())

    def held(self, outputs: Iterable[torch.Tensor] = (), exclude: Iterable[torch.Tensor] = ()) -> int:
        keys = dict(self.storages)
        for t in outputs:
            if isinstance(t, torch.Tensor):
                k, n = _storage_key(t)
                keys[k] = n
        for t in exclude:
            if isinstance(t, torch.Tensor):
                keys.pop(_storage_key(t)[0], None)
        return sum(keys.values())


@contextlib.contextmanager
def _quiet_stderr():
    """Silence fd 2 (the profiler's kineto prints start/stop lines there)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cpu_peak(fn: Callable[[], object]) -> Optional[int]:
    """Peak CPU bytes allocated while `fn` runs, above what was allocated before.

    From the allocation events of ``torch.profiler`` (profile_memory=True): the
    running sum of their sizes in time order. None if the profiler's event tree
    is not available in this torch.
    """
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    try:
        tree = prof.profiler.kineto_results.experimental_event_tree()
    except Exception:  # noqa: BLE001 - private API: degrade to "unknown"
        return None
    events, stack = [], list(tree)
    while stack:
        n = stack.pop()
        ef = n.extra_fields
        if type(ef).__name__ == "_ExtraFields_Allocation" and ef.device.type == "cpu":
            events.append((n.start_time_ns, int(ef.alloc_size)))
        stack.extend(n.children)
    events.sort()
    run = peak = 0
    for _, size in events:
        run += size
        peak = max(peak, run)
    return int(peak)


def cuda_peak(fn: Callable[[], object]) -> int:
    """Peak bytes allocated while `fn` runs, above what was allocated before."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - base)


def steady_cpu_allocator() -> str:
    """Make glibc keep large freed blocks for reuse (mallopt M_MMAP_THRESHOLD and
    M_TRIM_THRESHOLD = 1 GiB), as jemalloc/tcmalloc do, the allocators PyTorch's CPU
    tuning guide recommends.

    By default glibc serves a block above its dynamic mmap threshold (at most 32 MiB)
    with a fresh mmap and unmaps it on free, so every call that allocates a large
    tensor pays its page faults again: measured here, 20-35% of a D2 block at batch
    256 (e.g. eager channels_last 324 -> 256 ms), and how much depends on what the
    process allocated before, which made case timings drift by the order they ran in.
    Applies to every variant alike. Returns what was set, for the result file.
    """
    if not sys.platform.startswith("linux"):
        return "system default (not Linux)"
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = (libc.mallopt(m_mmap_threshold, 1 << 30) == 1
              and libc.mallopt(m_trim_threshold, 1 << 30) == 1)
    except (OSError, AttributeError) as e:  # not glibc
        return f"system default ({e})"
    return ("glibc, mallopt M_MMAP_THRESHOLD = M_TRIM_THRESHOLD = 1 GiB (large tensors reused, "
            "not mmapped and page-faulted per call)" if ok else "system default (mallopt refused)")

