"""bn_act (BatchNorm2d + LeakyReLU) on every backend against the float64 oracle."""
import pytest
import torch

from gan_fast import BackendUnavailable, functional, reference
from helpers import assert_close, image, layout, tied_image

SHAPES = [(2, 3, 1, 1), (2, 5, 4, 4), (2, 63, 7, 5), (3, 16, 8, 8)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def supports(backend, dtype):
    name, device = backend
    return not (dtype == torch.float64 and (name == "triton" or device == "cuda"))


def oracle(x, weight, bias, rm, rv, training, slope, g, eps=1e-5, momentum=0.1, nbt=None):
    """Forward, input/weight/bias gradients and running stats from reference.bn_act in float64."""
    xd = x.detach().double().requires_grad_()
    wd = None if weight is None else weight.detach().double().requires_grad_()
    bd = None if bias is None else bias.detach().double().requires_grad_()
    rmd = None if rm is None else rm.double().clone()
    rvd = None if rv is None else rv.double().clone()
    out = reference.bn_act(xd, wd, bd, rmd, rvd, training, momentum, eps, slope, nbt)
    grads = torch.autograd.grad(out, [t for t in (xd, wd, bd) if t is not None], g.double())
    return out, grads, rmd, rvd


def run(x, weight, bias, rm, rv, training, slope, g, eps=1e-5, momentum=0.1):
    x = x.detach().requires_grad_()
    params = [t.detach().requires_grad_() if t is not None else None for t in (weight, bias)]
    out = functional.bn_act(x, rm, rv, params[0], params[1], training, momentum, eps, slope)
    grads = torch.autograd.grad(out, [t for t in (x, *params) if t is not None], g)
    return out, grads


def params(c, dtype, device, affine, seed=0):
    if not affine:
        return None, None
    gen = torch.Generator().manual_seed(seed)
    w = (torch.rand(c, generator=gen) + 0.5).to(device=device, dtype=dtype)
    b = (torch.randn(c, generator=gen) * 0.2).to(device=device, dtype=dtype)
    return w, b


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_matches_oracle(backend, shape, dtype, channels_last, training):
    name, device = backend
    c = shape[1]
    if not supports(backend, dtype):  # refused with a clear error, never computed wrongly
        with pytest.raises(BackendUnavailable, match="no float64 kernels"):
            functional.bn_act(image(shape, dtype, device, channels_last), None, None, training=True)
        return
    x = image(shape, dtype, device, channels_last, seed=1)
    w, b = params(c, torch.float32 if dtype != torch.float64 else dtype, device, affine=True)
    rm = torch.randn(c, device=device, dtype=w.dtype)
    rv = torch.rand(c, device=device, dtype=w.dtype) + 0.5
    g = image(shape, dtype, device, channels_last, seed=2)
    slope = 0.2
    out, grads = run(x, w, b, rm.clone(), rv.clone(), training, slope, g)
    want, want_grads, want_rm, want_rv = oracle(x, w, b, rm, rv, training, slope, g)
    assert out.dtype == dtype and out.shape == x.shape
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert_close(out, want, dtype, what="out")
    scale = float(want_grads[0].abs().max()) + 1.0
    for got, exp, what in zip(grads, want_grads, ("grad x", "grad weight", "grad bias")):
        # per-channel gradient sums grow with the number of elements reduced
        s = scale if what == "grad x" else scale * x.numel() / c
        assert_close(got, exp, dtype, scale=s, what=what)


@pytest.mark.parametrize("slope", [0.0, 0.2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_running_stats_and_affine_false(backend, slope, channels_last):
    name, device = backend
    shape = (3, 5, 4, 4)
    x = image(shape, torch.float32, device, channels_last, seed=3)
    g = image(shape, torch.float32, device, channels_last, seed=4)
    for affine in (True, False):
        w, b = params(5, torch.float32, device, affine)
        rm, rv = torch.zeros(5, device=device), torch.ones(5, device=device)
        ref_rm, ref_rv = rm.clone(), rv.clone()
        out, grads = run(x, w, b, rm, rv, True, slope, g)
        want, want_grads, want_rm, want_rv = oracle(x, w, b, ref_rm, ref_rv, True, slope, g)
        assert_close(out, want, torch.float32, what="out")
        assert_close(rm, want_rm, torch.float32, what="running_mean")
        assert_close(rv, want_rv, torch.float32, what="running_var")
        assert len(grads) == (3 if affine else 1)
        for got, exp in zip(grads, want_grads):
            assert_close(got, exp, torch.float32, scale=100.0, what="grad")


@pytest.mark.parametrize("slope", [0.0, 0.2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_ties_at_the_kink(backend, slope, channels_last):
    """Exact zeros at the activation's kink take the slope as derivative (PyTorch's
    convention). The data are small integers with a per-channel mean of exactly 0,
    so every sound summation gives mean 0 and the normalised value is exactly 0."""
    name, device = backend
    mean = 0.0
    shape = (2, 3, 5, 3)
    x = tied_image(shape, torch.float32, device, channels_last, mean=mean)
    w = torch.tensor([1.0, 0.5, 2.0], device=device)
    b = torch.zeros(3, device=device)
    g = image(shape, torch.float32, device, channels_last, seed=5)
    for training in (True, False):
        rm = torch.full((3,), mean, device=device)
        rv = torch.full((3,), 0.75, device=device)
        out, grads = run(x, w, b, rm.clone(), rv.clone(), training, slope, g)
        want, want_grads, _, _ = oracle(x, w, b, rm, rv, training, slope, g)
        assert (want == 0).any(), "the test data must hit the kink exactly"
        assert_close(out, want, torch.float32, what="out")
        for got, exp in zip(grads, want_grads):
            assert_close(got, exp, torch.float32, scale=10.0, what="grad")
    # Compare with stock PyTorch on the same tie data as well.
    xs = x.detach().clone().requires_grad_()
    stock = torch.nn.functional.leaky_relu(torch.nn.functional.batch_norm(xs, None, None, w, b, True), slope)
    stock.backward(g)
    out, grads = run(x, w, b, None, None, True, slope, g)
    assert_close(out, stock.detach(), torch.float32, what="out vs stock")
    assert_close(grads[0], xs.grad, torch.float32, scale=10.0, what="grad x vs stock")


@pytest.mark.parametrize("channels_last", [False, True])
def test_large_mean_statistics(backend, channels_last):
    """Inputs whose mean is ~1e4 times their spread: fp32 statistics must stay accurate
    (a naive E[x^2] - E[x]^2 in fp32 gives garbage here)."""
    name, device = backend
    x = image((4, 6, 8, 8), torch.float32, device, channels_last, seed=6)
    x = (x - x.mean()) * 1e-2 + 1e3  # spread ~0.01 on a mean of 1e3
    g = image((4, 6, 8, 8), torch.float32, device, channels_last, seed=7)
    out, grads = run(x, None, None, None, None, True, 0.2, g)
    want, want_grads, _, _ = oracle(x, None, None, None, None, True, 0.2, g)
    # The fp32 mean itself is only good to half an ulp of 1e3 (3e-5), i.e. 3e-3 of the
    # spread: that bounds any fp32 kernel. A cancelling variance would be off by O(1).
    torch.testing.assert_close(out.double(), want.double(), atol=1e-2, rtol=1e-2)
    # Where z is within that error of the kink the activation may flip: compare elsewhere.
    far = want.abs() > 0.05
    torch.testing.assert_close(grads[0].double()[far], want_grads[0][far],
                               atol=1e-2 * float(want_grads[0].abs().max()), rtol=1e-2)


def test_gradcheck_float64(backend):
    name, device = backend
    if not supports(backend, torch.float64):
        return  # refused with BackendUnavailable: test_matches_oracle checks it
    x = image((2, 3, 3, 2), torch.float64, device, seed=8).requires_grad_()
    w = torch.rand(3, dtype=torch.float64, device=device).add(0.5).requires_grad_()
    b = torch.randn(3, dtype=torch.float64, device=device).requires_grad_()
    for training in (True, False):
        rm, rv = torch.zeros(3, dtype=torch.float64, device=device), torch.ones(3, dtype=torch.float64, device=device)
        f = lambda x, w, b: functional.bn_act(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5, 0.1)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, w, b))


# Shapes that reach each way the CPU kernels split NCHW work (csrc/cpu/bn_act_impl.h,
# kTaskElems = 16384 values a task): a channel summed over several image blocks with a
# remainder (HW = 4096: 4 planes a block, N = 9); planes cut into chunks (HW = 16900);
# short planes with a scalar tail (HW = 35).
# The CPU kernels' work splits: channel-local NCHW tasks (a channel of <= 128 KiB:
# (6, 3, 64, 64), (40, 5, 7, 5)), whole-tensor passes over blocks of planes
# ((9, 3, 64, 64), (40, 2, 64, 64)), plane chunks (130x130 planes), channels_last rows.
SPLIT_SHAPES = [(6, 3, 64, 64), (9, 3, 64, 64), (2, 2, 130, 130), (40, 5, 7, 5), (40, 2, 64, 64)]


@pytest.mark.parametrize("shape", SPLIT_SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_work_splits(shape, channels_last):
    from gan_fast import use_backend  # raises BackendUnavailable if the extension is not built
    c = shape[1]
    x = image(shape, torch.float32, "cpu", channels_last, seed=11, mean=3.0)
    g = image(shape, torch.float32, "cpu", channels_last, seed=12)
    w, b = params(c, torch.float32, "cpu", affine=True)
    rm, rv = torch.zeros(c), torch.ones(c)
    with use_backend("cpu"):
        out, grads = run(x, w, b, rm.clone(), rv.clone(), True, 0.2, g)
    want, want_grads, _, _ = oracle(x, w, b, rm, rv, True, 0.2, g)
    assert_close(out, want, torch.float32, what="out")
    scale = float(want_grads[0].abs().max()) + 1.0
    for got, exp, what in zip(grads, want_grads, ("grad x", "grad weight", "grad bias")):
        s = scale if what == "grad x" else scale * x.numel() / c
        assert_close(got, exp, torch.float32, scale=s, what=what)


@pytest.mark.parametrize("shape", [(3, 3, 64, 64), (40, 5, 7, 5), (3, 7, 1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_cpu_channel_local_path_is_bitwise_the_whole_tensor_one(monkeypatch, shape, dtype):
    """Channels small enough for cache run stats/finish/apply (and the backward) in one
    task per channel; the sums keep the whole-tensor passes' order, so every output is
    the same to the bit (GAN_FAST_CPU_CHANNEL_LOCAL=0 forces the whole-tensor passes)."""
    from gan_fast.kernels import cpp  # noqa: F401  (loads gan_fast._C: torch.ops.gan_fast_C)
    ops = torch.ops.gan_fast_C
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(shape, generator=gen) * 0.1 + 2.0).to(dtype)
    g = torch.randn(shape, generator=gen).to(dtype)
    w, b = torch.rand(shape[1], generator=gen) + 0.5, torch.randn(shape[1], generator=gen)

    def both():
        out, mean, var = ops.bn_act_train_fwd(x, w, b, 1e-5, 0.2)
        return (out, mean, var, *ops.bn_act_bwd(g, x, w, b, mean, var, 1e-5, 0.2, True),
                *ops.bn_act_bwd(g, x, w, b, mean, var, 1e-5, 0.2, False))

    local = both()
    monkeypatch.setenv("GAN_FAST_CPU_CHANNEL_LOCAL", "0")
    whole = both()
    for a, e in zip(local, whole):
        assert torch.equal(a, e)


@pytest.mark.parametrize("momentum", [0.1, 0.37, None])
@pytest.mark.parametrize("with_counter", [True, False])
@pytest.mark.parametrize("stat_dtype", [torch.float32, torch.float64])
def test_cpp_running_stats_update_is_the_python_one(momentum, with_counter, stat_dtype):
    """The C++ eager op updates the running statistics bit for bit as
    ops.bn_act.update_running_stats (the torch.compile and Triton path) does."""
    from gan_fast.kernels import cpp
    from gan_fast.ops.bn_act import update_running_stats
    c = 37
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, c, 8, 8, generator=gen)
    rm, rv = torch.randn(c, generator=gen).to(stat_dtype), (torch.rand(c, generator=gen) + 0.5).to(stat_dtype)
    nbt = torch.tensor(3) if with_counter else None
    got = [rm.clone(), rv.clone(), None if nbt is None else nbt.clone()]
    version = got[0]._version
    cpp.bn_act_train_eager(x, None, None, got[0], got[1], got[2], momentum, 1e-5, 0.2)
    _, mean, var = torch.ops.gan_fast_C.bn_act_train_fwd(x, None, None, 1e-5, 0.2)
    want = [rm.clone(), rv.clone(), None if nbt is None else nbt.clone()]
    update_running_stats(want[0], want[1], want[2], mean, var, momentum, x.numel() // c)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert (got[2] is None) == (want[2] is None) and (got[2] is None or torch.equal(got[2], want[2]))
    if momentum is not None or with_counter:
        assert got[0]._version > version  # in-place updates are visible to autograd
