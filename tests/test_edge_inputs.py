"""Edge inputs behave as the stock layers do, on every backend: the same value, or the
same kind of error with a sentence naming the argument (issue 14, point 4)."""
import copy

import pytest
import torch
from torch import nn

import gan_fast
from gan_fast import functional
from gan_fast.nn import Conv2dBNAct, ConvTranspose2dBNAct


def _pair(training=True, **bn_kw):
    torch.manual_seed(0)
    fused = Conv2dBNAct(3, 4, 3, padding=1, **bn_kw).train(training)
    return fused, copy.deepcopy(nn.Sequential(*fused))


def _stock_error(fn):
    """The stock error's type and its sentence (up to the number, which C++ prints as 0
    where Python prints 0.0)."""
    with pytest.raises(Exception) as info:
        fn()
    return info.type, str(info.value).split(", but got")[0]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("eps", [0.0, -0.5])
def test_eps_as_stock(backend, training, eps):
    name, device = backend
    fused, stock = _pair(training, eps=eps)
    fused, stock = fused.to(device), stock.to(device)
    x = torch.randn(2, 3, 4, 4, device=device)
    if training or eps < 0:
        kind, message = _stock_error(lambda: stock(x))
        with gan_fast.use_backend(name), pytest.raises(kind, match=message):
            fused(x)
        with gan_fast.use_backend(name), pytest.raises(kind, match=message):
            functional.bn_act(x, torch.zeros(3, device=device), torch.ones(3, device=device),
                              training=training, eps=eps)
    else:  # eps 0 in eval: stock computes with it
        with gan_fast.use_backend(name):
            got = fused(x)
        torch.testing.assert_close(got, stock(x), equal_nan=True)


@pytest.mark.parametrize("cls", [Conv2dBNAct, ConvTranspose2dBNAct])
def test_empty_batch_as_stock(backend, cls):
    """N=0 (or an empty map) in training: an empty output, statistics untouched,
    num_batches_tracked counting the batch, and a backward that runs."""
    name, device = backend
    torch.manual_seed(0)
    fused = cls(3, 4, 3, padding=1).to(device).train()
    stock = copy.deepcopy(nn.Sequential(*fused))
    x = torch.randn((0, 3, 4, 4), device=device, requires_grad=True)
    want = stock(x)
    with gan_fast.use_backend(name):
        got = fused(x)
        got.sum().backward()
    assert got.shape == want.shape and got.numel() == 0
    for a, b in zip(fused.buffers(), stock.buffers()):
        torch.testing.assert_close(a, b)
    for shape in [(0, 3, 4, 4), (2, 3, 0, 0)]:  # an empty batch or an empty map
        with gan_fast.use_backend(name):
            out = functional.bn_act(torch.randn(shape, device=device),
                                    torch.zeros(3, device=device), torch.ones(3, device=device),
                                    training=True)
        assert out.shape == shape


def test_zero_channels_is_an_index_error_with_a_sentence(backend):
    name, device = backend
    x = torch.randn(2, 0, 4, 4, device=device)
    with gan_fast.use_backend(name), pytest.raises(IndexError, match="x must have at least one channel"):
        functional.bn_act(x, None, None, training=True)


def test_momentum_of_the_wrong_type_names_the_argument(backend):
    name, device = backend
    fused, _ = _pair(momentum="x")
    x = torch.randn(2, 3, 4, 4, device=device)
    with gan_fast.use_backend(name), pytest.raises(TypeError, match="momentum must be a float or None"):
        fused.to(device)(x)
    with gan_fast.use_backend(name), pytest.raises(TypeError, match="momentum must be a float or None"):
        functional.bn_act(x, torch.zeros(3, device=device), torch.ones(3, device=device),
                          training=True, momentum="x")


def test_nan_slope_gives_stock_values(backend):
    """LeakyReLU(nan) is accepted by stock: positive values pass, the rest become NaN."""
    name, device = backend
    fused, stock = _pair(negative_slope=float("nan"))
    fused, stock = fused.to(device), stock.to(device)
    x = torch.randn(2, 3, 4, 4, device=device)
    with gan_fast.use_backend(name):
        got = fused(x)
    torch.testing.assert_close(got, stock(x), equal_nan=True)


def test_the_eager_op_refuses_one_value_per_channel():
    """Called directly, the C++ op checks the batch itself (it used to return an infinite
    running_var)."""
    from gan_fast.kernels import cpp
    rm, rv = torch.zeros(3), torch.ones(3)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        cpp.bn_act_train_eager(torch.randn(1, 3, 1, 1), None, None, rm, rv, None, 0.1, 1e-5, 0.2)
    assert torch.isfinite(rv).all()


def test_meta_tensors_under_auto_behave_as_stock():
    """auto on a device with no backend of its own (meta) runs the reference, as stock
    layers would, instead of a bare ValueError."""
    fused, stock = _pair()
    x = torch.randn(2, 3, 4, 4, device="meta")
    got = fused.to("meta")(x)
    assert got.shape == stock.to("meta")(x).shape and got.device.type == "meta"
