"""What every benchmark case module shares: options, ``Case`` and ``Bench``.

A case module (``bench_<op>.py``) has ``cases(opts) -> list[Case]``. A ``Case`` is one
shape/dtype/format point; ``case.build(variant)`` returns a ``Bench`` (fresh models and
rotated inputs, the same seed for every variant) or raises ``Unavailable``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import torch

from benchmarks.timing import Rotator

OPS = ("bn_act", "blocks", "gan_loss", "step", "models", "dispatch")
MODES = ("fwd", "bwd", "fwd+bwd", "step")


@dataclasses.dataclass
class Options:
    """What to run; ``None`` fields take the per-device defaults (see ``resolve``)."""
    device: str = "cpu"
    quick: bool = False
    ops: Sequence[str] = OPS
    batches: Optional[Sequence[int]] = None
    dtypes: Optional[Sequence[str]] = None
    formats: Optional[Sequence[str]] = None
    block_formats: Optional[Sequence[str]] = None
    modes: Optional[Sequence[str]] = None        # filter over each op's own modes
    variants: Optional[Sequence[str]] = None
    layers: Optional[Sequence[str]] = None       # G1..G4, D2..D4
    loss_kinds: Optional[Sequence[str]] = None
    loss_sides: Sequence[str] = ("d", "g")
    steps: Optional[Sequence[str]] = None         # gd_step, d_step, g_step (--quick: gd_step)
    step_batches: Optional[Sequence[int]] = None
    step_dtypes: Optional[Sequence[str]] = None
    step_formats: Optional[Sequence[str]] = None
    min_time: Optional[float] = None             # seconds of timed calls per measurement
    min_samples: int = 3
    warmup: int = 2
    budget: Optional[float] = None               # seconds for the whole run; 0 = no limit
    with_reference: bool = False
    cpu_max_autotune: bool = False
    autotune_all: bool = False                   # max-autotune for blocks and steps too
    check: bool = True                           # compare outputs with eager's
    memory: bool = True
    system_malloc: bool = False                  # CPU: leave glibc's allocator settings alone
    seed: int = 0

    def resolve(self) -> "Options":
        """Fill the per-device defaults (the full matrix, or its --quick subset)."""
        o = dataclasses.replace(self)
        cuda = o.device == "cuda"
        if o.batches is None:
            o.batches = [64] if o.quick else ([64, 128, 512, 2048] if cuda else [64, 256])
        if o.dtypes is None:
            # CPU: fp32 NCHW by default (bf16 and channels_last are opt-in: --dtype fp32,bf16
            # --format nchw,cl), so that the full CPU run fits in 10 minutes on 2 cores
            o.dtypes = ["bf16", "fp32"] if cuda else ["fp32"]
            if o.quick:
                o.dtypes = o.dtypes[:1]
        if o.formats is None:
            o.formats = ["cl", "nchw"] if cuda else ["nchw"]
            if o.quick:
                o.formats = o.formats[:1]
        if o.block_formats is None:
            o.block_formats = list(o.formats)
        if o.steps is None:
            # a DCGAN step at batch 64 takes seconds on 2 CPU cores: the trainer's whole step only
            o.steps = ["gd_step"] if (o.quick or not cuda) else ["gd_step", "d_step", "g_step"]
        if o.loss_kinds is None:
            from gan_fast.reference import LOSS_KINDS
            o.loss_kinds = ["bce"] if o.quick else list(LOSS_KINDS)
        if o.step_batches is None:
            if cuda:
                o.step_batches = [b for b in o.batches if b in (64, 512)] or [min(o.batches)]
            else:  # a DCGAN step at batch 256 takes seconds on 2 CPU cores
                o.step_batches = [b for b in o.batches if b <= 64] or [min(o.batches)]
        if o.step_dtypes is None:
            o.step_dtypes = list(o.dtypes[:1])
        if o.step_formats is None:
            o.step_formats = list(o.formats[:1])
        if o.min_time is None:
            o.min_time = 0.1 if o.quick else 0.25
        if o.budget is None:
            o.budget = 170.0 if o.quick else 530.0
        if o.variants is None:
            from benchmarks import variants
            o.variants = variants.default_names(o.device)
        return o

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, (list, tuple)) else v)
                for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class Bench:
    """One case built for one variant, ready to time.

    forward(*inputs) -> output (an activation or a loss), autograd recording;
    grad_wrt(inputs) -> tensors to differentiate w.r.t.; grad_out(inputs) -> the
    output gradient (None for a 0-dim loss); step(*inputs): one whole training step
    (step cases only). exclude: tensors whose storage is not counted as "held".
    """
    rotator: Rotator
    forward: Optional[Callable] = None
    grad_wrt: Optional[Callable] = None
    grad_out: Optional[Callable] = None
    step: Optional[Callable] = None
    exclude: Sequence[torch.Tensor] = ()
    pre_iter: Optional[Callable[[], None]] = None
    extras: dict = dataclasses.field(default_factory=dict)

    def _pre(self):
        if self.pre_iter is not None:
            self.pre_iter()

    def run_fwd(self):
        s = self.rotator.next()
        self._pre()
        return self.forward(*s)

    def backward(self, out, s):
        return torch.autograd.grad(out, self.grad_wrt(s), self.grad_out(s))

    def run_fwd_bwd(self):
        s = self.rotator.next()
        self._pre()
        out = self.forward(*s)
        self.backward(out, s)

    def setup_bwd(self):
        s = self.rotator.next()
        self._pre()
        return self.forward(*s), s

    def run_bwd(self, state):
        out, s = state
        self.backward(out, s)

    def run_step(self):
        s = self.rotator.next()
        self._pre()
        self.step(*s)

    def iteration(self, mode: str) -> Callable[[], None]:
        """A callable for one full iteration of `mode` (fwd / fwd+bwd / step)."""
        if mode == "step":
            return self.run_step
        if mode == "fwd":
            return self.run_fwd
        if mode == "fwd+bwd":
            return self.run_fwd_bwd
        raise ValueError(mode)


@dataclasses.dataclass
class Case:
    op: str
    label: str                 # "G2", "bce-d", "d_step", ...
    batch: int
    dtype: str
    fmt: str
    modes: Sequence[str]
    build: Callable            # build(variant) -> Bench
    shape: str = ""            # human-readable shape
    describe: str = ""
    priority: tuple = ()
    variant_filter: Optional[Callable] = None   # variant -> reason it does not apply, or None
    threads: Optional[int] = None              # torch threads while it runs (None: the run's)
    interleaved: bool = False                  # variants built together and timed alternately

    @property
    def key(self) -> str:
        return f"{self.op}/{self.label}/b{self.batch}/{self.dtype}/{self.fmt}"


def skip_slow_autotune(variant, opts: Options):
    """Case.variant_filter of the conv cases: max-autotune tunes conv templates for
    minutes per shape, so blocks and steps run it only with --autotune-all."""
    if variant.compile_mode == "max-autotune" and not opts.autotune_all:
        return "max-autotune of convolutions takes minutes per shape (--autotune-all runs it)"
    return None


def seeded(seed: int, device: str) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def randn(shape, dtype, device, fmt: str, gen: torch.Generator, requires_grad=False, scale=1.0, shift=0.0):
    """Random tensor made on CPU from `gen` (same values on every device), then moved."""
    t = torch.randn(shape, generator=gen, dtype=torch.float32) * scale + shift
    t = t.to(device=device, dtype=dtype)
    if t.dim() == 4 and fmt == "cl":
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(requires_grad)


def gan_step(g, d, z, real, opt_g, opt_d, loss_d, loss_g, d_for_g=None):
    """One GAN training step as the trainers take it: D's step on real images and detached
    fakes, then G's step through `d_for_g` (default d) into G's parameters only (those of
    opt_g). Returns (D loss, G loss)."""
    fake = g(z)
    ld = loss_d(d(real), d(fake.detach()))
    opt_d.zero_grad()
    ld.backward()
    opt_d.step()
    lg = loss_g((d_for_g or d)(fake))
    opt_g.zero_grad()
    lg.backward(inputs=[p for group in opt_g.param_groups for p in group["params"]])
    opt_g.step()
    return ld, lg
