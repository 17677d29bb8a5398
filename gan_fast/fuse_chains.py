"""Which conv -> BatchNorm -> activation chains ``gan_fast.fuse`` may fuse, and why not the others.

How forward calls the modules is learned, in training and in eval mode, by running it on
fake tensors (``gan_fast._trace``: Python control flow followed, no kernels, no state
changed) with ``example_inputs``, else on a guessed input (N=2, the first conv's
in_channels, square sizes 1..256), else from a ``torch.fx`` trace. A chain is fused
when, in every recorded forward, each call of the conv feeds only its BatchNorm and the
BatchNorm only ever takes the conv's output, both from the same module's forward. The
activation is absorbed when it is the only user of the BatchNorm's output and is called
nowhere else; otherwise it stays in place and only conv+BatchNorm are fused (slope 1 =
identity). A model none of these can analyse gets nothing fused, unless
``assume_sequential=True``: then adjacent ``nn.Sequential`` chains are fused on the
user's word that forward calls them only through the Sequential. A module that stands in
several places of the model is never fused.

``find_chains`` returns the chains to fuse and writes the rest, each with its reason in
plain words, into a ``FuseReport``.
"""
from __future__ import annotations

import dataclasses

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from gan_fast import _trace
from gan_fast._trace import Call
from gan_fast.fuse_modules import ABSORBED_BN, ACTS, FUSED_CLASS, STOCK_CLASS
from gan_fast.nn import activation_slope

__all__ = ["FuseReport", "Chain", "find_chains"]

_IDENTITY_SLOPE = 1.0  # LeakyReLU with slope 1 is the identity: BatchNorm only


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
class Chain:
    """One chain to fuse: module paths, and the slope of the absorbed activation."""
    conv: str
    bn: str
    act: str | None      # module path of an activation to absorb, or None
    slope: float
    note: str = ""

    def describe(self) -> str:
        return " -> ".join(p for p in (self.conv, self.bn, self.act) if p)


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
    if type(conv) not in FUSED_CLASS:
        return f"{type(conv).__name__} is not a stock Conv2d/ConvTranspose2d"
    if type(bn) not in ABSORBED_BN:
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
        elif type(m) not in ACTS:
            why = f"{act} ({type(m).__name__}) is not a stock ReLU/LeakyReLU"
        elif _hooks(m):
            why = f"{act} has {_hooks(m)}"
        elif act in shared or any(c.path == act and (c.src is None or c.src.path != bn)
                                  for _, calls in traces for c in calls):
            why = f"{act} is used more than once"
    if why:
        return Chain(conv, bn, None, _IDENTITY_SLOPE, f"activation left in place: {why}")
    return Chain(conv, bn, act, activation_slope(modules[act]))


def _chains_from_traces(model, traces, report, shared):
    modules = dict(model.named_modules())
    pairs = {}  # conv path -> the BatchNorm path its output goes to, in call order
    for _, calls in traces:
        for c in calls:
            if isinstance(modules[c.path], tuple(FUSED_CLASS)) and type(modules[c.path]) not in STOCK_CLASS:
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
            if type(conv) not in FUSED_CLASS or not isinstance(bn, (nn.BatchNorm2d, nn.SyncBatchNorm)):
                continue
            path = lambda n: f"{prefix}.{n}" if prefix else n  # noqa: E731
            reason = _conv_bn_ok(conv, bn)
            if reason:
                report.left.append(f"{path(names[i])} -> {path(names[i + 1])}: {reason}")
                continue
            act = seq._modules[names[i + 2]] if i + 2 < len(names) else None
            if type(act) in ACTS and not _hooks(act):
                chains.append(Chain(path(names[i]), path(names[i + 1]), path(names[i + 2]), activation_slope(act)))
            else:
                chains.append(Chain(path(names[i]), path(names[i + 1]), None, _IDENTITY_SLOPE,
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
    report.left += [f"{c.describe()}: the model was not analysed" for c in chains]
    n_bn = sum(type(m) in ABSORBED_BN for m in model.modules())
    if n_bn and not chains:
        report.left.append(f"{n_bn} BatchNorm2d/SyncBatchNorm layer(s): the model was not analysed")
    return []



def find_chains(model: nn.Module, example_inputs: tuple | None, assume_sequential: bool,
                report: FuseReport) -> list:
    """The chains of `model` to fuse (module docstring); the report gets how the model was
    analysed and a line, with the reason, for every chain left alone."""
    shared = _shared_paths(model)
    traces, how = _trace.analyse(model, example_inputs)
    if traces is None:
        chains = _not_analysed(model, how, assume_sequential, report)
    else:
        done = sum(type(m) in STOCK_CLASS for m in model.modules())
        report.how = how + (f"; {done} block(s) were already fused" if done else "")
        chains = _chains_from_traces(model, traces, report, shared)
    kept = []
    for ch in chains:
        if ch.conv in shared or ch.bn in shared:
            report.left.append(f"{ch.describe()}: a module is shared between several places")
        else:
            kept.append(ch)
    return kept
