"""``fuse(model)`` / ``unfuse(model)``: convert a stock model in place.

Every ``Conv2d|ConvTranspose2d -> BatchNorm2d -> ReLU|LeakyReLU`` chain is fused by
changing the classes of the existing module objects, never their parameters:

* the conv becomes ``FusedConv2d`` / ``FusedConvTranspose2d`` (subclasses of the
  stock conv) whose forward runs conv + fused BatchNorm+activation;
* the BatchNorm becomes ``AbsorbedBatchNorm2d`` (a BatchNorm2d whose forward is
  the identity: its parameters and buffers stay where they were);
* the activation module is replaced by ``nn.Identity`` (it holds no state).

So ``state_dict`` keys and tensors are unchanged and checkpoints load both ways.
Chains are found with torch.fx (any module layout whose forward traces); if the
model does not trace, only ``nn.Sequential`` chains are fused. An activation that
is a function call in forward, or a module used more than once, stays in place
and only conv+BatchNorm are fused (activation slope 1 = identity).
"""
from __future__ import annotations

import dataclasses
import logging

import torch.fx
import torch.nn.functional as F
from torch import nn

from gan_fast.nn import activation_slope, bn_act_from_module
from gan_fast.ops.conv_block import fused_block

log = logging.getLogger("gan_fast")

__all__ = ["fuse", "unfuse", "FuseReport", "FusedConv2d", "FusedConvTranspose2d", "AbsorbedBatchNorm2d"]

_IDENTITY_SLOPE = 1.0  # LeakyReLU with slope 1 is the identity: BatchNorm only


class _FusedConvMixin:
    def _bn_act(self, y):
        return bn_act_from_module(y, self._gan_fast_bn, self._gan_fast_slope)


class FusedConv2d(_FusedConvMixin, nn.Conv2d):
    """An nn.Conv2d whose forward also applies its absorbed BatchNorm2d + activation."""

    def forward(self, x):
        out = fused_block(x, self, self._gan_fast_bn, self._gan_fast_slope)  # None: not applicable
        return out if out is not None else self._bn_act(self._conv_forward(x, self.weight, self.bias))


class FusedConvTranspose2d(_FusedConvMixin, nn.ConvTranspose2d):
    """An nn.ConvTranspose2d whose forward also applies its absorbed BatchNorm2d + activation."""

    def forward(self, x, output_size=None):
        out = None if output_size is not None else fused_block(x, self, self._gan_fast_bn, self._gan_fast_slope)
        return out if out is not None else self._bn_act(nn.ConvTranspose2d.forward(self, x, output_size))


class AbsorbedBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d computed by the fused conv before it: forward is the identity."""

    def forward(self, x):
        return x


_FUSED_CLASS = {nn.Conv2d: FusedConv2d, nn.ConvTranspose2d: FusedConvTranspose2d}
_STOCK_CLASS = {v: k for k, v in _FUSED_CLASS.items()}
_FUNCTIONAL_ACTS = {F.relu, F.leaky_relu, torch.relu}


@dataclasses.dataclass
class FuseReport:
    """What ``fuse`` changed: lists of human-readable lines."""
    fused: list = dataclasses.field(default_factory=list)
    left: list = dataclasses.field(default_factory=list)

    def __str__(self):
        lines = [f"gan_fast.fuse: fused {len(self.fused)} block(s), left {len(self.left)}"]
        lines += [f"  fused: {s}" for s in self.fused] + [f"  left:  {s}" for s in self.left]
        return "\n".join(lines)


@dataclasses.dataclass
class _Chain:
    conv: str
    bn: str
    act: str | None      # module path of an activation to absorb, or None
    slope: float
    note: str = ""


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m, qualname):
        return super().is_leaf_module(m, qualname) or type(m).__module__.startswith("gan_fast")


def _shared_paths(model):
    seen, shared = {}, set()
    for name, m in model.named_modules(remove_duplicate=False):
        if id(m) in seen:
            shared.update({seen[id(m)], name})
        seen.setdefault(id(m), name)
    return shared


def _conv_bn_ok(conv, bn):
    if type(conv) not in _FUSED_CLASS:
        return f"{type(conv).__name__} is not a stock Conv2d/ConvTranspose2d"
    if type(bn) is not nn.BatchNorm2d:
        return f"{type(bn).__name__} is not a stock BatchNorm2d"
    if bn.num_features != conv.out_channels:
        return "BatchNorm2d.num_features != conv.out_channels"
    for m in (conv, bn):
        if m._forward_hooks or m._forward_pre_hooks:
            return f"{type(m).__name__} has forward hooks (e.g. spectral_norm)"
    return None


def _chains_from_graph(model, graph, report):
    modules = dict(model.named_modules())
    calls = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    chains = []
    for node in graph.nodes:
        if node.op != "call_module" or type(modules[node.target]) not in _FUSED_CLASS:
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module" or not isinstance(modules[users[0].target], nn.BatchNorm2d):
            continue
        bn_node = users[0]
        name = f"{node.target} -> {bn_node.target}"
        if len(node.args) != 1 or node.kwargs or len(bn_node.args) != 1:
            report.left.append(f"{name}: called with extra arguments")
            continue
        if calls[node.target] > 1 or calls[bn_node.target] > 1:
            report.left.append(f"{name}: a module is called more than once")
            continue
        reason = _conv_bn_ok(modules[node.target], modules[bn_node.target])
        if reason:
            report.left.append(f"{name}: {reason}")
            continue
        chains.append(_chain_with_activation(node.target, bn_node, modules, calls))
    return chains


def _chain_with_activation(conv, bn_node, modules, calls):
    users = list(bn_node.users)
    if len(users) == 1 and users[0].args and users[0].args[0] is bn_node:
        act = users[0]
        if act.op == "call_module" and isinstance(modules[act.target], (nn.ReLU, nn.LeakyReLU)):
            if calls[act.target] == 1:
                return _Chain(conv, bn_node.target, act.target, activation_slope(modules[act.target]))
            return _Chain(conv, bn_node.target, None, _IDENTITY_SLOPE,
                          f"activation {act.target} is used more than once: left in place")
        if act.op == "call_function" and act.target in _FUNCTIONAL_ACTS:
            return _Chain(conv, bn_node.target, None, _IDENTITY_SLOPE,
                          "activation is a function call in forward: left in place")
    return _Chain(conv, bn_node.target, None, _IDENTITY_SLOPE, "no activation follows")


def _chains_from_sequentials(model, report):
    chains = []
    for prefix, seq in model.named_modules():
        if type(seq) is not nn.Sequential:
            continue
        names = list(seq._modules)
        for i in range(len(names) - 1):
            conv, bn = seq._modules[names[i]], seq._modules[names[i + 1]]
            if type(conv) not in _FUSED_CLASS or not isinstance(bn, nn.BatchNorm2d):
                continue
            path = lambda n: f"{prefix}.{n}" if prefix else n  # noqa: E731
            reason = _conv_bn_ok(conv, bn)
            if reason:
                report.left.append(f"{path(names[i])} -> {path(names[i + 1])}: {reason}")
                continue
            act = seq._modules[names[i + 2]] if i + 2 < len(names) else None
            if isinstance(act, (nn.ReLU, nn.LeakyReLU)):
                chains.append(_Chain(path(names[i]), path(names[i + 1]), path(names[i + 2]), activation_slope(act)))
            else:
                chains.append(_Chain(path(names[i]), path(names[i + 1]), None, _IDENTITY_SLOPE, "no activation follows"))
    return chains


def _parent_and_name(model, path):
    parent_path, _, name = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), name


def fuse(model: nn.Module, verbose: bool = True, return_report: bool = False):
    """Fuse every conv -> BatchNorm2d -> ReLU/LeakyReLU chain of `model`, in place.

    Returns `model` (and a FuseReport when return_report=True). The model computes
    the same function; state_dict keys and tensors are unchanged. verbose logs
    the report at INFO level ("gan_fast" logger) and prints it.
    """
    report = FuseReport()
    try:
        graph = _Tracer().trace(model)
        chains = _chains_from_graph(model, graph, report)
    except Exception as e:  # data-dependent control flow etc.: fall back to Sequential chains
        report.left.append(f"(model not traceable by torch.fx: {type(e).__name__}: {e}; "
                           "fused nn.Sequential chains only)")
        chains = _chains_from_sequentials(model, report)
    shared = _shared_paths(model)
    for ch in chains:
        paths = [p for p in (ch.conv, ch.bn, ch.act) if p]
        if any(p in shared for p in paths):
            report.left.append(f"{' -> '.join(paths)}: a module is shared between several places")
            continue
        conv, bn = model.get_submodule(ch.conv), model.get_submodule(ch.bn)
        conv.__class__ = _FUSED_CLASS[type(conv)]
        bn.__class__ = AbsorbedBatchNorm2d
        object.__setattr__(conv, "_gan_fast_bn", bn)  # not a submodule: keeps state_dict keys
        object.__setattr__(conv, "_gan_fast_slope", ch.slope)
        slot = None
        if ch.act:
            parent, name = _parent_and_name(model, ch.act)
            slot = (parent, name, parent._modules[name])
            parent._modules[name] = nn.Identity()
        object.__setattr__(conv, "_gan_fast_act_slot", slot)
        desc = " -> ".join(paths) + (f" (slope {ch.slope:g})" if ch.act else "")
        report.fused.append(desc + (f"; {ch.note}" if ch.note else ""))
    if verbose:
        log.info("%s", report)
        print(report)
    return (model, report) if return_report else model


def unfuse(model: nn.Module) -> nn.Module:
    """Undo ``fuse``: restore the stock classes and activation modules, in place."""
    for m in list(model.modules()):
        if type(m) in _STOCK_CLASS:
            bn, slot = m._gan_fast_bn, m._gan_fast_act_slot
            for attr in ("_gan_fast_bn", "_gan_fast_slope", "_gan_fast_act_slot"):
                object.__delattr__(m, attr)
            m.__class__ = _STOCK_CLASS[type(m)]
            bn.__class__ = nn.BatchNorm2d
            if slot is not None:
                parent, name, act = slot
                parent._modules[name] = act
    return model
