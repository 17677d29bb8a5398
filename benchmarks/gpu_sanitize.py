"""Exercise every CUDA and Triton kernel of gan_fast once, on small odd shapes.

Meant to run under ``compute-sanitizer --tool memcheck`` (``benchmarks/gpu_check.sh``
does that, with PYTORCH_NO_CUDA_MEMORY_CACHING=1 so each allocation is its own
block and out-of-bounds accesses are seen). Uses only the public API, per backend
(cuda, triton): bn_act (training fwd+bwd, eval fwd+bwd), the fused blocks
(Conv2dBNAct, ConvTranspose2dBNAct: training fwd+bwd, eval fwd), and gan_loss (every
kind, both sides, fwd+bwd), in fp32 and bf16, NCHW and channels_last. Also checks
each result against the reference backend loosely, so a kernel that silently
writes garbage shows up here too. Exit status 1 if anything failed.

    python benchmarks/gpu_sanitize.py [--backends cuda,triton]   (or python -m benchmarks.gpu_sanitize)
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root


def _close(a, b, dtype) -> bool:
    """Max abs difference within tol x max(1, max |reference|)."""
    tol = 2e-3 if dtype == torch.float32 else 8e-2
    a, b = a.detach().float(), b.detach().float()
    if a.shape != b.shape or not bool(torch.isfinite(a).all()):
        return False
    return float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))


def _grads(fn, inputs, params):
    out = fn(*inputs)
    wrt = [t for t in (*inputs, *params) if t.requires_grad]
    gen = torch.Generator(device=out.device).manual_seed(1234)  # the same for every backend
    g = torch.randn(out.shape, generator=gen, device=out.device).to(out.dtype)
    grads = torch.autograd.grad(out, wrt, g)
    return out, grads


def cases(dev: str = "cuda", quick: bool = False):
    """(name, fn(backend) -> list of (output, reference) pairs)."""
    import gan_fast
    from gan_fast import functional as F
    from gan_fast.nn import Conv2dBNAct, ConvTranspose2dBNAct

    out = []
    for dtype in (torch.float32, torch.bfloat16):
        for cl in ((False,) if quick else (False, True)):
            fmt = torch.channels_last if cl else torch.contiguous_format
            tag = f"{str(dtype).replace('torch.', '')}-{'cl' if cl else 'nchw'}"

            def bn_act_case(backend, dtype=dtype, fmt=fmt):
                res = []
                for shape, slope in (((3, 5, 7, 9), 0.2), ((2, 64, 4, 4), 0.0), ((5, 3, 1, 1), 0.2)):
                    torch.manual_seed(0)
                    x = (torch.randn(shape, device=dev) * 2 + 3).to(dtype).contiguous(memory_format=fmt)
                    w = torch.rand(shape[1], device=dev) + 0.5
                    b = torch.randn(shape[1], device=dev)
                    for training in (True, False):
                        rm, rv = torch.zeros(shape[1], device=dev), torch.ones(shape[1], device=dev)
                        vals = {}
                        for be in (backend, "reference"):
                            xs, ws, bs = (t.detach().clone().requires_grad_() for t in (x, w, b))
                            with gan_fast.use_backend(be):
                                y, g = _grads(lambda xx: F.bn_act(xx, rm.clone(), rv.clone(), ws, bs, training,
                                                                  0.1, 1e-5, slope), [xs], [ws, bs])
                            vals[be] = (y, g)
                        res.append((vals[backend][0], vals["reference"][0]))
                        res += list(zip(vals[backend][1], vals["reference"][1]))
                return res

            def block_case(backend, dtype=dtype, fmt=fmt):
                res = []
                specs = ((Conv2dBNAct, (6, 10, 4, 2, 1), (3, 6, 9, 9), 0.2),
                         (ConvTranspose2dBNAct, (10, 6, 4, 2, 1), (3, 10, 5, 5), 0.0),
                         (ConvTranspose2dBNAct, (7, 12, 4, 1, 0), (2, 7, 1, 1), 0.0))
                for cls, args, shape, slope in specs:
                    for training in (True, False):
                        vals = {}
                        for be in (backend, "reference"):
                            torch.manual_seed(0)
                            m = cls(*args, negative_slope=slope).to(dev)
                            m[0].to(dtype)
                            m.to(memory_format=fmt)
                            m.train(training)
                            x = torch.randn(shape, device=dev).to(dtype).contiguous(memory_format=fmt)
                            x.requires_grad_()
                            with gan_fast.use_backend(be):
                                y, g = _grads(m, [x], list(m.parameters()))
                            vals[be] = (y, g)
                        res.append((vals[backend][0], vals["reference"][0]))
                        res += list(zip(vals[backend][1], vals["reference"][1]))
                return res

            out.append((f"bn_act {tag}", bn_act_case))
            out.append((f"blocks {tag}", block_case))

    def loss_case(backend):
        from gan_fast.reference import LOSS_KINDS
        res = []
        for kind in LOSS_KINDS:
            for side in ("d", "g"):
                for n in ((7, 70000) if quick else (1, 7, 1000, 70000)):
                    torch.manual_seed(0)
                    real = torch.randn(n, device=dev) * 3
                    fake = torch.randn(n + 3, device=dev) * 3
                    vals = {}
                    for be in (backend, "reference"):
                        r, f = real.clone().requires_grad_(), fake.clone().requires_grad_()
                        with gan_fast.use_backend(be):
                            if side == "d":
                                y, g = _grads(lambda a, b: F.gan_loss(a, b, kind, "d"), [r, f], [])
                            else:
                                y, g = _grads(lambda b: F.gan_loss(None, b, kind, "g"), [f], [])
                        vals[be] = (y, g)
                    res.append((vals[backend][0], vals["reference"][0]))
                    res += list(zip(vals[backend][1], vals["reference"][1]))
        return res

    out.append(("gan_loss fp32", loss_case))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="cuda,triton")
    p.add_argument("--device", default="cuda", help="cpu only to try this script without a GPU")
    p.add_argument("--quick", action="store_true", help="fp32 and bf16 NCHW only, fewer loss sizes")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("gpu_sanitize: no CUDA device: nothing to exercise")
        return 0
    from gan_fast import backends
    failed = 0
    for backend in a.backends.split(","):
        why = backends.why_unavailable(backend, a.device)
        if why:
            print(f"SKIP backend {backend}: {why}")
            continue
        for name, fn in cases(a.device, a.quick):
            try:
                pairs = fn(backend)
                if a.device == "cuda":
                    torch.cuda.synchronize()
                bad = sum(1 for x, ref in pairs if not _close(x, ref, ref.dtype))
                status = "ok" if not bad else f"MISMATCH in {bad}/{len(pairs)} outputs vs reference"
                failed += bool(bad)
            except Exception as e:  # noqa: BLE001
                status = f"ERROR {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                traceback.print_exc()
                failed += 1
            print(f"{backend:7s} {name:22s} {status}", flush=True)
    print(f"gpu_sanitize: {'all ok' if not failed else f'{failed} failed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
