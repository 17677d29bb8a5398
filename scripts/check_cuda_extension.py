"""Checks of a gan_fast built against a CUDA build of torch, on a machine without a GPU.

Run by scripts/build_cuda_extension.sh in its venv (from outside the source tree, so
the installed package is imported). Each check prints one line "ok|FAIL|n/a  what";
exit status 1 if any FAILs.

1. ``import gan_fast._C`` with RTLD_NOW (every symbol resolves) and ``ldd -r`` of the
   library (no undefined symbol outside torch/python);
2. every gan_fast_C op with a CPU kernel has a CUDA kernel registered (dispatch key CUDA),
   and ``compiled_device_types()`` says "cuda";
3. the JIT build path (gan_fast._cuda_jit: torch.utils.cpp_extension.load with the
   flags of setup.py) compiles and loads the CUDA kernels (GPU check forced past, as on
   a GPU machine whose gan_fast._C has none), for GAN_FAST_JIT_ARCH (default 90a: one
   arch, as the GPU machine's JIT build), timed;
4. a fused DCGAN step (fuse(G), fuse(D), GANLoss) traced by torch.compile(fullgraph=True,
   backend="aot_eager") on CUDA fake tensors: the forward, then forward + backward (n/a
   with torch's reason when a stock model cannot be traced either: no GPU).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback

FAILED = []


def report(ok, what, detail=""):
    tag = {True: "ok  ", False: "FAIL", None: "n/a "}[ok]
    print(f"{tag}  {what}{(': ' + detail) if detail else ''}", flush=True)
    if ok is False:
        FAILED.append(what)


def check_import():
    sys.setdlopenflags(os.RTLD_NOW | os.RTLD_GLOBAL)
    import torch
    import gan_fast._C as ext
    path = ext.__file__
    types = list(ext.compiled_device_types())
    report("cuda" in types, "import gan_fast._C (RTLD_NOW)", f"{path}; compiled_device_types={types}")
    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    env = dict(os.environ, LD_LIBRARY_PATH=lib + os.pathsep + os.environ.get("LD_LIBRARY_PATH", ""))
    out = subprocess.run(["ldd", "-r", path], capture_output=True, text=True, env=env)
    undef = [ln.strip() for ln in (out.stdout + out.stderr).splitlines() if "undefined symbol" in ln]
    # Python's own symbols (Py*, _Py*) resolve from the interpreter, not from a library
    undef = [u for u in undef if not any(s in u for s in ("symbol: Py", "symbol: _Py"))]
    report(not undef, "ldd -r: no undefined symbols (besides Python's)",
           f"{len(undef)} undefined: {undef[:3]}" if undef else "")
    cudart = [ln.strip().split()[0] for ln in out.stdout.splitlines() if "cudart" in ln or "torch_cuda" in ln]
    print(f"      links: {', '.join(cudart) or 'no libcudart/libtorch_cuda'}")


def check_dispatch():
    import torch
    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("gan_fast_C::"))
    with_cpu = [n for n in names if torch._C._dispatch_has_kernel_for_dispatch_key(n, "CPU")]
    missing = [n for n in with_cpu if not torch._C._dispatch_has_kernel_for_dispatch_key(n, "CUDA")]
    report(bool(with_cpu) and not missing, "CUDA dispatch key",
           f"{len(with_cpu) - len(missing)}/{len(with_cpu)} ops with a CPU kernel have a CUDA kernel"
           + (f"; missing: {missing}" if missing else f" ({', '.join(with_cpu)})"))


def check_jit(src):
    import torch
    from gan_fast import _cuda_jit
    os.environ["GAN_FAST_CUDA_ARCH"] = os.environ.get("GAN_FAST_JIT_ARCH", "90a")
    os.environ["GAN_FAST_TEST_HIDE_EXT_CUDA"] = "1"
    real = torch.cuda.is_available
    torch.cuda.is_available = lambda: True   # what the GPU machine answers
    t0 = time.perf_counter()
    try:
        reason = _cuda_jit.ensure()
    finally:
        torch.cuda.is_available = real
    dt = time.perf_counter() - t0
    report(reason is None, f"JIT build + load (arch {os.environ['GAN_FAST_CUDA_ARCH']}, "
           f"MAX_JOBS={os.environ.get('MAX_JOBS', '?')})",
           f"{dt:.0f} s, {_cuda_jit.library()}" if reason is None else reason)


def _first_error(e):
    lines = [ln.strip() for ln in str(e).splitlines() if "Error" in ln]
    return lines[0] if lines else (str(e).strip().splitlines() or [type(e).__name__])[0]


def _fake_cuda_step(models, step, backward):
    """step(*models-on-cuda inputs) compiled fullgraph (aot_eager) on FakeTensorMode CUDA
    tensors; backward() on the result if asked. Returns the losses."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode(allow_non_fake_inputs=True):
        for m in models:
            m.to("cuda")
        z = torch.randn(64, 100, 1, 1, device="cuda")
        real = torch.randn(64, 3, 64, 64, device="cuda").to(memory_format=torch.channels_last)
        fn = torch.compile(step, fullgraph=True, backend="aot_eager")
        if backward:
            ld, lg = fn(z, real)
            (ld + lg).backward()
        else:
            with torch.no_grad():
                ld, lg = fn(z, real)
    return ld, lg


def check_compile():
    """A fused DCGAN step traced by torch.compile on CUDA fake tensors: the forward (the
    fused ops' fake kernels, CUDA dispatch, fullgraph), then forward + backward. Without a
    GPU the backward cannot be traced by torch itself: AOTAutograd runs the autograd engine,
    which asks CUDA for device 0's primary context ("hasPrimaryContext expects a valid
    device index"); a stock Conv2d+BatchNorm2d+LeakyReLU is traced the same way as the
    control, and when it fails alike the line says n/a with the reason, not FAIL."""
    import gan_fast
    from gan_fast.nn import GANLoss
    from gan_fast.train.models import build_models

    def fused():   # fresh models for each trace (parameters become fake CUDA tensors)
        g, d = build_models(100, 64, 64, 3, 64, seed=0)
        g, d = gan_fast.fuse(g, verbose=False), gan_fast.fuse(d, verbose=False)
        crit_d, crit_g = GANLoss("bce", side="d"), GANLoss("bce", side="g")

        def step(z, real):
            fake = g(z)
            loss_d = crit_d(d(real), d(fake.detach()))
            loss_g = crit_g(d(fake))
            return loss_d, loss_g
        return g, d, step

    what = "fused DCGAN {} traced by torch.compile on CUDA fake tensors"
    how = "torch.compile(step, fullgraph=True, backend='aot_eager'), FakeTensorMode CUDA"
    for backward in (False, True):
        name = what.format("training step (forward + backward)" if backward else "forward")
        g, d, step = fused()
        try:
            ld, lg = _fake_cuda_step((g, d), step, backward)
            ok = ld.device.type == "cuda" and lg.shape == ()
            grads = sum(p.grad is not None for p in list(g.parameters()) + list(d.parameters()))
            report(ok, name, f"{how}; losses on {ld.device}" + (f", {grads} parameter grads" if backward else ""))
        except Exception as e:  # noqa: BLE001 - the exact reason is the result
            reason = _first_error(e)
            control = _stock_control(backward)
            if control is not None and control == reason:
                report(None, name, f"{how}: {reason} - torch cannot trace this without a GPU: "
                       "a stock Conv2d+BatchNorm2d+LeakyReLU fails the same way")
            else:
                report(False, name, f"{how}: {type(e).__name__}: {reason} (stock control: {control or 'passes'})")
                tb = traceback.format_exc().strip().splitlines()
                print("      " + "\n      ".join(tb[-12:]))


def _stock_control(backward):
    """The same trace of stock layers; None if it passes, else its first error line."""
    import torch
    from torch import nn
    g = nn.Sequential(nn.ConvTranspose2d(100, 3, 64, 1, 0, bias=False), nn.BatchNorm2d(3), nn.Tanh())
    d = nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1, bias=False), nn.BatchNorm2d(8), nn.LeakyReLU(0.2),
                      nn.Flatten(), nn.LazyLinear(1))
    d(torch.zeros(1, 3, 64, 64))

    def step(z, real):
        return d(real).mean(), d(g(z)).mean()
    try:
        _fake_cuda_step((g, d), step, backward)
        return None
    except Exception as e:  # noqa: BLE001
        return _first_error(e)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", help="the source copy that was built (for the record)")
    ap.add_argument("--skip-jit", action="store_true")
    args = ap.parse_args()
    import torch
    print(f"torch {torch.__version__} CUDA {torch.version.cuda}; cuda available: "
          f"{torch.cuda.is_available()}; src {args.src}")
    for name, fn in (("import", check_import), ("dispatch", check_dispatch),
                     ("compile", check_compile)):
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            report(False, name, f"{type(e).__name__}: {e}")
    if not args.skip_jit:
        try:
            check_jit(args.src)
        except Exception as e:  # noqa: BLE001
            report(False, "jit", f"{type(e).__name__}: {e}")
    print(f"check_cuda_extension: {'PASS' if not FAILED else 'FAIL: ' + ', '.join(FAILED)}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
