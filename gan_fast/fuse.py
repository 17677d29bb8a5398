"""``fuse(model)`` / ``unfuse(model)``: convert a stock model in place.

Every ``Conv2d|ConvTranspose2d -> BatchNorm2d|SyncBatchNorm -> ReLU|LeakyReLU`` chain that
``fuse`` can prove is only ever called as a whole is fused by changing the classes of the existing
module objects, never their parameters:

* the conv becomes ``FusedConv2d`` / ``FusedConvTranspose2d`` (subclasses of the
  stock conv) whose forward runs conv + fused BatchNorm+activation;
* the BatchNorm becomes ``AbsorbedBatchNorm2d`` / ``AbsorbedSyncBatchNorm`` (a
  BatchNorm2d / SyncBatchNorm whose forward is the identity: its parameters and buffers
  stay where they were). A SyncBatchNorm chain's statistics are reduced over its process
  group (``gan_fast.ops.sync_bn_act``). ``nn.SyncBatchNorm.convert_sync_batchnorm`` on a
  fused model yields synchronised fused blocks (see ``_AbsorbedBN``), never a BatchNorm
  applied twice;
* the activation module is replaced by ``AbsorbedActivation`` (an ``nn.Identity``; the
  activation holds no state).

So ``state_dict`` keys and tensors are unchanged and checkpoints load both ways. Hooks
registered on these modules after ``fuse`` would see fused values, so registering one
raises a RuntimeError; hooks present before ``fuse`` keep their chain stock.

How forward calls the modules is learned, in training and in eval mode, by running it on
fake tensors (``gan_fast._trace``: Python control flow followed, no kernels, no state
changed) with ``example_inputs``, else from a ``torch.fx`` trace, else by running it on a
guessed input (N=2, the first conv's in_channels, square sizes 1..256). A chain is fused
when, in every recorded forward, each call of the conv feeds only its BatchNorm and the
BatchNorm only ever takes the conv's output, both from the same module's forward. The
activation is absorbed when it is the only user of the BatchNorm's output and is called
nowhere else; otherwise it stays in place and only conv+BatchNorm are fused (slope 1 =
identity). A model none of these can analyse gets nothing fused, unless
``assume_sequential=True``: then adjacent ``nn.Sequential`` chains are fused on the
user's word that forward calls them only through the Sequential.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from gan_fast import _trace
from gan_fast._trace import Call
from gan_fast.nn import activation_slope, bn_act_from_module
from gan_fast.ops.block import block_forward, is_sync, paths as _paths

log = logging.getLogger("gan_fast")

__all__ = ["fuse", "unfuse", "FuseReport", "FusedConv2d", "FusedConvTranspose2d", "AbsorbedBatchNorm2d",
           "AbsorbedSyncBatchNorm", "AbsorbedActivation"]

_IDENTITY_SLOPE = 1.0  # LeakyReLU with slope 1 is the identity: BatchNorm only


class _RefusesHooks:
    """A module whose forward ``fuse`` changed: a hook on it would not see what the stock
    layer computes there, so registering one raises (the check costs nothing per call)."""

    def _absorbed(self) -> str:
        raise NotImplementedError

    def _refuse_hook(self, *args, **kwargs):
        raise RuntimeError(
            f"gan_fast.fuse {self._absorbed()}, so a hook here would not see what the stock layer "
            "computes; register hooks before fuse (the chain is then left alone) or call "
            "gan_fast.unfuse(model) first")

    register_forward_hook = register_forward_pre_hook = _refuse_hook
    register_full_backward_hook = register_full_backward_pre_hook = register_backward_hook = _refuse_hook


class _FusedConvMixin(_RefusesHooks):
    def _bn_act(self, y):
        bn = self._gan_fast_bn
        if is_sync(bn):
            from gan_fast.ops import sync_bn_act
            return sync_bn_act.bn_act(y, bn, self._gan_fast_slope)
        return bn_act_from_module(y, bn, self._gan_fast_slope)

    def _absorbed(self):
        what = _STOCK_BN[type(self._gan_fast_bn)].__name__ + (
            " and activation" if self._gan_fast_act_slot else "")
        return f"fused the {what} after this {_STOCK_CLASS[type(self)].__name__} into it"


class FusedConv2d(_FusedConvMixin, nn.Conv2d):
    """An nn.Conv2d whose forward also applies its absorbed BatchNorm2d + activation."""

    def forward(self, x):
        return block_forward(_paths(self), x, self, self._gan_fast_bn, self._gan_fast_slope)


class FusedConvTranspose2d(_FusedConvMixin, nn.ConvTranspose2d):
    """An nn.ConvTranspose2d whose forward also applies its absorbed BatchNorm2d + activation."""

    def forward(self, x, output_size=None):
        if output_size is not None:  # an output_padding chosen per call: the stock conv
            return self._bn_act(nn.ConvTranspose2d.forward(self, x, output_size))
        return block_forward(_paths(self), x, self, self._gan_fast_bn, self._gan_fast_slope)


class _AbsorbedBN(_RefusesHooks):
    """A BatchNorm computed by the fused conv before it: forward is the identity.

    nn.SyncBatchNorm.convert_sync_batchnorm(model) replaces every BatchNorm, this one
    included, by a new SyncBatchNorm sharing its parameters and buffers, and never calls
    a method of ours. It does read ``hasattr(module, "qconfig")`` on the module it
    replaces, after building the new one: that read, when it comes from
    convert_sync_batchnorm, makes the new module absorbed too and points the fused conv
    at it, so the converted model synchronises its fused blocks and applies each
    BatchNorm once. If the conversion cannot be followed (a torch whose
    convert_sync_batchnorm differs), it raises instead of leaving a double BatchNorm."""

    def forward(self, x):
        return x

    def _absorbed(self):
        return f"absorbed this {_STOCK_BN[type(self)].__name__} into the conv before it"

    @property
    def qconfig(self):
        if "_gan_fast_qconfig" in self.__dict__:
            return self.__dict__["_gan_fast_qconfig"]
        _follow_conversion(self, sys._getframe(1))
        raise AttributeError(f"'{type(self).__name__}' object has no attribute 'qconfig'")

    @qconfig.setter
    def qconfig(self, value):
        self.__dict__["_gan_fast_qconfig"] = value


def _follow_conversion(old, frame) -> None:
    """If `frame` is nn.SyncBatchNorm.convert_sync_batchnorm replacing the absorbed `old`,
    absorb its replacement into the same fused conv (see _AbsorbedBN)."""
    if frame is None or frame.f_code is not nn.SyncBatchNorm.convert_sync_batchnorm.__func__.__code__:
        return
    new, conv = frame.f_locals.get("module_output"), old.__dict__.get("_gan_fast_conv")
    if type(new) is not nn.SyncBatchNorm or conv is None or conv._gan_fast_bn is not old:
        raise RuntimeError(
            "gan_fast: nn.SyncBatchNorm.convert_sync_batchnorm on a model fused by "
            "gan_fast.fuse could not be followed with this torch version (the fused conv would "
            "apply its BatchNorm a second time); convert before fusing: "
            "gan_fast.fuse(nn.SyncBatchNorm.convert_sync_batchnorm(gan_fast.unfuse(model)))")
    new.__class__ = AbsorbedSyncBatchNorm
    object.__setattr__(new, "_gan_fast_conv", conv)
    object.__setattr__(conv, "_gan_fast_bn", new)
    _paths(conv).clear()


class AbsorbedBatchNorm2d(_AbsorbedBN, nn.BatchNorm2d):
    """A BatchNorm2d computed by the fused conv before it: forward is the identity."""


class AbsorbedSyncBatchNorm(_AbsorbedBN, nn.BatchNorm2d):
    """An nn.SyncBatchNorm computed (synchronised over its ``process_group``) by the fused
    conv before it: forward is the identity. Deliberately not an nn.SyncBatchNorm
    subclass: DistributedDataParallel refuses CPU modules holding one, and this module
    never computes stock SyncBatchNorm's forward (unfuse restores the nn.SyncBatchNorm)."""
    _gan_fast_sync = True


class AbsorbedActivation(_RefusesHooks, nn.Identity):
    """Stands where an activation absorbed by the fused conv before it was: the identity."""

    def __init__(self, stock: str):
        super().__init__()
        self.stock = stock  # the replaced module's repr, e.g. "ReLU(inplace=True)"

    def _absorbed(self):
        return f"absorbed the {self.stock} here into the conv before it"

    def extra_repr(self):
        return f"absorbed {self.stock}"


_FUSED_CLASS = {nn.Conv2d: FusedConv2d, nn.ConvTranspose2d: FusedConvTranspose2d}
_STOCK_CLASS = {v: k for k, v in _FUSED_CLASS.items()}
_ABSORBED_BN = {nn.BatchNorm2d: AbsorbedBatchNorm2d, nn.SyncBatchNorm: AbsorbedSyncBatchNorm}
_STOCK_BN = {v: k for k, v in _ABSORBED_BN.items()}
_STOCK_BN.update({k: k for k in _ABSORBED_BN})
_ACTS = (nn.ReLU, nn.LeakyReLU)


@dataclasses.dataclass
class FuseReport:
    """What ``fuse`` changed and why: ``how`` the model was analysed, and lists of
    human-readable lines for the chains ``fused`` and those ``left`` (with the reason)."""
    fused: list = dataclasses.field(default_factory=list)
    left: list = dataclasses.field(default_factory=list)
    how: str = ""

    def __str__(self):
        lines = [f"gan_fast.fuse: fused {len(self.fused)} block(s), left {len(self.left)}"]
        lines += [f"  how:   {self.how}"] if self.how else []
        lines += [f"  fused: {s}" for s in self.fused] + [f"  left:  {s}" for s in self.left]
        return "\n".join(lines)


@dataclasses.dataclass
class _Chain:
    conv: str
    bn: str
    act: str | None      # module path of an activation to absorb, or None
    slope: float
    note: str = ""


def _shared_paths(model):
    seen, shared = {}, set()
    for name, m in model.named_modules(remove_duplicate=False):
        if id(m) in seen:
            shared.update({seen[id(m)], name})
        seen.setdefault(id(m), name)
    return shared


def _hooks(m) -> str:
    """The kinds of hooks `m` carries, as words ('' if none)."""
    kinds = (("forward", m._forward_hooks), ("forward pre-", m._forward_pre_hooks),
             ("backward", m._backward_hooks), ("backward pre-", m._backward_pre_hooks))
    return " and ".join(f"{k} hooks" for k, d in kinds if d)


def _conv_bn_ok(conv, bn):
    if type(conv) not in _FUSED_CLASS:
        return f"{type(conv).__name__} is not a stock Conv2d/ConvTranspose2d"
    if type(bn) not in _ABSORBED_BN:
        return f"{type(bn).__name__} is not a stock BatchNorm2d or SyncBatchNorm"
    if bn.num_features != conv.out_channels:
        return f"{type(bn).__name__}.num_features != conv.out_channels"
    for m in (conv, bn):
        if _hooks(m):
            return f"the {type(m).__name__} has {_hooks(m)} (e.g. spectral_norm)"
    return None


def _desc(uses) -> str:
    return ", ".join(u.path if isinstance(u, Call) else u for u in uses[:3]) or "nothing (it is discarded)"


def _calls_ok(conv, bn, traces):
    """None if, in every trace, each call of `conv` feeds only a call of `bn` and each call
    of `bn` takes only the output of a `conv` call from the same frame; else why not."""
    for mode, calls in traces:
        n_conv = sum(c.path == conv for c in calls)
        for c in calls:
            if c.path == conv:
                if not c.simple:
                    return f"{mode}, {conv} is called with other arguments than one tensor"
                to_bn = [u for u in c.uses if isinstance(u, Call) and u.path == bn and u.src is c]
                if not to_bn:
                    where = ("called more than once, not only in this chain: one call's" if n_conv > 1
                             else "called, but its")
                    return f"{mode}, {conv} is {where} output goes to {_desc(c.uses)}"
                if len(c.uses) > 1:
                    return f"{mode}, the output of {conv} also goes to {_desc([u for u in c.uses if u is not to_bn[0]])}"
            elif c.path == bn and (c.src is None or c.src.path != conv):
                return (f"{mode}, {bn} is called with other arguments" if not c.simple else
                        f"{mode}, {bn} is also called on something other than the output of {conv}")
    return None


def _activation(conv, bn, traces, modules, shared):
    """The chain, with the activation absorbed when it alone takes every output of `bn`."""
    acts, why = set(), None
    for mode, calls in traces:
        for c in calls:
            if c.path == bn and why is None:
                u = c.uses
                if len(u) != 1 or not isinstance(u[0], Call) or u[0].src is not c:
                    why = f"{mode}, the output of {bn} goes to {_desc(u)}"
                else:
                    acts.add(u[0].path)
    act = next(iter(acts)) if len(acts) == 1 else None
    if why is None:
        m = modules.get(act)
        if act is None:
            why = f"different modules take the output of {bn}: {', '.join(sorted(acts))}"
        elif type(m) not in _ACTS:
            why = f"{act} ({type(m).__name__}) is not a stock ReLU/LeakyReLU"
        elif _hooks(m):
            why = f"{act} has {_hooks(m)}"
        elif act in shared or any(c.path == act and (c.src is None or c.src.path != bn)
                                  for _, calls in traces for c in calls):
            why = f"{act} is used more than once"
    if why:
        return _Chain(conv, bn, None, _IDENTITY_SLOPE, f"activation left in place: {why}")
    return _Chain(conv, bn, act, activation_slope(modules[act]))


def _chains_from_traces(model, traces, report, shared):
    modules = dict(model.named_modules())
    pairs = {}  # conv path -> the BatchNorm path its output goes to, in call order
    for _, calls in traces:
        for c in calls:
            if isinstance(modules[c.path], tuple(_FUSED_CLASS)) and type(modules[c.path]) not in _STOCK_CLASS:
                for u in c.uses:
                    if isinstance(u, Call) and isinstance(modules[u.path], _BatchNorm):
                        pairs.setdefault(c.path, u.path)
    chains = []
    for conv, bn in pairs.items():
        reason = _conv_bn_ok(modules[conv], modules[bn]) or _calls_ok(conv, bn, traces)
        if reason:
            report.left.append(f"{conv} -> {bn}: {reason}")
        else:
            chains.append(_activation(conv, bn, traces, modules, shared))
    called = {c.path for _, calls in traces for c in calls}
    report.left += [f"{ch.conv} -> {ch.bn}: " + (f"forward does not pass the output of {ch.conv} to {ch.bn}"
                                                 if ch.conv in called else f"forward did not call {ch.conv}")
                    for ch in _chains_from_sequentials(model, FuseReport()) if ch.conv not in pairs]
    return chains


def _chains_from_sequentials(model, report):
    chains = []
    for prefix, seq in model.named_modules():
        if type(seq) is not nn.Sequential:
            continue
        names = list(seq._modules)
        for i in range(len(names) - 1):
            conv, bn = seq._modules[names[i]], seq._modules[names[i + 1]]
            if type(conv) not in _FUSED_CLASS or not isinstance(bn, (nn.BatchNorm2d, nn.SyncBatchNorm)):
                continue
            path = lambda n: f"{prefix}.{n}" if prefix else n  # noqa: E731
            reason = _conv_bn_ok(conv, bn)
            if reason:
                report.left.append(f"{path(names[i])} -> {path(names[i + 1])}: {reason}")
                continue
            act = seq._modules[names[i + 2]] if i + 2 < len(names) else None
            if type(act) in _ACTS and not _hooks(act):
                chains.append(_Chain(path(names[i]), path(names[i + 1]), path(names[i + 2]), activation_slope(act)))
            else:
                chains.append(_Chain(path(names[i]), path(names[i + 1]), None, _IDENTITY_SLOPE,
                                     "activation left in place: no hook-free ReLU/LeakyReLU follows"))
    return chains


def _not_analysed(model, why, assume_sequential, report):
    chains = _chains_from_sequentials(model, report)
    if assume_sequential:
        report.how = (f"not analysed ({why}); assume_sequential=True: fused the nn.Sequential chains "
                      "on your word that forward calls them only through their nn.Sequential")
        return chains
    report.how = (f"not analysed ({why}), so nothing is fused: pass example_inputs=(x,) that forward "
                  "takes, or assume_sequential=True if forward calls each nn.Sequential's layers only "
                  "through the nn.Sequential")
    report.left += [f"{' -> '.join(p for p in (c.conv, c.bn, c.act) if p)}: the model was not analysed"
                    for c in chains]
    n_bn = sum(type(m) in _ABSORBED_BN for m in model.modules())
    if n_bn and not chains:
        report.left.append(f"{n_bn} BatchNorm2d/SyncBatchNorm layer(s): the model was not analysed")
    return []


class _TracedSyncBatchNorm(nn.BatchNorm2d):
    """Stands in for an nn.SyncBatchNorm while fuse runs forward on fake tensors: the
    same call (any input of 2+ dims) without stock's refusal of CPU tensors and without
    collectives."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")


@contextlib.contextmanager
def _sync_bn_traced_plainly(model):
    swapped = [m for m in model.modules() if type(m) is nn.SyncBatchNorm]
    for m in swapped:
        m.__class__ = _TracedSyncBatchNorm
    try:
        yield
    finally:
        for m in swapped:
            m.__class__ = nn.SyncBatchNorm


def _parent_and_name(model, path):
    parent_path, _, name = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), name


def fuse(model: nn.Module, verbose: bool = True, return_report: bool = False, *,
         example_inputs=None, assume_sequential: bool = False):
    """Fuse every conv -> BatchNorm2d -> ReLU/LeakyReLU chain of `model` that is provably
    only called as a whole (module docstring), in place.

    example_inputs: a tuple of the positional arguments forward takes (a lone tensor is
        taken as ``(x,)``), e.g. ``(torch.randn(2, 100, 1, 1),)`` for a DCGAN generator;
        only their shapes, dtypes and devices matter: forward runs on fake copies.
        Without them the model is traced by torch.fx, else run on a guessed input.
    assume_sequential: when the model cannot be analysed, fuse the adjacent
        ``nn.Sequential`` chains anyway (else nothing is fused); the report says so.

    Returns `model` (and a FuseReport when return_report=True). The model computes the
    same function; state_dict keys and tensors are unchanged. verbose logs the report
    at INFO level ("gan_fast" logger) and prints it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"gan_fast.fuse(model): model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if example_inputs is not None and not isinstance(example_inputs, tuple):
        raise TypeError("gan_fast.fuse(example_inputs=...): a tuple of forward's positional arguments, "
                        f"got {type(example_inputs).__name__}")
    report = FuseReport()
    shared = _shared_paths(model)
    with _sync_bn_traced_plainly(model):
        traces, how = _trace.analyse(model, example_inputs)
    if traces is None:
        chains = _not_analysed(model, how, assume_sequential, report)
    else:
        done = sum(type(m) in _STOCK_CLASS for m in model.modules())
        report.how = how + (f"; {done} block(s) were already fused" if done else "")
        chains = _chains_from_traces(model, traces, report, shared)
    for ch in chains:
        paths = [p for p in (ch.conv, ch.bn, ch.act) if p]
        if any(p in shared for p in paths[:2]):
            report.left.append(f"{' -> '.join(paths)}: a module is shared between several places")
            continue
        conv, bn = model.get_submodule(ch.conv), model.get_submodule(ch.bn)
        conv.__class__ = _FUSED_CLASS[type(conv)]
        bn.__class__ = _ABSORBED_BN[type(bn)]
        object.__setattr__(conv, "_gan_fast_bn", bn)  # not a submodule: keeps state_dict keys
        object.__setattr__(bn, "_gan_fast_conv", conv)  # for convert_sync_batchnorm
        object.__setattr__(conv, "_gan_fast_slope", ch.slope)
        slot = None
        if ch.act:
            parent, name = _parent_and_name(model, ch.act)
            slot = (parent, name, parent._modules[name])
            parent._modules[name] = AbsorbedActivation(repr(slot[2]))
        object.__setattr__(conv, "_gan_fast_act_slot", slot)
        desc = " -> ".join(paths) + (f" (slope {ch.slope:g})" if ch.act else "")
        report.fused.append(desc + (f"; {ch.note}" if ch.note else ""))
    if verbose:
        log.info("%s", report)
        print(report)
    return (model, report) if return_report else model


def unfuse(model: nn.Module) -> nn.Module:
    """Undo ``fuse``: restore the stock classes and activation modules, in place."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"gan_fast.unfuse(model): model must be a torch.nn.Module, got {type(model).__name__}")
    for m in list(model.modules()):
        if type(m) in _STOCK_CLASS:
            bn, slot = m._gan_fast_bn, m._gan_fast_act_slot
            for attr in ("_gan_fast_bn", "_gan_fast_slope", "_gan_fast_act_slot"):
                object.__delattr__(m, attr)
            m.__class__ = _STOCK_CLASS[type(m)]
            bn.__class__ = _STOCK_BN[type(bn)]
            bn.__dict__.pop("_gan_fast_conv", None)
            if slot is not None:
                parent, name, act = slot
                parent._modules[name] = act
    return model
