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
4. a fused DCGAN training step (fuse(G), fuse(D), GANLoss, backward) traced by
   torch.compile(fullgraph=True, backend="aot_eager") on CUDA fake tensors.
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


def check_compile():
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    import gan_fast
    from gan_fast.nn import GANLoss
    from gan_fast.train.models import build_models
    g, d = build_models(100, 64, 64, 3, 64, seed=0)
    g, d = gan_fast.fuse(g, verbose=False), gan_fast.fuse(d, verbose=False)
    crit_d, crit_g = GANLoss("bce", side="d"), GANLoss("bce", side="g")

    def step(z, real):
        fake = g(z)
        loss_d = crit_d(d(real), d(fake.detach()))
        loss_g = crit_g(d(fake))
        (loss_d + loss_g).backward()
        return loss_d.detach(), loss_g.detach()

    how = "torch.compile(step, fullgraph=True, backend='aot_eager') on FakeTensorMode CUDA tensors"
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            g.to("cuda")
            d.to("cuda")
            z = torch.randn(64, 100, 1, 1, device="cuda")
            real = torch.randn(64, 3, 64, 64, device="cuda").to(memory_format=torch.channels_last)
            fn = torch.compile(step, fullgraph=True, backend="aot_eager")
            ld, lg = fn(z, real)
        ok = ld.device.type == "cuda" and lg.shape == ()
        grads = sum(p.grad is not None for p in list(g.parameters()) + list(d.parameters()))
        report(ok, "fused DCGAN step traced by torch.compile on CUDA fake tensors",
               f"{how}; losses on {ld.device}, {grads} parameter grads")
    except Exception as e:  # noqa: BLE001 - the exact reason is the result
        tb = traceback.format_exc().strip().splitlines()
        report(False, "fused DCGAN step traced by torch.compile on CUDA fake tensors",
               f"{how}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
        print("      " + "\n      ".join(tb[-12:]))


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
