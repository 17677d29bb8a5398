"""The ``gan-fast`` command: ``info``, ``train``, ``eval``, ``bench``, ``aot``."""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys

BENCH_HOWTO = ("gan-fast bench: the benchmark suite is not installed with the package; it lives in "
               "the benchmarks/ folder of the gan_fast source repository. Clone the repository and "
               "run `python -m benchmarks [options]` from its root (or `gan-fast bench [options]` "
               "from there), after `pip install --no-build-isolation -e '.[bench]'` in it.")


def info() -> int:
    """Print versions and which backends can run, and why not."""
    import torch

    import gan_fast
    from gan_fast import backends

    print(f"gan_fast {gan_fast.__version__}  python {platform.python_version()}  torch {torch.__version__}")
    try:
        import triton
        print(f"triton {triton.__version__}")
    except ImportError:
        print("triton: not installed")
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"CUDA device: {cuda} (torch built with CUDA {torch.version.cuda})")
    print(f"CUDA kernels: {backends.cuda_kernels_origin()}")
    print(f"backend requested: {backends.requested()}")
    for (name, device), reason in backends.report().items():
        print(f"  {name:9s} on {device:4s}: {'available' if reason is None else 'unavailable: ' + reason}")
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        print(f"  auto on {device} -> {backends.resolve_name(device) if backends.requested() == 'auto' else '-'}")
    return 0


def _delegate(module: str, argv) -> int:
    return importlib.import_module(module).main(argv) or 0


def _source_roots() -> list[str]:
    """Where a source checkout may be: above this package (an editable install), and the cwd."""
    return [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.getcwd()]


def bench(argv) -> int:
    """`gan-fast bench`: the suite in benchmarks/ of a source checkout; it is not in the wheel."""
    for root in _source_roots():
        if all(os.path.isfile(os.path.join(root, "benchmarks", f)) for f in ("__main__.py", "runner.py")):
            if root not in sys.path:
                sys.path.insert(0, root)
            return _delegate("benchmarks.__main__", argv)
    print(BENCH_HOWTO, file=sys.stderr)
    return 2


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="gan-fast", description=__doc__)
    parser.add_argument("command", choices=["info", "train", "eval", "bench", "aot"])
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    args = parser.parse_args(argv[:1])
    rest = argv[1:]
    if args.command == "info":
        return info()
    if args.command == "bench":
        return bench(rest)
    if args.command == "aot":   # compile every Triton kernel for sm_80/sm_90a, no GPU needed
        return _delegate("gan_fast.aot", rest)
    return _delegate("gan_fast.train.cli", [args.command] + rest)


if __name__ == "__main__":
    sys.exit(main())
