"""What the library launches: DCGAN layers, launch capture, Triton specialisation per target."""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import re
import subprocess
import tempfile
import time

TARGETS = {"sm_80": 80, "sm_90a": 90}
DTYPES = ("fp32", "fp16", "bf16")
FORMATS = ("nchw", "cl")
GEMMS = ("_conv_gemm_kernel", "_conv_wgrad_kernel")
BATCH = 64          # the DCGAN batch; int specialisation (==1, %16) follows the shapes
LOSS_KINDS = ("bce", "hinge", "lsgan", "wgan")


# ------------------------------------------------------------------ what is launched
@dataclasses.dataclass(frozen=True)
class Layer:
    name: str
    transposed: bool
    cin: int
    cout: int
    k: int
    stride: int
    padding: int
    in_hw: int
    slope: float


def dcgan_layers(nz=100, width=64, nc=3, image_size=64):
    """Every Conv|ConvTranspose -> BatchNorm2d -> ReLU|LeakyReLU chain of the trainer's
    DCGAN (G1.., D2..), with its input size, read off the models by a forward pass."""
    import torch
    from torch import nn

    from gan_fast.train.models import build_models
    g, d = build_models(nz, width, width, nc, image_size, seed=0)
    layers = []
    for prefix, model, x, first in (("G", g, torch.zeros(1, nz, 1, 1), 1),
                                    ("D", d, torch.zeros(1, nc, image_size, image_size), 1)):
        mods = list(model.main)
        sizes = {}
        hooks = [m.register_forward_hook(lambda m, i, o, k=k: sizes.__setitem__(k, i[0].shape[-1]))
                 for k, m in enumerate(mods)]
        with torch.no_grad():
            model.eval()(x)
        for h in hooks:
            h.remove()
        idx = first - 1
        for k, m in enumerate(mods):
            if not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                continue
            idx += 1
            nxt = mods[k + 1:k + 3]
            if (len(nxt) == 2 and isinstance(nxt[0], nn.BatchNorm2d)
                    and isinstance(nxt[1], (nn.ReLU, nn.LeakyReLU))):
                slope = 0.0 if isinstance(nxt[1], nn.ReLU) else float(nxt[1].negative_slope)
                layers.append(Layer(f"{prefix}{idx}", isinstance(m, nn.ConvTranspose2d),
                                    m.in_channels, m.out_channels, m.kernel_size[0],
                                    m.stride[0], m.padding[0], sizes[k], slope))
    return layers


@dataclasses.dataclass
class Launch:
    label: str                  # e.g. "G2 bf16 cl train-fwd"
    kernel: object              # JITFunction or Autotuner, as launched
    args: tuple
    kwargs: dict


@contextlib.contextmanager
def _recording(into):
    """kernel[grid](...) appends a Launch instead of running (autotuners keep their
    first pruned config as best_config, so the host code after the launch goes on)."""
    from triton.runtime import autotuner, jit

    def jit_run(self, *args, grid, warmup, **kwargs):
        into.append(Launch(_recording.label, self, args, kwargs))

    def tune_run(self, *args, **kwargs):
        kwargs.pop("grid", None), kwargs.pop("warmup", None)
        self.nargs = dict(zip(self.arg_names, args))
        self.best_config = self.prune_configs(kwargs)[0]
        self.nargs = None
        into.append(Launch(_recording.label, self, args, kwargs))

    saved = jit.JITFunction.run, autotuner.Autotuner.run
    jit.JITFunction.run, autotuner.Autotuner.run = jit_run, tune_run
    try:
        yield
    finally:
        jit.JITFunction.run, autotuner.Autotuner.run = saved


def capture(cap, layers=None, dtypes=DTYPES, formats=FORMATS, batch=BATCH, losses=True):
    """All launches the library makes for the DCGAN blocks and the losses on target cap."""
    import torch

    from gan_fast.kernels.triton import _targets
    from gan_fast.kernels.triton import bn_act as tbn
    from gan_fast.kernels.triton import conv as tconv
    from gan_fast.kernels.triton import gan_loss as tloss
    layers = dcgan_layers() if layers is None else layers
    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    out = []
    with _targets.target(cap), _recording(out), torch.no_grad():
        for L in layers:
            for dn in dtypes:
                for fmt in formats:
                    mf = torch.channels_last if fmt == "cl" else torch.contiguous_format
                    x = torch.randn(batch, L.cin, L.in_hw, L.in_hw, dtype=dt[dn]).to(memory_format=mf)
                    wshape = (L.cin, L.cout, L.k, L.k) if L.transposed else (L.cout, L.cin, L.k, L.k)
                    w = torch.randn(wshape) * 0.02
                    bw, bb = torch.ones(L.cout), torch.zeros(L.cout)
                    conv = tconv.conv_transpose2d_stats if L.transposed else tconv.conv2d_stats
                    tag = f"{L.name} {dn} {fmt}"
                    _recording.label = f"{tag} train-fwd"
                    y, mean, var = conv(x, w, None, L.stride, L.padding)
                    a = tbn.bn_act_eval_fwd(y, bw, bb, mean, var, 1e-5, L.slope)
                    _recording.label = f"{tag} train-bwd"
                    tconv.bn_act_conv_backward(torch.ones_like(a), x, w, y, mean, var, bw, bb, 1e-5,
                                               L.slope, L.stride, L.padding, transposed=L.transposed,
                                               has_conv_bias=False, needs_input_grad=True)
                    _recording.label = f"{tag} eval"
                    ev = (tconv.conv_transpose2d_bn_act_eval if L.transposed
                          else tconv.conv2d_bn_act_eval)
                    ev(x, w, None, bw, bb, mean, var, 1e-5, L.slope, L.stride, L.padding)
                    _capture_in_and_act(tconv, tbn, tag, L, x, w, bw, bb, batch,
                                        planes=L is layers[0] and fmt == formats[0])
                    if L is layers[0] and fmt == formats[0]:   # unfused BN+act (same kernels per C)
                        _recording.label = f"bn_act {dn} nchw/cl"
                        for yy in (y, y.contiguous(memory_format=torch.channels_last)):
                            o, m_, v_ = tbn.bn_act_train_fwd(yy, bw, bb, 1e-5, L.slope)
                            tbn.bn_act_bwd(o, yy, bw, bb, m_, v_, 1e-5, L.slope, True)
                            tbn.bn_act_bwd(o, yy, bw, bb, m_, v_, 1e-5, L.slope, False)
        if losses:
            for dn in dtypes:
                for kind in LOSS_KINDS:
                    for side in ("d", "g"):
                        for red in ("mean", "sum"):
                            _recording.label = f"loss {kind}-{side} {red} {dn}"
                            lg = torch.randn(batch, dtype=dt[dn])
                            tloss.gan_loss_fwd(lg, lg, kind, side, red, 0.0)
    return out


def _capture_in_and_act(tconv, tbn, tag, L, x, w, bw, bb, batch, planes):
    import torch

    """The same layer as an InstanceNorm block (gan_fast.ops.conv_in_act: per-image
    statistics in the epilogue, bn_act on the (1, N*C, H, W) planes (`planes`: once per
    dtype, as the unfused bn_act: the same kernels per C), the NCHW eval output) and as a
    norm-free block with a bias (gan_fast.ops.conv_act: activation in the epilogue; the
    backward's GEMMs rebuild dy from the output)."""
    _recording.label = f"{tag} in-train"
    y, mean, var = tconv.conv_in_stats(x, w, None, L.stride, L.padding, transposed=L.transposed)
    if planes:
        p = y.view(1, -1, *y.shape[2:])
        wn, bn = bw.repeat(batch), bb.repeat(batch)
        tbn.bn_act_eval_fwd(p, wn, bn, mean, var, 1e-5, L.slope)
        tbn.bn_act_bwd(p, p, wn, bn, mean, var, 1e-5, L.slope, True)
    _recording.label = f"{tag} in-eval"
    tconv._conv_bn_act_eval(x, w, None, bw, bb, mean[:L.cout], var[:L.cout], 1e-5, L.slope,
                            L.stride, L.padding, 0, L.transposed, nchw=True)
    _recording.label = f"{tag} act"
    a = tconv.conv_act(x, w, bb, L.slope, L.stride, L.padding, transposed=L.transposed)
    tconv.act_conv_backward(torch.ones_like(a), x, w, a, L.slope, L.stride, L.padding,
                            L.transposed)


def not_launched(jobs):
    """@triton.jit kernels (``*_kernel``) of gan_fast.kernels.triton that no job compiles:
    a new kernel or launcher the capture above does not reach yet."""
    import pkgutil

    import gan_fast.kernels.triton as pkg
    from triton.runtime.jit import JITFunction
    seen = {(j["module"], j["name"]) for j in jobs}
    missing = []
    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for name, obj in vars(mod).items():
            if name.endswith("_kernel") and isinstance(_maybe_base(obj), JITFunction) \
                    and _base(obj).fn.__module__ == mod.__name__ and (mod.__name__, name) not in seen:
                missing.append(f"{info.name}.{name}")
    return sorted(missing)


def _maybe_base(obj):
    try:
        return _base(obj)
    except AttributeError:
        return None


# ------------------------------------------------------------------ compile jobs
def _base(kernel):
    fn = kernel
    while not hasattr(fn, "params"):    # Autotuner -> JITFunction
        fn = fn.fn
    return fn


def jobs_for(cap, launches):
    """Launches -> unique compile jobs (kernel, signature, constexprs, attrs, options),
    specialised by Triton's own binder for the target."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature
    from triton import knobs

    from gan_fast.kernels.triton import _targets
    backend = make_backend(GPUTarget("cuda", cap, 32))
    binders, jobs = {}, {}
    with _targets.target(cap):
        for ln in launches:
            fn = _base(ln.kernel)
            if fn not in binders:
                binders[fn] = create_function_from_signature(fn.signature, fn.params, backend)
            if hasattr(ln.kernel, "configs"):       # autotuned: the configs kept for this target
                at = ln.kernel
                at.nargs = dict(zip(at.arg_names, ln.args))
                configs = at.prune_configs(dict(ln.kwargs))
                at.nargs = None
                variants = [(c, {**ln.kwargs, **c.all_kwargs()}) for c in configs]
            else:
                variants = [(None, dict(ln.kwargs))]
            for cfg, kw in variants:
                kw = {k: v for k, v in kw.items() if v is not None or k not in ("maxnreg", "pre_hook", "ir_override")}
                kw.pop("pre_hook", None), kw.pop("ir_override", None)
                kw["debug"] = kw.get("debug", fn.debug) or knobs.runtime.debug
                kw["instrumentation_mode"] = knobs.compilation.instrumentation_mode
                bound, spec, _ = binders[fn](*ln.args, **kw)
                options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound, spec, None)
                opts = {k: v for k, v in options.__dict__.items()}
                key = (fn.fn.__module__, fn.fn.__name__, repr(sorted(signature.items())),
                       repr(sorted(constexprs.items())), repr(sorted(attrs.items())),
                       repr(sorted(opts.items())))
                cfg_s = "-" if cfg is None else (
                    "{BLOCK_M}x{BLOCK_N}x{BLOCK_K}".format(**cfg.kwargs)
                    + f" w{cfg.num_warps} s{cfg.num_stages}")
                if key not in jobs:
                    jobs[key] = dict(module=fn.fn.__module__, name=fn.fn.__name__, cap=cap,
                                     signature=signature, constexprs=constexprs, attrs=attrs,
                                     options=opts, config=cfg_s, labels=[], smem_est=None)
                    if cfg is not None:
                        a = ln.args[0]
                        b = ln.args[3] if fn.fn.__name__ == "_conv_gemm_kernel" else a
                        gemm = fn.fn.__name__ == "_conv_gemm_kernel"
                        jobs[key]["smem_est"] = _targets.gemm_smem_bytes(
                            cfg, a.element_size(), b.element_size(),
                            a_tiles=2 if gemm and kw.get("PROLOGUE") else 1,
                            b_tiles=1 if gemm else 2)
                if ln.label not in jobs[key]["labels"]:
                    jobs[key]["labels"].append(ln.label)
    return list(jobs.values())
