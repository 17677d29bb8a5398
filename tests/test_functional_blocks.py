"""functional.conv2d_bn_act / conv_transpose2d_bn_act run the way the modules run: the
same kernels (the fused Triton conv on the triton backend, one C++ op on cpu), the same
values, the same running-statistics update."""
import pytest
import torch
import torch.nn.functional as F

import gan_fast
from gan_fast import functional
from helpers import TRITON_CONV_KERNELS, count_calls, require_triton


def _stock(x, w, b, rm, rv, bw, bb, transposed, training, slope):
    y = (F.conv_transpose2d(x, w, b, 2, 1) if transposed else F.conv2d(x, w, b, 2, 1))
    return F.leaky_relu(F.batch_norm(y, rm, rv, bw, bb, training, 0.1, 1e-5), slope)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_functional_blocks_match_stock(backend, transposed, training):
    name, device = backend
    dtype = torch.float64 if name in ("cpu", "reference") else torch.float32
    torch.manual_seed(0)
    opts = dict(device=device, dtype=dtype)
    x = torch.randn(2, 3, 4, 4, **opts)
    w = torch.randn((3, 5, 4, 4) if transposed else (5, 3, 4, 4), **opts)
    b, bw, bb = torch.randn(5, **opts), torch.rand(5, **opts) + 0.5, torch.randn(5, **opts)
    rm, rv = torch.randn(5, **opts), torch.rand(5, **opts) + 0.5
    rm2, rv2 = rm.clone(), rv.clone()
    fn = functional.conv_transpose2d_bn_act if transposed else functional.conv2d_bn_act
    with gan_fast.use_backend(name):
        got = fn(x, w, b, rm, rv, bw, bb, stride=2, padding=1, training=training,
                 negative_slope=0.2)
    want = _stock(x, w, b, rm2, rv2, bw, bb, transposed, training, 0.2)
    tol = dict(atol=1e-9, rtol=1e-9) if dtype == torch.float64 else dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(rm, rm2, **tol)
    torch.testing.assert_close(rv, rv2, **tol)


def test_functional_blocks_take_the_fused_triton_conv(monkeypatch):
    require_triton("cpu")
    from gan_fast.kernels.triton import conv as tconv
    counts = count_calls(monkeypatch, tconv, TRITON_CONV_KERNELS)
    x, w = torch.randn(2, 3, 4, 4), torch.randn(5, 3, 4, 4)
    with gan_fast.use_backend("triton"):
        functional.conv2d_bn_act(x, w, None, torch.zeros(5), torch.ones(5), stride=2,
                                 padding=1, training=True)
    assert counts["conv2d_stats"] == 1


def test_triton_block_is_one_autograd_function_in_eager_mode():
    """On the triton backend an eager block call is one autograd.Function (the custom op's
    Python dispatch is for torch.compile only)."""
    require_triton("cpu")
    from gan_fast.nn import Conv2dBNAct
    block = Conv2dBNAct(3, 4, 4, 2, 1)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    with gan_fast.use_backend("triton"):
        out = block(x)
    assert type(out.grad_fn).__name__ == "TrainEagerBackward"
    out.sum().backward()
    assert x.grad is not None and block[0].weight.grad is not None


def test_string_padding_goes_to_the_stock_conv(backend):
    """'same' padding: conv2d_bn_act computes it as stock; conv_transpose2d_bn_act refuses it
    as F.conv_transpose2d does (it once ran F.conv2d with the transposed weight)."""
    name, device = backend
    dtype = torch.float64 if name in ("cpu", "reference") else torch.float32
    x = torch.randn(2, 4, 5, 5, device=device, dtype=dtype)
    w = torch.randn(4, 4, 3, 3, device=device, dtype=dtype)
    with gan_fast.use_backend(name):
        got = functional.conv2d_bn_act(x, w, None, None, None, padding="same", training=True)
        with pytest.raises(TypeError, match="padding"):
            functional.conv_transpose2d_bn_act(x, w, None, None, None, padding="same",
                                               training=True)
    want = F.leaky_relu(F.batch_norm(F.conv2d(x, w, None, 1, "same"), None, None, training=True),
                        0.2)
    torch.testing.assert_close(got, want)
