"""Second-order gradients (R1, WGAN-GP, path-length penalties) through every fused op are
exact: a backward run with create_graph=True is built from differentiable ops, so
differentiating it again gives the stock layers' result, on every backend and path
(``.backward()``, ``torch.autograd.grad(..., inputs=[...])``, a grad_output with or
without a graph)."""
import copy

import pytest
import torch
from torch import nn

import gan_fast
from gan_fast import functional, reference
from gan_fast.nn import Conv2dBNAct, ConvTranspose2dBNAct


def _dtype(name):
    return torch.float64 if name in ("cpu", "reference") else torch.float32


def _tol(dtype):
    return {"atol": 1e-9, "rtol": 1e-9} if dtype == torch.float64 else {"atol": 1e-3, "rtol": 1e-3}


def _block(cls, training, device, dtype):
    torch.manual_seed(1)
    args = (3, 4, 3, 1, 1) if cls is Conv2dBNAct else (3, 4, 4, 2, 1)
    block = cls(*args).to(device, dtype).train(training)
    with torch.no_grad():
        block[1].running_mean.normal_()
        block[1].running_var.uniform_(0.5, 2.0)
        block[1].weight.normal_()
        block[1].bias.normal_()
    return block, copy.deepcopy(nn.Sequential(*block))


def _penalty_grads(model, x, create_outer):
    """R1-style penalty d/d(params) |d(sum y^2)/dx|^2, through autograd.grad with inputs."""
    y = model(x)
    (gx,) = torch.autograd.grad((y ** 2).sum(), x, create_graph=True)
    params = [model[0].weight, model[0].bias, model[1].weight, model[1].bias]
    penalty = (gx ** 2).sum()
    if create_outer:
        return torch.autograd.grad(penalty, params + [x])
    penalty.backward()
    return [p.grad for p in params]


@pytest.mark.parametrize("cls", [Conv2dBNAct, ConvTranspose2dBNAct])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("via", ["grad", "backward"])
def test_block_penalty_matches_stock(backend, cls, training, via):
    name, device = backend
    dtype = _dtype(name)
    fused, stock = _block(cls, training, device, dtype)
    x = torch.randn(2, 3, 5, 5, device=device, dtype=dtype, requires_grad=True)
    with gan_fast.use_backend(name):
        got = _penalty_grads(fused, x, via == "grad")
    want = _penalty_grads(stock, x, via == "grad")
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **_tol(dtype))


def test_block_grad_of_sum_has_batchnorm_second_order_terms(backend):
    """torch.autograd.grad(y.sum(), x, create_graph=True): the incoming gradient needs no
    grad, yet the result depends on x through BatchNorm: the second derivative is not 0."""
    name, device = backend
    dtype = _dtype(name)
    fused, stock = _block(Conv2dBNAct, True, device, dtype)
    x = torch.randn(2, 3, 5, 5, device=device, dtype=dtype, requires_grad=True)

    def second(model):
        (g,) = torch.autograd.grad(model(x).sum(), x, create_graph=True)
        return torch.autograd.grad((g ** 2).sum(), model[0].weight)[0]
    with gan_fast.use_backend(name):
        got = second(fused)
    torch.testing.assert_close(got, second(stock), **_tol(dtype))


@pytest.mark.parametrize("kind", ["bce", "hinge", "lsgan", "wgan"])
@pytest.mark.parametrize("side", ["d", "g"])
def test_loss_penalty_matches_reference(backend, kind, side):
    """The loss's gradient w.r.t. a linear layer's input, differentiated again w.r.t. the
    layer's weight (bce and lsgan have a non-zero second derivative)."""
    name, device = backend
    dtype = _dtype(name)
    torch.manual_seed(2)
    lin = nn.Linear(3, 1).to(device, dtype)
    z_real = torch.randn(6, 3, device=device, dtype=dtype, requires_grad=True)
    z_fake = torch.randn(5, 3, device=device, dtype=dtype, requires_grad=True)

    def second(loss_fn):
        real = lin(z_real).squeeze(1) if side == "d" else None
        loss = loss_fn(real, lin(z_fake).squeeze(1))
        inputs = [z_fake] + ([z_real] if side == "d" else [])
        grads = torch.autograd.grad(loss, inputs, create_graph=True)
        return torch.autograd.grad(sum((g ** 2).sum() for g in grads), lin.weight)[0]
    with gan_fast.use_backend(name):
        got = second(lambda r, f: functional.gan_loss(r, f, kind, side))
    want = second(lambda r, f: reference.gan_loss(kind, r, f, side))
    torch.testing.assert_close(got, want, **_tol(dtype))
    if kind in ("bce", "lsgan"):
        assert got.abs().max() > 0


@pytest.mark.parametrize("training", [True, False])
def test_bn_act_gradgradcheck(training):
    """gradgradcheck of functional.bn_act in float64 on the cpu and reference backends."""
    torch.manual_seed(3)
    x = torch.randn(3, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.rand(2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.randn(2, dtype=torch.float64), torch.rand(2, dtype=torch.float64) + 0.5

    def f(x, w, b):
        return functional.bn_act(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5, 0.2)
    for name in ("cpu", "reference"):
        with gan_fast.use_backend(name):
            assert torch.autograd.gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("kind", ["bce", "lsgan"])
def test_loss_gradgradcheck(kind):
    torch.manual_seed(4)
    real = torch.randn(5, dtype=torch.float64, requires_grad=True)
    fake = torch.randn(4, dtype=torch.float64, requires_grad=True)
    for name in ("cpu", "reference"):
        with gan_fast.use_backend(name):
            assert torch.autograd.gradgradcheck(
                lambda r, f: functional.gan_loss(r, f, kind, "d"), (real, fake))


def test_block_gradgradcheck():
    torch.manual_seed(5)
    block = Conv2dBNAct(2, 3, 3, padding=1).double()
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    with gan_fast.use_backend("cpu"):
        assert torch.autograd.gradgradcheck(lambda x, w: torch.func.functional_call(
            block, {"0.weight": w}, (x,)), (x, block[0].weight.detach().requires_grad_()))
