"""``python -m benchmarks`` / ``gan-fast bench``: every comparison, in one process.

Runs stock eager vs torch.compile (default, max-autotune, reduce-overhead) vs each
gan_fast backend, per op (bn_act, the fused conv blocks, gan_loss), per DCGAN
training step, and the host cost of one call on tiny tensors (dispatch), on the
device it finds, and writes under benchmarks/results/:
NAME.json (environment + every timing), NAME.md (tables, ratios, targets) and
NAME.png (speedup per shape and backend).

Examples:
  python -m benchmarks --quick                      # batch 64, first dtype/format, < 3 min on CPU
  python -m benchmarks                              # the full matrix for this device (< 10 min on 2 CPU cores)
  python -m benchmarks --dtype fp32,bf16 --format nchw,cl --budget 0   # CPU: add bf16 and channels_last
  python -m benchmarks --ops bn_act,gan_loss --batch 256 --dtype fp32 --format nchw
  python -m benchmarks --variants eager,gan_fast:cpu --no-memory
  python -m benchmarks --list                       # show the cases and variants, run nothing
  python -m benchmarks --ops dispatch              # host cost per call on tiny tensors (issue 12), ~1 min
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from benchmarks import shapes
from gan_fast.reference import LOSS_KINDS


def _parser() -> argparse.ArgumentParser:
    from benchmarks.common import MODES, OPS
    from benchmarks.variants import BACKENDS
    p = argparse.ArgumentParser(prog="gan-fast bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda if available, else cpu")
    a("--quick", action="store_true", help="batch 64, first dtype and format, bce loss only, shorter timings")
    a("--ops", default=",".join(OPS), help=f"comma list from {','.join(OPS)} (default: all)")
    a("--batch", default=None, help="batch sizes (default: 64,128,512,2048 on GPU; 64,256 on CPU)")
    a("--dtype", default=None, help="fp32,bf16,fp16 (default: bf16,fp32 on GPU; fp32 on CPU)")
    a("--format", default=None, help="nchw,cl (channels_last) (default: cl,nchw on GPU; nchw on CPU)")
    a("--block-format", default=None, help="formats of the block cases (default: the formats)")
    a("--modes", default=None, help=f"keep only these modes from {','.join(MODES)}")
    a("--variants", default=None,
      help="comma list: eager, compile, compile-max-autotune, compile-reduce-overhead, "
           "gan_fast:<backend>[+compile] (default: all of them but +compile)")
    a("--backends", default=None, help=f"keep only these gan_fast backends ({','.join(BACKENDS)})")
    a("--no-compile", action="store_true", help="drop the torch.compile variants")
    a("--layers", default=None, help="DCGAN layers to run (G1..G4, D2..D4; default: all)")
    a("--loss-kinds", default=None, help="bce,hinge,lsgan,wgan (default: all; --quick: bce)")
    a("--loss-sides", default="d,g", help="d,g (default: both)")
    a("--steps", default=None,
      help="gd_step (the trainer's whole step), d_step, g_step (default: all three on GPU; "
           "gd_step on CPU and with --quick)")
    a("--step-batch", default=None, help="batch sizes of the step cases (default: 64,512 on GPU; 64 on CPU)")
    a("--step-dtype", default=None, help="dtypes of the step cases (default: the first dtype)")
    a("--step-format", default=None, help="formats of the step cases (default: the first format)")
    a("--min-time", type=float, default=None, help="seconds of timed calls per measurement")
    a("--min-samples", type=int, default=3)
    a("--warmup", type=int, default=2, help="warm-up iterations after the first (compiling) call")
    a("--budget", type=float, default=None,
      help="seconds for the whole run, 0 = no limit (default 530, --quick 170): cases left when it is "
           "spent are recorded as skipped")
    a("--with-reference", action="store_true", help="also time the pure-PyTorch reference backend")
    a("--cpu-max-autotune", action="store_true", help="run compile-max-autotune on CPU too (slow to compile)")
    a("--autotune-all", action="store_true",
      help="run compile-max-autotune for the conv blocks and steps too (minutes per shape)")
    a("--no-check", action="store_true", help="do not compare forward outputs with eager's")
    a("--no-memory", action="store_true", help="skip the memory probes")
    a("--system-malloc", action="store_true",
      help="CPU: keep glibc's default allocator settings (by default large blocks are kept "
           "for reuse, see benchmarks.timing.steady_cpu_allocator)")
    a("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    a("--seed", type=int, default=0)
    a("--out-dir", default=None, help="output folder (default: benchmarks/results)")
    a("--name", default=None, help="output file stem (default: DEVICE-DATE-GITREV[-quick])")
    a("--no-png", action="store_true")
    a("--strict", action="store_true", help="exit 1 if any pair errored or a forward differs from eager")
    a("--list", action="store_true", help="print the planned cases and variants, run nothing")
    return p


def options_from_args(args):
    """argparse namespace -> benchmarks.common.Options (unresolved: defaults per device later)."""
    import torch

    from benchmarks import variants as V
    from benchmarks.common import MODES, OPS, Options
    pl = shapes.parse_list
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here")
    names = pl(args.variants)
    if names is None:
        names = V.default_names(device)
    for n in names:
        V.parse(n)  # validates
    backends = pl(args.backends, V.BACKENDS)
    if backends is not None:
        names = [n for n in names if not n.startswith("gan_fast:") or V.parse(n).backend in backends]
    if args.no_compile:
        names = [n for n in names if not V.parse(n).is_compiled]
    ints = lambda s: pl(s, cast=int)  # noqa: E731
    return Options(
        device=device, quick=args.quick, ops=pl(args.ops, OPS), batches=ints(args.batch),
        dtypes=pl(args.dtype, shapes.DTYPES), formats=pl(args.format, shapes.FORMATS),
        block_formats=pl(args.block_format, shapes.FORMATS),
        modes=pl(args.modes, MODES), variants=names,
        layers=pl(args.layers, {l.name for l in shapes.dcgan_layers()}),
        loss_kinds=pl(args.loss_kinds, set(LOSS_KINDS)),
        loss_sides=pl(args.loss_sides, {"d", "g"}), steps=pl(args.steps, {"gd_step", "d_step", "g_step"}),
        step_batches=ints(args.step_batch), step_dtypes=pl(args.step_dtype, shapes.DTYPES),
        step_formats=pl(args.step_format, shapes.FORMATS), min_time=args.min_time,
        min_samples=args.min_samples, warmup=args.warmup, budget=args.budget,
        with_reference=args.with_reference, cpu_max_autotune=args.cpu_max_autotune,
        autotune_all=args.autotune_all,
        check=not args.no_check, memory=not args.no_memory,
        system_malloc=args.system_malloc, seed=args.seed)


def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    try:
        opts = options_from_args(args)
    except ValueError as e:
        print(f"gan-fast bench: {e}", file=sys.stderr)
        return 2
    from benchmarks import report, runner, variants
    from benchmarks.report_data import failures
    from benchmarks.report_tables import targets_table
    if args.list:
        o = opts.resolve()
        for name in o.variants:
            why = variants.unavailable(variants.parse(name), o.device, o)
            print(f"variant {name}: " + ("runs" if why is None else f"{why[0]} ({why[1]})"))
        cases = runner.plan(o)
        for c in cases:
            print(f"{c.key:40s} {c.shape:40s} {','.join(c.modes):16s} {c.describe}")
        print(f"{len(cases)} cases; budget {o.budget or 'none'} s")
        return 0
    signal.signal(signal.SIGTERM, _sigterm)  # e.g. `timeout`: still write what was measured
    result = runner.run(opts, argv=argv)
    out_dir = args.out_dir or runner.RESULTS_DIR
    os.makedirs(out_dir, exist_ok=True)
    name = args.name or runner.default_name(result)
    json_path = os.path.join(out_dir, name + ".json")
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1)
    written = report.write_outputs(result, json_path, md=True, png=not args.no_png)
    print()
    print(targets_table(result))
    print()
    for kind, path in written.items():
        print(f"{kind}: {path}")
    if result.get("interrupted"):
        return 130
    if args.strict:
        bad = [line for line in failures(result) if "time budget" not in line]
        if bad:
            print("\n".join(["--strict: problems:"] + bad), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
