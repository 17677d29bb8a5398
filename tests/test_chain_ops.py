"""The C++ ops of fuse's InstanceNorm2d and norm-free chains (csrc/conv_chain.cpp,
gan_fast/ops/chain.py) on the cpu backend (and the cuda one on a GPU): one op per chain
call, bit for bit what the Python composition they replace computes (the same kernels),
stock's results, errors and fallbacks, and exact double backward."""
import copy

import pytest
import torch
from torch import nn

import gan_fast
from gan_fast.ops import chain
from helpers import require_cpu_extension

require_cpu_extension()


@pytest.fixture(autouse=True, params=[
    "cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                         reason="no CUDA GPU on this machine"))])
def device(request):
    """The device the test runs on (modules and tensors made there), its C++ backend forced;
    on CUDA without TF32, so that fp32 convolutions compare with stock's."""
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    with gan_fast.use_backend(request.param), torch.device(request.param):
        yield request.param
    torch.backends.cudnn.allow_tf32 = tf32


# float64 runs on the cpu backend only (the cuda backend has no float64 kernels)
cpu_only = pytest.mark.parametrize("device", ["cpu"], indirect=True)


def _chain(norm, transposed=False, slope=0.2, c_in=3, c_out=5):
    conv = nn.ConvTranspose2d(c_in, c_out, 4, 2, 1) if transposed else nn.Conv2d(c_in, c_out, 3, 1, 1)
    act = nn.ReLU(inplace=True) if slope == 0.0 else nn.LeakyReLU(slope, inplace=True)
    layers = [conv] + ([norm] if norm is not None else []) + [act]
    return nn.Sequential(*layers)


def _norm(affine=True, bias=True, track=True, momentum=0.1):
    norm = nn.InstanceNorm2d(5, affine=affine, track_running_stats=track, momentum=momentum,
                             bias=bias) if affine else \
        nn.InstanceNorm2d(5, track_running_stats=track, momentum=momentum)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if norm.weight is not None:
            norm.weight.copy_(0.5 + torch.rand(5, generator=gen, device="cpu"))
        if norm.bias is not None:
            norm.bias.copy_(0.2 * torch.randn(5, generator=gen, device="cpu"))
        if norm.running_mean is not None:
            norm.running_mean.copy_(0.1 * torch.randn(5, generator=gen, device="cpu"))
            norm.running_var.copy_(0.5 + torch.rand(5, generator=gen, device="cpu"))
    return norm


def _ops_called(model, x):
    """The gan_fast_C ops one training forward + backward of `model` calls, by name."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(x).sum().backward()
    return {e.name for e in prof.events() if e.name.startswith("gan_fast_C::")}


def _python_path(fused, x):
    """`fused`'s chains forced onto the Python composition (what they ran before the ops)
    for tensors like x."""
    for m in fused.modules():
        cache = m.__dict__.get("_gan_fast_paths")
        if cache is not None:
            cache.clear()
            cache[("chain", x.device, x.dtype, gan_fast.backends.generation)] = chain.stock_then_norm_act
    return fused


def _same_bits(a, b, x, steps=2, train=True):
    """`a` and `b` give identical outputs, input and parameter gradients and buffers."""
    a.train(train), b.train(train)
    for _ in range(steps):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = a(xa), b(xb)
        assert torch.equal(ya, yb) and ya.stride() == yb.stride()
        g = torch.randn_like(ya)
        ya.backward(g), yb.backward(g)
        assert torch.equal(xa.grad, xb.grad)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p.grad, q.grad), n
    for (n, p), q in zip(a.named_buffers(), b.buffers()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("config", [dict(), dict(bias=False), dict(affine=False),
                                    dict(track=False), dict(momentum=None),
                                    dict(affine=False, track=False)])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_instance_norm_chain_is_one_op_and_same_bits_as_python(config, transposed, train):
    torch.manual_seed(0)
    stock = _chain(_norm(**config), transposed)
    x = torch.randn(3, 3, 6, 5)
    assert "gan_fast_C::conv_in_act_eager" in _ops_called(
        gan_fast.fuse(copy.deepcopy(stock)).train(train), x)
    for x in (x, x.contiguous(memory_format=torch.channels_last)):
        python = _python_path(gan_fast.fuse(copy.deepcopy(stock)), x)
        _same_bits(python, gan_fast.fuse(copy.deepcopy(stock)), x, train=train)


@pytest.mark.parametrize("slope", [0.0, 0.2])
@pytest.mark.parametrize("transposed", [False, True])
def test_norm_free_chain_is_one_op_and_same_bits_as_python(slope, transposed):
    torch.manual_seed(0)
    stock = _chain(None, transposed, slope)
    x = torch.randn(2, 3, 6, 5)
    assert "gan_fast_C::conv_act_eager" in _ops_called(gan_fast.fuse(copy.deepcopy(stock)), x)
    _same_bits(_python_path(gan_fast.fuse(copy.deepcopy(stock)), x), gan_fast.fuse(stock), x)


@cpu_only
def test_instance_norm_chain_matches_stock_float64(device):
    torch.manual_seed(0)
    stock = _chain(_norm(), transposed=True).double()
    fused = gan_fast.fuse(copy.deepcopy(stock))
    from helpers import assert_fused_same
    assert_fused_same(stock, fused, torch.randn(2, 3, 4, 5, dtype=torch.float64))


def test_one_by_one_planes_in_training_raise_stocks_error():
    stock = _chain(_norm(), c_in=3)
    stock[0] = nn.Conv2d(3, 5, 3)  # 3x3 -> 1x1
    fused = gan_fast.fuse(copy.deepcopy(stock))
    x = torch.randn(2, 3, 3, 3)
    with pytest.raises(ValueError) as want:
        stock(x)
    with pytest.raises(ValueError) as got:
        fused(x)
    assert str(got.value) == str(want.value)
    fused.eval(), stock.eval()
    torch.testing.assert_close(fused(x), stock(x))  # eval with running statistics is fine


@pytest.mark.parametrize("case, norm", [(case, True) for case in ("eps0", "unbatched", "empty", "autocast", "reflect")]
                         + [(case, False) for case in ("unbatched", "empty", "autocast", "reflect")])
def test_what_the_op_does_not_take_runs_as_stock(case, norm):
    torch.manual_seed(0)
    norm = _norm() if norm else None
    if case == "eps0":
        norm.eps = 0.0
    stock = _chain(norm)
    if case == "reflect":
        stock[0].padding_mode = "reflect"
    fused = gan_fast.fuse(copy.deepcopy(stock))
    x = {"unbatched": torch.randn(3, 6, 5), "empty": torch.randn(0, 3, 6, 5)}.get(
        case, torch.randn(2, 3, 6, 5))
    if case == "autocast":
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            ya, yb = stock(x), fused(x)
        assert yb.dtype == ya.dtype
        torch.testing.assert_close(yb.float(), ya.float(), atol=2e-2, rtol=2e-2)
        return
    if case == "empty" and norm is not None:  # stock's instance_norm fails there: the same error
        with pytest.raises(IndexError) as want:
            stock(x)
        with pytest.raises(IndexError) as got:
            fused(x)
        assert str(got.value) == str(want.value)
        return
    ya, yb = stock(x), fused(x)
    torch.testing.assert_close(yb, ya, atol=1e-5, rtol=1e-5, equal_nan=True)
    for (n, a), b in zip(stock.named_buffers(), fused.buffers()):
        torch.testing.assert_close(b, a, msg=n)


@cpu_only
@pytest.mark.parametrize("norm", [True, False])
def test_double_backward_through_the_ops_is_exact(device, norm):
    """gradgradcheck in x, and an R1-style penalty (gradient of the input gradient's norm)
    reaching every parameter as stock's does."""
    torch.manual_seed(0)
    stock = _chain(_norm() if norm else None, slope=0.2).double()
    fused = gan_fast.fuse(copy.deepcopy(stock))
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    name = "conv_in_act_eager" if norm else "conv_act_eager"
    assert f"gan_fast_C::{name}" in _ops_called(fused, x)
    torch.autograd.gradgradcheck(fused, (x,))
    for model in (stock, fused):
        model.zero_grad()
        (g,) = torch.autograd.grad(model(x).square().sum(), x, create_graph=True)
        g.square().sum().backward()
    for (n, a), b in zip(stock.named_parameters(), fused.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-10, rtol=1e-9, msg=n)


def test_no_grad_and_frozen_parameters():
    torch.manual_seed(0)
    stock = _chain(_norm())
    fused = gan_fast.fuse(copy.deepcopy(stock))
    x = torch.randn(2, 3, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), stock(x))
    for p in (*stock.parameters(), *fused.parameters()):
        p.requires_grad_(False)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    stock(xa).sum().backward(), fused(xb).sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad)
    for (n, a), b in zip(stock.named_buffers(), fused.buffers()):
        torch.testing.assert_close(b, a, msg=n)


def test_stock_conv_error_for_wrong_channels():
    fused = gan_fast.fuse(_chain(_norm()))
    with pytest.raises(RuntimeError, match="channels"):
        fused(torch.randn(2, 4, 6, 5))


NORMS = {"batch": lambda: nn.BatchNorm2d(5), "instance": lambda: _norm(), "none": lambda: None}


@pytest.mark.parametrize("first", NORMS)
@pytest.mark.parametrize("then", NORMS)
def test_a_conv_refused_into_another_chain_runs_its_new_chain(first, then):
    """Choices cached on a fused conv do not survive unfuse / a new fuse with another norm."""
    torch.manual_seed(0)
    conv, x = nn.Conv2d(3, 5, 3, 1, 1), torch.randn(2, 3, 6, 5)
    model = gan_fast.fuse(_chain(NORMS[first](), c_in=3))
    model[0] = conv
    model(x)
    gan_fast.unfuse(model)
    stock = _chain(NORMS[then]())
    stock[0] = conv
    fused = gan_fast.fuse(copy.deepcopy(stock))
    torch.testing.assert_close(fused(x), stock(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", NORMS)
def test_geometry_given_as_numpy_ints_or_a_plain_int(norm):
    """What stock's F.conv2d takes for stride/padding, the fused ops take too (the direct
    binding refuses numpy ints; the op runs through the dispatcher then)."""
    np = pytest.importorskip("numpy")
    torch.manual_seed(0)
    k = np.int64(4)
    stock = _chain(NORMS[norm]())
    stock[0] = nn.Conv2d(3, 5, k, stride=k // 2, padding=k // 4)
    fused = gan_fast.fuse(copy.deepcopy(stock))
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fused(x), stock(x), atol=1e-5, rtol=1e-5)
    stock[0].stride = fused[0].stride = 1  # an int set after construction
    torch.testing.assert_close(fused(x), stock(x), atol=1e-5, rtol=1e-5)


class _Tagged(torch.Tensor):
    """A Tensor subclass with the default __torch_function__ (results keep the subclass)."""


@pytest.mark.parametrize("norm", NORMS)
def test_tensor_subclasses_and_torch_function_modes_see_the_op(norm):
    torch.manual_seed(0)
    stock = _chain(NORMS[norm]())
    fused = gan_fast.fuse(copy.deepcopy(stock))
    x = torch.randn(2, 3, 6, 5)
    assert type(stock(x.as_subclass(_Tagged))) is _Tagged
    assert type(fused(x.as_subclass(_Tagged))) is _Tagged

    seen = []

    class Log(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Log():
        fused(x)
    assert any("gan_fast_C" in s or "conv2d" in s for s in seen), seen


@pytest.mark.parametrize("norm", NORMS)
def test_input_dtype_mismatch_gives_stocks_error(norm):
    stock = _chain(NORMS[norm]())
    fused = gan_fast.fuse(copy.deepcopy(stock))
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    with pytest.raises(RuntimeError) as want:
        stock(x)
    with pytest.raises(RuntimeError) as got:
        fused(x)
    assert str(got.value) == str(want.value)


def test_unbatched_input_after_a_batched_call_is_refused_as_on_the_first_call():
    """BatchNorm2d refuses a 3-D input (stock: ValueError); so does the fused block, with
    the same message whether or not its choice of kernels is cached."""
    stock = _chain(nn.BatchNorm2d(5))
    with pytest.raises(ValueError):
        stock(torch.randn(3, 6, 5))
    fused = gan_fast.fuse(copy.deepcopy(stock))
    with pytest.raises(ValueError, match="4-D") as first:
        fused(torch.randn(3, 6, 5))
    fused(torch.randn(2, 3, 6, 5))  # the block's choice is cached now
    with pytest.raises(ValueError) as then:
        fused(torch.randn(3, 6, 5))
    assert str(then.value) == str(first.value)
