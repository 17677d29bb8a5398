"""in_act (InstanceNorm2d + LeakyReLU) on every backend against the float64 oracle and stock."""
import pytest
import torch
import torch.nn.functional as F

from gan_fast import BackendUnavailable, functional, reference
from helpers import assert_close, image, tied_image

SHAPES = [(2, 3, 2, 1), (2, 5, 4, 4), (3, 7, 5, 3)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# affine variants: (weight, bias) present; (True, False) is InstanceNorm2d(affine=True, bias=False)
AFFINE = [(False, False), (True, True), (True, False)]


def supports(backend, dtype):
    name, device = backend
    return not (dtype == torch.float64 and (name == "triton" or device == "cuda"))


def per_channel(c, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    w = (torch.rand(c, generator=gen) + 0.5).to(device=device, dtype=dtype)
    b = (torch.randn(c, generator=gen) * 0.2).to(device=device, dtype=dtype)
    rm = torch.randn(c, generator=gen).to(device=device, dtype=dtype)
    rv = (torch.rand(c, generator=gen) + 0.5).to(device=device, dtype=dtype)
    return w, b, rm, rv


def grads_of(fn, x, params, g):
    """fn's output and the gradients w.r.t. x and the given (non-None) parameters."""
    x = x.detach().requires_grad_()
    params = [None if p is None else p.detach().requires_grad_() for p in params]
    out = fn(x, *params)
    wrt = [x] + [p for p in params if p is not None]
    return out, torch.autograd.grad(out, wrt, g)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("use_input_stats", [True, False])
def test_matches_oracle(backend, shape, dtype, channels_last, use_input_stats):
    name, device = backend
    c = shape[1]
    x = image(shape, dtype, device, channels_last, seed=1)
    if not supports(backend, dtype):  # refused with a clear error, never computed wrongly
        with pytest.raises(BackendUnavailable, match="no float64 kernels"):
            functional.in_act(x)
        return
    pdtype = torch.float32 if dtype != torch.float64 else dtype
    w, b, rm, rv = per_channel(c, pdtype, device, seed=2)
    g = image(shape, dtype, device, seed=3)
    slope = 0.2
    got_rm, got_rv = rm.clone(), rv.clone()
    out, grads = grads_of(lambda x, w, b: functional.in_act(x, got_rm, got_rv, w, b, use_input_stats,
                                                            0.1, 1e-5, slope), x, [w, b], g)
    want_rm, want_rv = rm.double(), rv.double()
    want, want_grads = grads_of(lambda x, w, b: reference.in_act(x, w, b, want_rm, want_rv, use_input_stats,
                                                                 0.1, 1e-5, slope),
                                x.double(), [w.double(), b.double()], g.double())
    assert out.dtype == dtype and out.shape == x.shape and out.is_contiguous()  # stock: NCHW out
    assert_close(out, want, dtype, what="out")
    scale = float(want_grads[0].abs().max()) + 1.0
    for got, exp, what in zip(grads, want_grads, ("grad x", "grad weight", "grad bias")):
        s = scale if what == "grad x" else scale * x.numel() / c
        assert_close(got, exp, dtype, scale=s, what=what)
    assert_close(got_rm, want_rm, pdtype, what="running_mean")
    assert_close(got_rv, want_rv, pdtype, what="running_var")


@pytest.mark.parametrize("affine", AFFINE, ids=["none", "weight+bias", "weight-only"])
@pytest.mark.parametrize("track", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_module_semantics_match_stock(backend, affine, track, training):
    """Every InstanceNorm2d configuration, through the arguments the module passes, in float64
    on cpu backends (float32 elsewhere) against stock F.instance_norm + F.leaky_relu."""
    name, device = backend
    dtype = torch.float64 if supports(backend, torch.float64) else torch.float32
    shape = (3, 4, 5, 6)
    x = image(shape, dtype, device, seed=4, mean=3.0)
    g = image(shape, dtype, device, seed=5)
    w, b, rm, rv = per_channel(4, dtype, device, seed=6)
    w = w if affine[0] else None
    b = b if affine[1] else None
    rm, rv = (rm, rv) if track else (None, None)
    use_input_stats = training or not track
    stats = [None if t is None else t.clone() for t in (rm, rv)]
    stock_stats = [None if t is None else t.clone() for t in (rm, rv)]
    out, grads = grads_of(lambda x, w, b: functional.in_act(x, *stats, w, b, use_input_stats, 0.1, 1e-5, 0.0),
                          x, [w, b], g)
    want, want_grads = grads_of(
        lambda x, w, b: F.relu(F.instance_norm(x, *stock_stats, w, b, use_input_stats, 0.1, 1e-5)),
        x, [w, b], g)
    assert len(grads) == len(want_grads)
    for got, exp in zip([out, *grads, *[t for t in stats if t is not None]], [want, *want_grads, *[t for t in stock_stats if t is not None]]):
        assert_close(got, exp, dtype, scale=10.0)


@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_ties_at_the_kink(backend, slope):
    """Planes whose normalised value is exactly 0 somewhere take the slope as derivative."""
    name, device = backend
    x = tied_image((2, 3, 5, 3), torch.float32, device)
    assert (reference.in_act(x.double(), None, None, None, None, True, 0.1, 1e-5, slope) == 0).any()
    g = image((2, 3, 5, 3), torch.float32, device, seed=7)
    out, (gx,) = grads_of(lambda x: functional.in_act(x, negative_slope=slope), x, [], g)
    want, (wx,) = grads_of(lambda x: reference.in_act(x, None, None, None, None, True, 0.1, 1e-5, slope),
                           x.double(), [], g.double())
    assert_close(out, want, torch.float32)
    assert_close(gx, wx, torch.float32, scale=10.0)


def test_gradgradcheck_float64():
    """Second derivatives (gradient penalties through an InstanceNorm generator)."""
    x = image((2, 3, 3, 2), torch.float64, seed=8).requires_grad_()
    w, b, _, _ = per_channel(3, torch.float64, "cpu", seed=9)
    w.requires_grad_(), b.requires_grad_()
    fn = lambda x, w, b: functional.in_act(x, None, None, w, b, True, 0.1, 1e-5, 0.2)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_errors_name_the_argument():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        functional.in_act(torch.randn(2, 3, 1, 1))
    functional.in_act(torch.randn(2, 3, 1, 1), torch.zeros(3), torch.ones(3), use_input_stats=False)
    with pytest.raises(ValueError, match="use_input_stats=False needs running_mean"):
        functional.in_act(x, use_input_stats=False)
    with pytest.raises(ValueError, match="both be given"):
        functional.in_act(x, torch.zeros(3), None)
    with pytest.raises(ValueError, match="weight"):
        functional.in_act(x, weight=torch.ones(4))
    with pytest.raises(ValueError, match="x must be"):
        functional.in_act(torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="momentum"):
        functional.in_act(x, torch.zeros(3), torch.ones(3), momentum=None)
    with pytest.raises(ValueError, match="eps must be non-negative"):
        functional.in_act(x, eps=-1e-5)
    with pytest.raises(TypeError, match="eps"):
        functional.in_act(x, eps="1e-5")


def test_eps_zero_as_stock():
    """instance_norm, unlike batch_norm, takes eps = 0 in training: constant planes give
    what stock gives (a NaN/inf there), the others the exact normalisation."""
    x = torch.randn(2, 3, 4, 4)
    x[0, 1] = 0.5  # one constant plane
    torch.testing.assert_close(functional.in_act(x, eps=0.0, negative_slope=0.2),
                               F.leaky_relu(F.instance_norm(x, eps=0.0), 0.2), equal_nan=True)


def test_empty_batch_as_stock():
    x = torch.randn(0, 3, 4, 4)
    assert functional.in_act(x).shape == x.shape == F.instance_norm(x).shape
