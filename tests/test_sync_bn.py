"""Fused blocks with nn.SyncBatchNorm (issue 15), against the oracle: BatchNorm over the
concatenation of every rank's batch, in float64.

2 and 3 gloo processes (tests/dist_helpers.py); uneven batches and an empty one; NCHW and
channels_last; the cpu, reference and Triton (interpreter on CPU) backends; fuse before
and after nn.SyncBatchNorm.convert_sync_batchnorm, and the explicit modules with
sync=True; a process_group narrower than the world; a DDP training step of a fused DCGAN.
"""
import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

import gan_fast
from gan_fast import backends
from gan_fast.nn import Conv2dBNAct, ConvTranspose2dBNAct
from benchmarks.common import gan_step
from dist_helpers import run_ranks


def _backends():
    return [n for n in ("cpu", "reference", "triton") if backends.why_unavailable(n, "cpu") is None]


def _stock(conv_bias=0.0):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.LeakyReLU(0.2),
                      nn.ConvTranspose2d(6, 4, 4, 2, 1), nn.BatchNorm2d(4), nn.ReLU())
    with torch.no_grad():
        for bn in (m[1], m[4]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        m[0].bias.add_(conv_bias)
    return m


def _variant(stock, kind, group):
    m = copy.deepcopy(stock).float()
    if kind == "convert_then_fuse":
        m = nn.SyncBatchNorm.convert_sync_batchnorm(m, group)
        gan_fast.fuse(m, verbose=False)
    elif kind == "fuse_then_convert":
        gan_fast.fuse(m, verbose=False)
        m = nn.SyncBatchNorm.convert_sync_batchnorm(m, group)
    else:  # the explicit modules
        e = nn.Sequential(Conv2dBNAct(3, 6, 3, padding=1, sync=True, process_group=group),
                          ConvTranspose2dBNAct(6, 4, 4, 2, 1, sync=True, process_group=group))
        with torch.no_grad():
            for a, b in zip(e.state_dict().values(), m.state_dict().values()):
                a.copy_(b)
        m = e
    absorbed = [type(x).__name__ for x in m.modules() if "SyncBatchNorm" in type(x).__name__]
    assert len(absorbed) == 2, absorbed
    return m


def _bns(m):
    return [x for x in m.modules() if isinstance(x, nn.modules.batchnorm._BatchNorm)]


def _close(a, b, what, tol):
    torch.testing.assert_close(a.double(), b.double(), atol=tol, rtol=tol, msg=lambda s: f"{what}: {s}")


def _one_case(rank, members, sizes, kind, cl, group, conv_bias=0.0, tol=2e-4):
    """Rank `rank` of `members` (the ranks of its group, each with sizes[r] images)."""
    mf = torch.channels_last if cl else torch.contiguous_format
    stock = _stock(conv_bias).double()
    model = _variant(stock, kind, group).to(memory_format=mf)
    gen = torch.Generator().manual_seed(1)
    total = sum(sizes[r] for r in members)
    xs = [torch.randn(total, 3, 5, 5, generator=gen, dtype=torch.float64) * 2 for _ in range(2)]
    g = torch.randn(total, 4, 10, 10, generator=gen, dtype=torch.float64)
    lo = sum(sizes[r] for r in members[:members.index(rank)])
    part = slice(lo, lo + sizes[rank])

    # step 1: forward + backward against the oracle (stock BatchNorm2d, all members' batches)
    x_ref = xs[0].clone().requires_grad_()
    out_ref = stock(x_ref)
    out_ref.backward(g)
    x = xs[0][part].float().contiguous(memory_format=mf).requires_grad_()
    out = model(x)
    assert out.dtype == torch.float32 and out.shape == (sizes[rank], 4, 10, 10)
    if cl and out.numel():
        assert out.is_contiguous(memory_format=torch.channels_last), "layout as stock"
    out.backward(g[part].float().contiguous(memory_format=mf))
    what = f"rank {rank} {kind} cl={cl} backend={backends.resolve_name('cpu')}"
    _close(out, out_ref[part], f"{what} output", tol)
    _close(x.grad, x_ref.grad[part], f"{what} grad x", tol)
    for (name, p), p_ref in zip(model.named_parameters(), stock.parameters()):
        grad = p.grad.clone()
        dist.all_reduce(grad, group=group)  # local grads, as stock: their sum is the oracle's
        _close(grad, p_ref.grad, f"{what} grad {name}", tol * 10)
    # step 2 (forward only) then the running statistics
    stock(xs[1])
    with torch.no_grad():
        model(xs[1][part].float().contiguous(memory_format=mf))
    for bn, bn_ref in zip(_bns(model), _bns(stock)):
        _close(bn.running_mean, bn_ref.running_mean, f"{what} running_mean", tol)
        _close(bn.running_var, bn_ref.running_var, f"{what} running_var", tol)
        assert int(bn.num_batches_tracked) == 2
    # eval: the running statistics, nothing synchronised
    model.eval()
    stock.eval()
    if sizes[rank]:
        _close(model(xs[0][part].float().contiguous(memory_format=mf)), stock(xs[0][part]),
               f"{what} eval output", tol)


def _check_blocks(rank, world, names):
    sizes = {2: [3, 5], 3: [4, 0, 3]}[world]  # uneven; with 3, rank 1 holds an empty batch
    members = list(range(world))
    for name in names:
        with backends.use_backend(name):
            for cl in (False, True):
                for kind in ("convert_then_fuse", "fuse_then_convert", "explicit"):
                    _one_case(rank, members, sizes, kind, cl, None)
    # a large mean (BatchNorm's cancellation): the statistics are combined stably
    with backends.use_backend(names[0]):
        _one_case(rank, members, sizes, "convert_then_fuse", False, None, conv_bias=3000.0,
                  tol=3e-3)


@pytest.mark.parametrize("world", [2, 3])
def test_sync_blocks_match_the_concatenated_batch(world):
    run_ranks(_check_blocks, world, _backends())


def _check_process_group(rank, world):
    groups = [dist.new_group([0, 1]), dist.new_group([2])]  # every rank creates every group
    group, members = (groups[0], [0, 1]) if rank < 2 else (groups[1], [2])
    for kind in ("convert_then_fuse", "explicit"):
        _one_case(rank, members, [2, 3, 4], kind, False, group)


def test_sync_blocks_honour_process_group():
    run_ranks(_check_process_group, 3)


def _check_stock_refuses_cpu(rank, world):
    bn = nn.SyncBatchNorm(3)
    with pytest.raises(ValueError, match="GPU"):
        bn(torch.randn(2, 3, 4, 4))
    block = Conv2dBNAct(2, 3, 3, sync=True)  # gan_fast's works on CPU with gloo
    assert block(torch.randn(2, 2, 5, 5)).shape == (2, 3, 3, 3)


def test_stock_sync_batchnorm_refuses_cpu_and_gan_fast_does_not():
    run_ranks(_check_stock_refuses_cpu, 2)


def test_outside_a_process_group_as_stock():
    """No process group: stock SyncBatchNorm is plain BatchNorm; so is the fused one."""
    assert not dist.is_initialized()
    stock = nn.SyncBatchNorm.convert_sync_batchnorm(_stock())
    fused = gan_fast.fuse(copy.deepcopy(stock), verbose=False)
    x = torch.randn(4, 3, 5, 5)
    xs, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_s, out_f = stock(xs), fused(xf)
    _close(out_f, out_s, "output", 1e-5)
    g = torch.randn_like(out_s)
    out_s.backward(g)
    out_f.backward(g)
    _close(xf.grad, xs.grad, "grad x", 1e-5)
    for a, b in zip(fused.parameters(), stock.parameters()):
        _close(a.grad, b.grad, "grad", 1e-4)
    for a, b in zip(fused.buffers(), stock.buffers()):
        _close(a, b, "buffer", 1e-6)


def test_report_after_convert_and_double_conversion():
    m = gan_fast.fuse(nn.SyncBatchNorm.convert_sync_batchnorm(_stock()), verbose=False)
    m = nn.SyncBatchNorm.convert_sync_batchnorm(m)  # converting again keeps it fused
    assert [type(x).__name__ for x in m][:3] == ["FusedConv2d", "AbsorbedSyncBatchNorm",
                                                "AbsorbedActivation"]
    x = torch.randn(3, 3, 5, 5)
    _close(m(x), _stock()(x), "output", 1e-5)
    gan_fast.unfuse(m)
    assert type(m[1]) is nn.SyncBatchNorm and type(m[0]) is nn.Conv2d


def _check_double_backward_refused(rank, world):
    block = Conv2dBNAct(2, 3, 3, sync=True)
    x = torch.randn(3, 2, 5, 5, requires_grad=True)
    (gx,) = torch.autograd.grad(block(x).sum(), x, create_graph=False)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(block(x).square().sum(), x, create_graph=True)


def test_sync_double_backward_is_refused():
    run_ranks(_check_double_backward_refused, 2)


# ---- a DDP training step of a fused DCGAN against the oracle
def _check_ddp_dcgan(rank, world, name):
    from torch.nn.parallel import DistributedDataParallel as DDP

    from gan_fast.train.models import build_models
    g0, d0 = build_models(8, 4, 4, 1, 32, seed=0)
    per = 3
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(per * world, 8, 1, 1, generator=gen)
    real = torch.randn(per * world, 1, 32, 32, generator=gen)
    part = slice(rank * per, (rank + 1) * per)

    # oracle: stock BatchNorm2d over the whole global batch, float64, one process
    gr, dr = copy.deepcopy(g0).double(), copy.deepcopy(d0).double()
    bce = nn.BCEWithLogitsLoss()
    gan_step(gr, dr, z.double(), real.double(), torch.optim.SGD(gr.parameters(), lr=0.1),
             torch.optim.SGD(dr.parameters(), lr=0.1),
             lambda r, f: bce(r, torch.ones_like(r)) + bce(f, torch.zeros_like(f)),
             lambda f: bce(f, torch.ones_like(f)))
    with backends.use_backend(name):
        g = gan_fast.fuse(nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(g0)), verbose=False)
        d = gan_fast.fuse(nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(d0)), verbose=False)
        gd, dd = DDP(g), DDP(d)
        loss_d, loss_g = gan_fast.nn.GANLoss("bce", "d"), gan_fast.nn.GANLoss("bce", "g")
        gan_step(gd, dd, z[part], real[part], torch.optim.SGD(g.parameters(), lr=0.1),
                 torch.optim.SGD(d.parameters(), lr=0.1), loss_d, loss_g, d_for_g=d)
    for (n, p), p_ref in zip(list(g.named_parameters()) + list(d.named_parameters()),
                             list(gr.parameters()) + list(dr.parameters())):
        _close(p, p_ref, f"rank {rank} {name} parameter {n} after one step", 2e-5)
    for b, b_ref in zip(list(g.buffers()) + list(d.buffers()), list(gr.buffers()) + list(dr.buffers())):
        _close(b, b_ref, f"rank {rank} {name} buffer", 2e-5)


def test_ddp_step_of_fused_dcgan_matches_oracle():
    run_ranks(_check_ddp_dcgan, 2, "cpu")
