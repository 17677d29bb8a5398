"""``fuse(model)`` / ``unfuse(model)``: convert a stock model in place.

Every ``Conv2d|ConvTranspose2d -> BatchNorm2d|SyncBatchNorm|InstanceNorm2d|(none) ->
ReLU|LeakyReLU|(none)`` chain that ``fuse`` can prove computes what stock computes
(``gan_fast.fuse_chains``) is fused by changing the classes of the existing module
objects, never their parameters (``gan_fast.fuse_modules``): the conv runs conv + norm +
activation, the norm and the activation become the identity. So ``state_dict`` keys and tensors are unchanged
and checkpoints load both ways. Hooks registered on these modules after ``fuse`` would
see fused values, so registering one raises a RuntimeError; hooks present before ``fuse``
keep their chain stock. ``torch.jit.script`` of a fused model raises (TorchScript cannot
compile the fused forward); torch.compile and torch.export trace the fused ops.
``torch.jit.trace`` records what a call ran, for the mode and backend it ran in: one C++ op
per block on the cpu/cuda backends (saves and loads); other paths may run Python autograd
Functions (the reference backend's do), which a trace holds but torch.jit.save refuses.

``fuse`` says what it fused, how it analysed the model and why it left each other chain
alone in a ``FuseReport``, logged at INFO level on the "gan_fast" logger (printed too with
``verbose=True``; returned with ``return_report=True``).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from gan_fast.fuse_chains import FuseReport, find_chains
from gan_fast.fuse_modules import (ABSORBED_NORM, FUSED_CLASS, STOCK_CLASS, STOCK_NORM, AbsorbedActivation,
                                   AbsorbedBatchNorm2d, AbsorbedInstanceNorm2d, AbsorbedSyncBatchNorm,
                                   FusedConv2d, FusedConvTranspose2d)

log = logging.getLogger("gan_fast")

__all__ = ["fuse", "unfuse", "FuseReport", "FusedConv2d", "FusedConvTranspose2d", "AbsorbedBatchNorm2d",
           "AbsorbedSyncBatchNorm", "AbsorbedInstanceNorm2d", "AbsorbedActivation"]


def _parent_and_name(model, path):
    parent_path, _, name = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), name


def _fuse_chain(model: nn.Module, ch) -> None:
    """Give the chain's modules their fused classes (gan_fast.fuse_modules)."""
    conv = model.get_submodule(ch.conv)
    norm = model.get_submodule(ch.norm) if ch.norm else None
    conv.__class__ = FUSED_CLASS[type(conv)]
    conv.__dict__.pop("_gan_fast_paths", None)  # choices cached for a chain it was in before
    object.__setattr__(conv, "_gan_fast_norm", norm)  # not a submodule: keeps state_dict keys
    if norm is not None:
        norm.__class__ = ABSORBED_NORM[type(norm)]
        object.__setattr__(norm, "_gan_fast_conv", conv)  # for convert_sync_batchnorm
    object.__setattr__(conv, "_gan_fast_slope", ch.slope)
    slot = None
    if ch.act:
        parent, name = _parent_and_name(model, ch.act)
        slot = (parent, name, parent._modules[name])
        parent._modules[name] = AbsorbedActivation(repr(slot[2]))
    object.__setattr__(conv, "_gan_fast_act_slot", slot)


def fuse(model: nn.Module, verbose: bool = False, return_report: bool = False, *,
         example_inputs=None, assume_sequential: bool = False):
    """Fuse every Conv2d/ConvTranspose2d -> [BatchNorm2d | SyncBatchNorm | InstanceNorm2d]
    -> ReLU/LeakyReLU chain of `model` (a norm or the activation may be missing, not both;
    the activation may be the next block's in-place one) that is provably computed as
    stock computes it (``gan_fast.fuse_chains``), in place.

    example_inputs: a tuple of the positional arguments forward takes (a lone tensor is
        taken as ``(x,)``), e.g. ``(torch.randn(2, 100, 1, 1),)`` for a DCGAN generator;
        only their shapes, dtypes and devices matter: forward runs on fake copies.
        Without them forward runs on a guessed input, else the model is traced by torch.fx.
    assume_sequential: when the model cannot be analysed, fuse the adjacent
        ``nn.Sequential`` chains anyway (else nothing is fused); the report says so.
    verbose: also print the report to stdout. It is always logged at INFO level on the
        "gan_fast" logger (``logging.basicConfig(level=logging.INFO)`` shows it).

    Returns `model` (and the FuseReport when return_report=True). The model computes the
    same function; state_dict keys and tensors are unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"gan_fast.fuse(model): model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if example_inputs is not None and not isinstance(example_inputs, tuple):
        raise TypeError("gan_fast.fuse(example_inputs=...): a tuple of forward's positional arguments, "
                        f"got {type(example_inputs).__name__}")
    report = FuseReport()
    for ch in find_chains(model, example_inputs, assume_sequential, report):
        _fuse_chain(model, ch)
        desc = ch.describe() + (f" (slope {ch.slope:g})" if ch.act else "")
        report.fused.append(desc + (f"; {ch.note}" if ch.note else ""))
    log.info("%s", report)
    if verbose:
        print(report)
    return (model, report) if return_report else model


def unfuse(model: nn.Module) -> nn.Module:
    """Undo ``fuse``: restore the stock classes and activation modules, in place."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"gan_fast.unfuse(model): model must be a torch.nn.Module, got {type(model).__name__}")
    for m in list(model.modules()):
        if type(m) in STOCK_CLASS:
            norm, slot = m._gan_fast_norm, m._gan_fast_act_slot
            for attr in ("_gan_fast_norm", "_gan_fast_slope", "_gan_fast_act_slot"):
                object.__delattr__(m, attr)
            m.__class__ = STOCK_CLASS[type(m)]
            m.__dict__.pop("_gan_fast_paths", None)
            if norm is not None:
                norm.__class__ = STOCK_NORM[type(norm)]
                norm.__dict__.pop("_gan_fast_conv", None)
            if slot is not None:
                parent, name, act = slot
                parent._modules[name] = act
    return model
