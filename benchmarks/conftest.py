"""pytest set-up for the benchmark cases (``pytest benchmarks/ --benchmark-only``).

The benchmark files are collected only when ``benchmarks`` (or a file in it) is
named on the command line: a plain ``pytest`` from the repository root, or
``pytest tests``, never runs them. The selection follows the ``python -m
benchmarks`` options given in the GAN_FAST_BENCH environment variable (default
``--quick``), e.g.::

    GAN_FAST_BENCH="--ops bn_act --batch 256" pytest benchmarks/ --benchmark-only
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def _named_on_command_line(config) -> bool:
    for arg in config.args:
        path = os.path.abspath(str(arg).split("::")[0])
        if path == HERE or path.startswith(HERE + os.sep):
            return True
    return False


def pytest_ignore_collect(collection_path, config):
    if not _named_on_command_line(config):
        return True
    return None
