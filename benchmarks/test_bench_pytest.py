"""The benchmark cases under pytest-benchmark, for users who keep their own history.

    pytest benchmarks/ --benchmark-only                          # the --quick selection
    GAN_FAST_BENCH="--ops bn_act,gan_loss" pytest benchmarks/ --benchmark-only
    pytest benchmarks/ --benchmark-only --benchmark-autosave     # keep a history

One test per (case, mode, variant), grouped by case and mode so pytest-benchmark
compares the variants of one shape side by side. A variant that cannot run here is
a skipped test whose reason says why. Inputs are rotated as in ``python -m
benchmarks``; each round is synchronised on CUDA. A case with its own thread count
(the dispatch family: one thread) runs with it; pytest-benchmark times the variants
one after the other, not interleaved as ``python -m benchmarks --ops dispatch`` does.
"""
from __future__ import annotations

import gc
import os
import shlex

import pytest

pytest.importorskip("pytest_benchmark")

import torch  # noqa: E402

from benchmarks import runner, variants  # noqa: E402
from benchmarks.__main__ import _parser, options_from_args  # noqa: E402


def _options():
    args = _parser().parse_args(shlex.split(os.environ.get("GAN_FAST_BENCH", "--quick")))
    return options_from_args(args).resolve()


OPTS = _options()


def _params():
    out = []
    for case in runner.plan(OPTS):
        for name in OPTS.variants:
            v = variants.parse(name)
            why = variants.unavailable(v, OPTS.device, OPTS)
            if why is None and case.variant_filter and case.variant_filter(v, OPTS):
                why = ("skipped", case.variant_filter(v, OPTS))
            for mode in case.modes:
                if OPTS.modes and mode not in OPTS.modes:
                    continue
                marks = [pytest.mark.skip(reason=f"{name}: {why[0]} ({why[1]})")] if why else []
                out.append(pytest.param(case, v, mode, id=f"{case.key}-{mode}-{name}", marks=marks))
    return out


def _sync():
    if OPTS.device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("case,variant,mode", _params())
def test_bench(benchmark, case, variant, mode):
    benchmark.group = f"{case.key} {mode}"
    benchmark.extra_info.update(op=case.op, case=case.label, batch=case.batch, dtype=case.dtype,
                                format=case.fmt, mode=mode, variant=variant.name, shape=case.shape,
                                device=OPTS.device)
    bench = None
    threads = torch.get_num_threads()
    if case.threads:
        torch.set_num_threads(case.threads)
    try:
        with variant.active():
            try:
                bench = case.build(variant)
            except variants.Unavailable as e:
                pytest.skip(str(e))
            it = bench.iteration("fwd+bwd" if mode == "bwd" else mode)  # eval cases: fwd only
            for _ in range(1 + OPTS.warmup):  # the first call compiles torch.compile variants
                it()
            _sync()
            if mode == "bwd":
                def setup():
                    state = bench.setup_bwd()
                    _sync()
                    return (state,), {}

                def target(state):
                    bench.run_bwd(state)
                    _sync()
                benchmark.pedantic(target, setup=setup, rounds=20, iterations=1)
            else:
                fn = bench.iteration(mode)

                def target():
                    fn()
                    _sync()
                benchmark(target)
    finally:
        torch.set_num_threads(threads)
        bench = None  # noqa: F841 - frees the models and inputs before the next test
        if variant.is_compiled:
            variants.compile_reset()
        gc.collect()
