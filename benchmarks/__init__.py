"""gan_fast benchmark suite: stock eager vs torch.compile vs each gan_fast backend.

    python -m benchmarks [--quick] [options]      # or: gan-fast bench [options]
    python -m benchmarks.report RESULT.json        # markdown table + PNG from a result
    pytest benchmarks/ --benchmark-only            # the same cases under pytest-benchmark

Modules: ``shapes`` (DCGAN models and layer shapes), ``timing`` (timers and memory
probes), ``variants`` (eager / compile / gan_fast backends, and why one cannot run),
``bench_<op>`` (the cases per op: ``bn_act``, ``blocks``, ``gan_loss``, ``step``),
``runner`` (plans and runs cases, writes the JSON), ``report`` (JSON -> markdown + PNG).
"""
