"""Which conv -> norm -> activation chains ``gan_fast.fuse`` may fuse, and why not the others.

How forward calls the modules is learned, in training and in eval mode, by running it on
fake tensors (``gan_fast._trace``: Python control flow followed, no kernels, no state
changed) with ``example_inputs``, else on a guessed input (N=2, the first conv's
in_channels, square sizes 1..256), else from a ``torch.fx`` trace. In every recorded
forward:

* a conv and its norm (BatchNorm2d, SyncBatchNorm, InstanceNorm2d) are fused when each
  call of the conv feeds only the norm and the norm only ever takes the conv's output, both
  from the same module's forward;
* the activation (a stock ReLU/LeakyReLU called nowhere else) is absorbed when it is the
  only user of the chain's output (the norm's, or the conv's when there is no norm), or,
  for an in-place activation, when it is the first operation anywhere that reads that
  output: every later reader (a skip connection's ``torch.cat`` in a pix2pix U-Net, where
  the next block's ``LeakyReLU(inplace=True)`` comes first) sees the activated tensor in
  stock PyTorch too, so the fused chain computes the same function. Otherwise the
  activation stays in place and only conv + norm are fused (slope 1 = identity);
* a conv without a norm is fused with its activation only.

A model none of these can analyse gets nothing fused, unless ``assume_sequential=True``:
then adjacent ``nn.Sequential`` chains are fused on the user's word that forward calls them
only through the Sequential. A module that stands in several places of the model is never
fused.

``find_chains`` returns the chains to fuse and writes the rest, each with its reason in
plain words, into a ``FuseReport``.
"""
from __future__ import annotations

import dataclasses

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from gan_fast import _trace
from gan_fast._trace import Call
from gan_fast.fuse_modules import ABSORBED_NORM, ACTS, FUSED_CLASS, STOCK_CLASS
from gan_fast.nn import activation_slope

__all__ = ["FuseReport", "Chain", "find_chains"]

_IDENTITY_SLOPE = 1.0  # LeakyReLU with slope 1 is the identity: the norm only
_NORMS = (_BatchNorm, nn.InstanceNorm2d)  # what a conv's output may go to (subclasses are refused)


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
    """One chain to fuse: module paths (norm and act may be None, not both), and the slope
    of the absorbed activation (1: none)."""
    conv: str
    norm: str | None
    act: str | None      # module path of an activation to absorb, or None
    slope: float
    note: str = ""

    def describe(self) -> str:
        return " -> ".join(p for p in (self.conv, self.norm, self.act) if p)


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


def _conv_ok(conv):
    if type(conv) not in FUSED_CLASS:
        return f"{type(conv).__name__} is not a stock Conv2d/ConvTranspose2d"
    if _hooks(conv):
        return f"the {type(conv).__name__} has {_hooks(conv)} (e.g. spectral_norm)"
    return None


def _conv_norm_ok(conv, norm):
    if _conv_ok(conv):
        return _conv_ok(conv)
    if type(norm) not in ABSORBED_NORM:
        return f"{type(norm).__name__} is not a stock BatchNorm2d, SyncBatchNorm or InstanceNorm2d"
    if norm.num_features != conv.out_channels:
        return f"{type(norm).__name__}.num_features != conv.out_channels"
    if _hooks(norm):
        return f"the {type(norm).__name__} has {_hooks(norm)}"
    return None


def _desc(uses) -> str:
    words = dict.fromkeys(u.path if isinstance(u, Call) else u for u in uses)  # in order, once each
    return ", ".join(list(words)[:3]) or "nothing (it is discarded)"


def _calls_ok(conv, norm, traces):
    """None if, in every trace, each call of `conv` feeds only a call of `norm` and each call
    of `norm` takes only the output of a `conv` call from the same frame; else why not."""
    for mode, calls in traces:
        n_conv = sum(c.path == conv for c in calls)
        for c in calls:
            if c.path == conv:
                if not c.simple:
                    return f"{mode}, {conv} is called with other arguments than one tensor"
                to_norm = [u for u in c.uses if isinstance(u, Call) and u.path == norm and u.src is c]
                if not to_norm:
                    where = ("called more than once, not only in this chain: one call's" if n_conv > 1
                             else "called, but its")
                    return f"{mode}, {conv} is {where} output goes to {_desc(c.uses)}"
                if len(c.uses) > 1:
                    return f"{mode}, the output of {conv} also goes to {_desc([u for u in c.uses if u is not to_norm[0]])}"
            elif c.path == norm and (c.src is None or c.src.path != conv):
                return (f"{mode}, {norm} is called with other arguments" if not c.simple else
                        f"{mode}, {norm} is also called on something other than the output of {conv}")
    return None


def _is_act(call, modules) -> bool:
    return isinstance(call, Call) and isinstance(modules[call.path], ACTS)


def _taker(c, modules):
    """The activation Call that may absorb the output of call `c`: its only user, or an
    in-place activation that reads it before anything else does; else None."""
    if len(c.uses) == 1 and _is_act(c.uses[0], modules) and c.uses[0].src is c:
        return c.uses[0]
    first = c.first_read
    if _is_act(first, modules) and first.simple and getattr(modules[first.path], "inplace", False):
        return first
    return None


def _why_not_taken(mode, c, modules):
    """Why no activation can absorb the output of call `c` (module docstring's rule)."""
    acts = [u for u in c.uses if _is_act(u, modules)]
    if _is_act(c.first_read, modules) and c.first_read not in acts:
        acts.append(c.first_read)
    if not acts:
        return f"no activation: the output of {c.path} goes to {_desc(c.uses)}"
    others = [u for u in c.uses if u not in acts]
    if c.first_read is not None and c.first_read not in acts:
        return f"{mode}, {_desc([c.first_read])} reads the output of {c.path} before {acts[0].path} does"
    if not others:
        return f"{mode}, {acts[0].path} is not called on the output of {c.path} alone"
    hint = ("" if getattr(modules[acts[0].path], "inplace", False) else
            " (with an in-place activation read first it would be fused: later readers see its result)")
    return f"{mode}, the output of {c.path} also goes to {_desc(others)}" + hint


def _activation(last, traces, modules, shared):
    """(activation path, None) when the activation after `last` (the norm, or the conv
    without one) can be absorbed, else (None, why not)."""
    takers = []
    for mode, calls in traces:
        for c in calls:
            if c.path == last:
                t = _taker(c, modules)
                if t is None:
                    return None, _why_not_taken(mode, c, modules)
                takers.append(t)
    acts = {t.path for t in takers}
    if len(acts) != 1:
        return None, f"different modules take the output of {last}: {', '.join(sorted(acts))}"
    act = acts.pop()
    m = modules[act]
    if type(m) not in ACTS:
        return None, f"{act} ({type(m).__name__}) is not a stock ReLU/LeakyReLU"
    if _hooks(m):
        return None, f"{act} has {_hooks(m)}"
    if act in shared or any(c.path == act and not any(c is t for t in takers)
                            for _, calls in traces for c in calls):
        return None, f"{act} is used more than once"
    return act, None


def _norm_chain(conv, norm, traces, modules, shared):
    act, why = _activation(norm, traces, modules, shared)
    if act is None:
        return Chain(conv, norm, None, _IDENTITY_SLOPE, f"activation left in place: {why}"
                     if not why.startswith("no activation") else why)
    return Chain(conv, norm, act, activation_slope(modules[act]))


def _plain_chain(conv, traces, modules, shared, report):
    """conv -> activation with no norm: the chain, or None (a line in the report when an
    activation takes the conv's output but cannot be absorbed)."""
    act, why = _activation(conv, traces, modules, shared)
    if act is None:
        if not why.startswith("no activation"):
            report.left.append(f"{conv} -> activation: {why}")
        return None
    reason = _conv_ok(modules[conv]) or next(
        (f"{mode}, {conv} is called with other arguments than one tensor"
         for mode, calls in traces for c in calls if c.path == conv and not c.simple), None)
    if reason:
        report.left.append(f"{conv} -> {act}: {reason}")
        return None
    return Chain(conv, None, act, activation_slope(modules[act]))


def _chains_from_traces(model, traces, report, shared):
    modules = dict(model.named_modules())
    heads = {}  # conv path -> the norm its output goes to (None: none), in call order
    for _, calls in traces:
        for c in calls:
            if isinstance(modules[c.path], tuple(FUSED_CLASS)) and type(modules[c.path]) not in STOCK_CLASS:
                norm = next((u.path for u in c.uses if isinstance(u, Call) and isinstance(modules[u.path], _NORMS)),
                            None)
                if heads.get(c.path) is None:
                    heads[c.path] = norm
    chains = []
    for conv, norm in heads.items():
        if norm is None:
            chains.append(_plain_chain(conv, traces, modules, shared, report))
            continue
        reason = _conv_norm_ok(modules[conv], modules[norm]) or _calls_ok(conv, norm, traces)
        if reason:
            report.left.append(f"{conv} -> {norm}: {reason}")
        else:
            chains.append(_norm_chain(conv, norm, traces, modules, shared))
    called = {c.path for _, calls in traces for c in calls}
    report.left += [f"{ch.conv} -> {ch.norm}: " + (f"forward does not pass the output of {ch.conv} to {ch.norm}"
                                                   if ch.conv in called else f"forward did not call {ch.conv}")
                    for ch in _chains_from_sequentials(model, FuseReport())
                    if ch.norm and heads.get(ch.conv) is None]
    return [ch for ch in chains if ch is not None]


def _chains_from_sequentials(model, report):
    """conv -> norm -> activation chains adjacent in an nn.Sequential (conv -> activation
    without a norm too), on the user's word that forward calls them through it."""
    chains = []
    for prefix, seq in model.named_modules():
        if type(seq) is not nn.Sequential:
            continue
        names = list(seq._modules)
        path = lambda n: f"{prefix}.{n}" if prefix else n  # noqa: E731
        for i, name in enumerate(names):
            conv = seq._modules[name]
            if type(conv) not in FUSED_CLASS:
                continue
            nxt = [seq._modules[n] for n in names[i + 1:i + 3]] + [None, None]
            has_norm = isinstance(nxt[0], _NORMS)
            if not has_norm and type(nxt[0]) not in ACTS:
                continue  # a conv alone: no chain
            reason = _conv_norm_ok(conv, nxt[0]) if has_norm else _conv_ok(conv)
            if reason:
                report.left.append(f"{path(name)} -> {path(names[i + 1]) if has_norm else '...'}: {reason}")
                continue
            act, act_name = (nxt[1], names[i + 2] if i + 2 < len(names) else None) if has_norm else (
                nxt[0], names[i + 1] if i + 1 < len(names) else None)
            norm = path(names[i + 1]) if has_norm else None
            if type(act) in ACTS and not _hooks(act):
                chains.append(Chain(path(name), norm, path(act_name), activation_slope(act)))
            elif has_norm:
                why = (f"{path(act_name)} has {_hooks(act)}" if type(act) in ACTS else
                       f"{path(act_name)} ({type(act).__name__}) is not a ReLU/LeakyReLU" if act is not None
                       else "nothing follows it in its nn.Sequential")
                chains.append(Chain(path(name), norm, None, _IDENTITY_SLOPE, f"activation left in place: {why}"))
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
    n_bn = sum(type(m) in ABSORBED_NORM for m in model.modules())
    if n_bn and not chains:
        report.left.append(f"{n_bn} norm layer(s): the model was not analysed")
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
        if ch.conv in shared or ch.norm in shared:
            report.left.append(f"{ch.describe()}: a module is shared between several places")
        else:
            kept.append(ch)
    return kept
