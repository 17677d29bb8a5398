"""Synchronised BatchNorm2d + LeakyReLU across a process group (``nn.SyncBatchNorm``'s math).

``bn_act(y, bn, negative_slope)`` is act(bn(y)) for an ``nn.SyncBatchNorm`` `bn`. Where stock
``SyncBatchNorm`` would synchronise (training, ``torch.distributed`` initialised, more than
one process in ``bn.process_group`` or the world), the statistics are those of the
concatenation of every rank's batch; elsewhere (eval, no process group, a group of one)
it is the ordinary fused BatchNorm2d + activation, as stock falls back to ``F.batch_norm``.
Unlike stock, which refuses CPU tensors, this works on CPU with gloo (and on CUDA with
nccl): the collectives are plain ``torch.distributed`` calls on the tensors' device.

Built on the kernel contract (``gan_fast.reference``), no new kernels:

* forward: local per-channel (count, mean, M2) (``torch.var_mean``, stable), **one**
  ``all_gather`` of them, combined exactly in float64 (Chan et al.'s parallel formula:
  M2 = sum(M2_i + n_i (mean_i - mean)^2), so a large mean costs no accuracy); then the
  backend's ``bn_act_eval_fwd`` with the global statistics, and the running statistics
  updated with the global count (unbiased variance), as ``SyncBatchNorm`` does;
* backward: the backend's ``bn_act_bwd(batch_stats=False)`` gives grad_x for constant
  statistics and the per-channel sums sum(dz * xhat), sum(dz); **one** ``all_reduce`` of
  those two; then grad_x -= (w * invstd / N) * (sum_dz + xhat * sum_dz_xhat). grad_weight
  and grad_bias are the local sums, as stock (DistributedDataParallel averages them).

Ranks may hold different batch sizes, an empty batch included (it still joins both
collectives). Double backward (``create_graph=True``) raises a RuntimeError, as it does
through stock ``SyncBatchNorm``. This is an ``autograd.Function``, not a torch.library
custom op: collectives do not trace under torch.compile's fake tensors here, so a
compiled model graph-breaks at a synchronised block (eager speed there).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from gan_fast import _checks, _formats
from gan_fast._layout import dense
from gan_fast.ops import bn_act as _bn_act
from gan_fast.ops.block import bn_mode


def group_of(bn):
    """(process_group, world_size) when stock SyncBatchNorm would synchronise this call
    (training, torch.distributed initialised, more than one process), else None."""
    if not (bn.training and dist.is_available() and dist.is_initialized()):
        return None
    group = bn.process_group or dist.group.WORLD
    world = dist.get_world_size(group)
    return (group, world) if world > 1 else None


def bn_act(y: Tensor, bn, negative_slope: float) -> Tensor:
    """act(SyncBatchNorm(y)) with `bn`'s parameters, buffers, mode and process group."""
    sync = group_of(bn)
    if sync is None:  # what stock does: the ordinary BatchNorm
        from gan_fast.nn import bn_act_from_module
        return bn_act_from_module(y, bn, negative_slope)
    return apply(y, bn, negative_slope, sync)


def apply(y: Tensor, bn, negative_slope: float, sync) -> Tensor:
    """act(SyncBatchNorm(y)) synchronised over sync = group_of(bn) (not None)."""
    if y.dim() != 4:
        raise ValueError(f"expected a 4D input (N, C, H, W), got {y.dim()}D")
    if y.shape[1] == 0:
        raise ValueError("SyncBatchNorm number of input channels should be non-zero")
    _checks.bn_eps(bn.eps, True)
    _, running_mean, running_var, nbt, momentum = bn_mode(bn)
    return _SyncBNAct.apply(y, bn.weight, bn.bias, running_mean, running_var, nbt, momentum,
                            bn.eps, float(negative_slope), sync[0], sync[1])


def _acc(x: Tensor):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _c(t: Tensor) -> Tensor:
    return t.view(1, -1, 1, 1)


def global_stats(y: Tensor, group, world: int):
    """(mean, biased var) (C,) in y's accumulation dtype, and the count N, over the
    concatenation of every rank's y: one all_gather of (count, mean, M2)."""
    c, n = y.shape[1], y.numel() // max(y.shape[1], 1)
    if n > 0:
        var, mean = torch.var_mean(y.to(_acc(y)), dim=(0, 2, 3), correction=0)
        mean = mean.double()
        m2 = var.double() * n
    else:
        mean = m2 = torch.zeros(c, dtype=torch.float64, device=y.device)
    local = torch.cat([mean.new_full((1,), float(n)), mean, m2])
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local, group=group)
    every = torch.stack(parts)                       # (world, 1 + 2C), float64
    counts, means, m2s = every[:, :1], every[:, 1:1 + c], every[:, 1 + c:]
    total = counts.sum()
    mean = (counts * means).sum(0) / total.clamp_min(1)
    m2 = (m2s + counts * (means - mean).square()).sum(0)
    var = m2 / total.clamp_min(1)
    return mean.to(_acc(y)), var.to(_acc(y)), int(total.item())


class _SyncBNAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, weight, bias, running_mean, running_var, nbt, momentum, eps, slope,
                group, world):
        with torch.autocast(y.device.type, enabled=False):
            y = dense(y)
            mean, var, total = global_stats(y, group, world)
            if y.numel():
                out = _bn_act._run_eval(y, weight, bias, mean, var, eps, slope)
            else:
                out = torch.empty_like(y)
            if total == 0:  # every rank's batch is empty: nothing to normalise or track
                if nbt is not None:
                    nbt.add_(1)
            elif running_mean is not None:
                _bn_act.update_running_stats(running_mean, running_var, nbt, mean, var,
                                             momentum, total)
        ctx.save_for_backward(y, weight, bias, mean, var)
        ctx.eps, ctx.slope, ctx.group, ctx.total = eps, slope, group, total
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "gan_fast: double backward (create_graph=True) through a synchronised "
                "BatchNorm (nn.SyncBatchNorm in a fused block) is not supported, as it is not "
                "through stock nn.SyncBatchNorm; compute gradient penalties outside the "
                "process group's synchronisation (e.g. model.eval() BatchNorm) or unsynced")
        y, weight, bias, mean, var = ctx.saved_tensors
        acc, c = _acc(y), y.shape[1]
        w = weight.to(acc) if weight is not None else y.new_ones(c, dtype=acc)
        b = bias.to(acc) if bias is not None else y.new_zeros(c, dtype=acc)
        with torch.autocast(y.device.type, enabled=False):
            if y.numel():
                # constant-statistics backward in the accumulation dtype (exact sums, and
                # grad_x rounded once below)
                gx, s_dz_xhat, s_dz = _bn_act._run_backward(
                    grad_out.to(acc), dense(y.to(acc)), w, b, mean, var, ctx.eps,
                    ctx.slope, False)
            else:
                gx, s_dz_xhat, s_dz = None, y.new_zeros(c, dtype=acc), y.new_zeros(c, dtype=acc)
            grad_y = None
            if ctx.needs_input_grad[0]:
                sums = torch.cat([s_dz, s_dz_xhat])
                dist.all_reduce(sums, group=ctx.group)
                if y.numel():
                    invstd = torch.rsqrt(var + ctx.eps)
                    a = w * invstd / ctx.total
                    k = a * invstd * sums[c:]
                    gx = torch.addcmul(gx - _c(a * sums[:c]), y.to(acc) - _c(mean), _c(k), value=-1)
                    grad_y = gx.to(y.dtype).contiguous(memory_format=_formats.memory_format(y))
                else:
                    grad_y = torch.zeros_like(y)
        gw = s_dz_xhat.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        gb = s_dz.to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return grad_y, gw, gb, None, None, None, None, None, None, None, None
