"""Kernel-level tests of the Triton backend (gan_fast.kernels.triton) against
gan_fast.reference: float64 autograd oracles where the math allows, the reference
backend where its exact semantics are the point (NaN/inf, label smoothing on side g).

On a machine without CUDA the kernels run on CPU tensors under TRITON_INTERPRET=1;
with CUDA they run on the GPU.
"""
import pytest
import torch

from helpers import require_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
require_triton(DEVICE)  # TRITON_INTERPRET on CPU-only machines: conftest.py

from gan_fast import reference as ref  # noqa: E402
from gan_fast.kernels import triton as tk  # noqa: E402
from gan_fast.kernels.triton import bn_act as bn_act_mod  # noqa: E402

EPS, SLOPE = 1e-5, 0.2
SHAPES = [(2, 3, 1, 1), (2, 5, 4, 4), (2, 63, 7, 5), (3, 16, 8, 8)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (atol, rtol) against a float64 oracle computed from the same rounded inputs: a few
# roundings of the output dtype (the interpreter may truncate to bf16 rather than round).
TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}


def close(actual, expected, dtype, what, scale=None, atol=None):
    """assert_close in float64 with TOL[dtype]; atol is relative to max|expected|."""
    a_tol, r_tol = TOL[dtype]
    if scale is None:
        finite = expected[torch.isfinite(expected)]
        scale = max(float(finite.abs().max()) if finite.numel() else 1.0, 1.0)
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(),
                               atol=(atol or a_tol) * scale, rtol=r_tol, equal_nan=True,
                               msg=lambda m: f"{what}: {m}")


def fmt(channels_last):
    return torch.channels_last if channels_last else torch.contiguous_format


# ----------------------------------------------------------------------------- bn_act
def make_inputs(shape, dtype, channels_last, affine, large_mean=False, seed=0):
    """x (per-channel spread 0.5..1.5 around an offset, +1000 if large_mean), grad_out,
    weight/bias (float16 runs them in x's dtype, the others in float32)."""
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    x = x * (0.5 + torch.rand(c, 1, 1, generator=g, dtype=torch.float64))
    x = x + torch.randn(c, 1, 1, generator=g, dtype=torch.float64) + (1000.0 if large_mean else 0.0)
    gout = torch.randn(shape, generator=g, dtype=torch.float64)
    w = b = None
    if affine:
        wdtype = dtype if dtype == torch.float16 else torch.float32
        w = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(wdtype).to(DEVICE)
        w[::3] = -w[::3]  # negative weights flip the kink's side
        b = (torch.randn(c, generator=g, dtype=torch.float64) * 0.5).to(wdtype).to(DEVICE)
    x = x.to(dtype).to(DEVICE).contiguous(memory_format=fmt(channels_last))
    gout = gout.to(dtype).to(DEVICE).contiguous(memory_format=fmt(channels_last))
    return x, gout, w, b


def oracle(x, gout, w, b, training, rmean=None, rvar=None):
    """float64 autograd of reference.bn_act: (out, grad_x, grad_w, grad_b, mean, var, z)."""
    x64 = x.double().cpu().requires_grad_()
    w64 = None if w is None else w.double().cpu().requires_grad_()
    b64 = None if b is None else b.double().cpu().requires_grad_()
    if training:
        # x.mean, not var_mean: a plain sum keeps the tied test data's mean exact.
        mean = x64.detach().mean(dim=(0, 2, 3))
        var = x64.detach().var(dim=(0, 2, 3), unbiased=False)
    else:
        mean, var = rmean.double().cpu(), rvar.double().cpu()
    z = (x64.detach() - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + EPS)
    if w is not None:
        z = z * w64.detach().view(1, -1, 1, 1) + b64.detach().view(1, -1, 1, 1)
    out = ref.bn_act(x64, w64, b64, None if training else mean, None if training else var,
                     training, 0.1, EPS, SLOPE)
    out.backward(gout.double().cpu())
    grads = [None if t is None else t.grad for t in (x64, w64, b64)]
    return (out.detach(), *grads, mean, var, z)


def away_from_kink(gout, z, keep_exact_zeros=False):
    """Zero grad_out where z is within rounding of the kink: which side such an element
    falls on is decided by rounding, so no two implementations need agree there."""
    near = z.abs() < 1e-2
    if keep_exact_zeros:
        near &= z != 0
    return gout.masked_fill(near.to(gout.device), 0)


def check_bwd(gx, gw, gb, x, w, b, exp, dtype, what):
    _, egx, egw, egb = exp[:4]
    assert gx.dtype == x.dtype and gx.is_contiguous(memory_format=fmt(not x.is_contiguous()))
    close(gx, egx, dtype, f"{what} grad_x")
    if w is None:
        assert gw is None and gb is None
    else:
        assert gw.dtype == w.dtype and gb.dtype == b.dtype
        # Sums over n = N*H*W elements of rounded terms: allow sqrt(n)-ish growth.
        scale = max(float(egw.abs().max()), float(egb.abs().max()), 1.0) * 4
        close(gw, egw, w.dtype, f"{what} grad_weight", scale=scale)
        close(gb, egb, b.dtype, f"{what} grad_bias", scale=scale)


def run_train(x, gout, w, b, dtype, what, large_mean=False):
    exp = oracle(x, gout, w, b, True)
    gout = away_from_kink(gout, exp[6])
    exp = oracle(x, gout, w, b, True)
    out, mean, var = tk.bn_act_train_fwd(x, w, b, EPS, SLOPE)
    assert out.dtype == x.dtype and out.stride() == x.stride()
    assert mean.dtype == var.dtype == torch.float32 and mean.shape == var.shape == (x.shape[1],)
    # float32 mean/var: with a large mean, one ulp of the mean moves z by ~1e-4.
    atol = 5e-4 if large_mean and dtype == torch.float32 else None
    close(out, exp[0], dtype, f"{what} out", atol=atol)
    close(mean, exp[4], torch.float32, f"{what} mean", scale=float(exp[4].abs().max()) + 1)
    close(var, exp[5], torch.float32, f"{what} var", scale=float(exp[5].abs().max()))
    gx, gw, gb = tk.bn_act_bwd(gout, x, w, b, mean, var, EPS, SLOPE, True)
    check_bwd(gx, gw, gb, x, w, b, exp, dtype, what)


def run_eval(x, gout, w, b, rmean, rvar, dtype, what):
    exp = oracle(x, gout, w, b, False, rmean, rvar)
    gout = away_from_kink(gout, exp[6])
    exp = oracle(x, gout, w, b, False, rmean, rvar)
    out = tk.bn_act_eval_fwd(x, w, b, rmean, rvar, EPS, SLOPE)
    assert out.dtype == x.dtype and out.stride() == x.stride()
    close(out, exp[0], dtype, f"{what} out")
    gx, gw, gb = tk.bn_act_bwd(gout, x, w, b, rmean, rvar, EPS, SLOPE, False)
    check_bwd(gx, gw, gb, x, w, b, exp, dtype, what)


def running_stats(c, large_mean, seed):
    g = torch.Generator().manual_seed(seed + 1)
    rmean = torch.randn(c, generator=g) + (1000.0 if large_mean else 0.0)
    rvar = torch.rand(c, generator=g) + 0.5
    return rmean.to(DEVICE), rvar.to(DEVICE)


def bn_act_matrix(test):
    """Every layout, dtype, shape and affine setting."""
    for mark in (pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"]),
                 pytest.mark.parametrize("dtype", DTYPES, ids=str),
                 pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s))),
                 pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])):
        test = mark(test)
    return test


@bn_act_matrix
def test_bn_act_train(channels_last, dtype, shape, affine):
    x, gout, w, b = make_inputs(shape, dtype, channels_last, affine)
    run_train(x, gout, w, b, dtype, "train")


@bn_act_matrix
def test_bn_act_eval(channels_last, dtype, shape, affine):
    x, gout, w, b = make_inputs(shape, dtype, channels_last, affine)
    rmean, rvar = running_stats(shape[1], False, 0)
    run_eval(x, gout, w, b, rmean, rvar, dtype, "eval")


@pytest.mark.parametrize("shape", SHAPES[2:], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_bn_act_large_mean(channels_last, dtype, shape):
    """1000 + randn: naive sum / sum-of-squares statistics cancel catastrophically."""
    x, gout, w, b = make_inputs(shape, dtype, channels_last, True, large_mean=True, seed=1)
    run_train(x, gout, w, b, dtype, "train large mean", large_mean=True)
    rmean, rvar = running_stats(shape[1], True, 1)
    run_eval(x, gout, w, b, rmean, rvar, dtype, "eval large mean")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_bn_act_many_tiles(monkeypatch, channels_last):
    """Tiny tiles: many partials per channel and several loop trips in the combine."""
    monkeypatch.setattr(bn_act_mod, "_TILE", 8)
    x, gout, w, b = make_inputs((2, 4, 4, 4), torch.float32, channels_last, True,
                                large_mean=True, seed=2)
    run_train(x, gout, w, b, torch.float32, "many tiles", large_mean=True)


def tied_inputs(shape, dtype, channels_last, affine, seed=3):
    """x whose per-channel mean m_c is exactly representable and exactly attained by some
    elements: with weight 1 and bias 0, z is exactly 0 there (the LeakyReLU kink)."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    length = n * h * w
    half = length // 2
    vals = (torch.arange(half, dtype=torch.float64) % 5) * 0.25  # includes zeros
    base = torch.cat([vals, -vals, torch.zeros(length - 2 * half, dtype=torch.float64)])
    cols = [base[torch.randperm(length, generator=g)] for _ in range(c)]
    m = torch.arange(c, dtype=torch.float64) % 5 - 2.0
    x = (torch.stack(cols, 1) + m).view(n, h, w, c).permute(0, 3, 1, 2)
    gout = torch.randn(shape, generator=g, dtype=torch.float64)
    wt = torch.ones(c, device=DEVICE) if affine else None
    bs = torch.zeros(c, device=DEVICE) if affine else None
    x = x.to(dtype).to(DEVICE).contiguous(memory_format=fmt(channels_last))
    gout = gout.to(dtype).to(DEVICE).contiguous(memory_format=fmt(channels_last))
    return x, gout, wt, bs, m


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_bn_act_kink(channels_last, dtype, affine):
    """d leaky_relu / dz at exactly z == 0 is the slope (PyTorch's convention)."""
    x, gout, w, b, m = tied_inputs((2, 63, 7, 5), dtype, channels_last, affine)
    exp = oracle(x, gout, w, b, True)
    assert torch.equal(exp[4], m), "test data: the batch mean must be exact"
    assert (exp[6] == 0).sum() > 0, "test data: no exact zeros at the kink"
    gout = away_from_kink(gout, exp[6], keep_exact_zeros=True)
    exp = oracle(x, gout, w, b, True)
    out, mean, var = tk.bn_act_train_fwd(x, w, b, EPS, SLOPE)
    close(out, exp[0], dtype, "kink out")
    close(mean, exp[4], torch.float32, "kink mean", scale=3.0)
    # The exact statistics (m_c is exact in float32), so that z is exactly 0 at the ties.
    mean32, var32 = exp[4].float().to(DEVICE), exp[5].float().to(DEVICE)
    gx, gw, gb = tk.bn_act_bwd(gout, x, w, b, mean32, var32, EPS, SLOPE, True)
    check_bwd(gx, gw, gb, x, w, b, exp, dtype, "kink train")
    exp = oracle(x, gout, w, b, False, mean32, var32)
    gx, gw, gb = tk.bn_act_bwd(gout, x, w, b, mean32, var32, EPS, SLOPE, False)
    check_bwd(gx, gw, gb, x, w, b, exp, dtype, "kink eval")


def test_bn_act_grad_out_layout_and_float64():
    x, gout, w, b = make_inputs((2, 5, 4, 4), torch.float32, True, True)
    var, mean = (t.float() for t in torch.var_mean(x.double(), dim=(0, 2, 3), unbiased=False))
    expected = tk.bn_act_bwd(gout, x, w, b, mean, var, EPS, SLOPE, True)
    got = tk.bn_act_bwd(gout.contiguous(), x, w, b, mean, var, EPS, SLOPE, True)  # NCHW grad
    for e, a in zip(expected, got):
        torch.testing.assert_close(a, e)
    with pytest.raises(TypeError, match="float64"):
        tk.bn_act_train_fwd(x.double(), None, None, EPS, SLOPE)
    with pytest.raises(TypeError, match="float64"):
        tk.bn_act_bwd(gout.double(), x.double(), None, None, mean, var, EPS, SLOPE, True)


# --------------------------------------------------------------------------- gan_loss
KINDS, SIDES, REDUCTIONS = ref.LOSS_KINDS, ("d", "g"), ref.REDUCTIONS


def logits(n, dtype, seed):
    """Random logits with exact hinge ties (+-1), zeros and large magnitudes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=g, dtype=torch.float64) * 3
    x[:6, 0] = torch.tensor([1.0, -1.0, 0.0, 30.0, -30.0, 100.0], dtype=torch.float64)
    return x.to(dtype).to(DEVICE)


def loss_oracle(real, fake, kind, side, reduction, smoothing):
    """float64 autograd of reference.gan_loss: (loss, grad_real, grad_fake)."""
    r = None if real is None else real.double().cpu().requires_grad_()
    f = fake.double().cpu().requires_grad_()
    loss = ref.gan_loss(kind, r, f, side, reduction, smoothing)
    loss.backward()
    return loss.detach(), None if r is None else r.grad, f.grad


def check_loss(got, exp, dtype, side, what):
    loss, gr, gf = got
    assert loss.dim() == 0 and loss.dtype == dtype
    close(loss, exp[0], dtype, f"{what} loss")
    if side == "g":
        assert gr is None
    else:
        assert gr.dtype == dtype and gr.shape == exp[1].shape
        close(gr, exp[1], dtype, f"{what} grad_real")
    assert gf.dtype == dtype and gf.shape == exp[2].shape
    close(gf, exp[2], dtype, f"{what} grad_fake")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gan_loss(dtype, kind, side, reduction):
    real, fake = logits(77, dtype, 0), logits(64, dtype, 1)
    real_in = None if side == "g" else real
    got = tk.gan_loss_fwd(real_in, fake, kind, side, reduction, 0.0)
    check_loss(got, loss_oracle(real_in, fake, kind, side, reduction, 0.0), dtype, side, kind)
    if kind == "bce" and side == "d":
        got = tk.gan_loss_fwd(real, fake, kind, side, reduction, 0.1)
        check_loss(got, loss_oracle(real, fake, kind, side, reduction, 0.1), dtype, side,
                   "bce smoothed")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("kind", KINDS)
def test_gan_loss_nonfinite_and_smoothing(kind, side, reduction):
    """Same values as the reference backend for NaN/inf logits (loss and grads), and its
    label smoothing (which also applies to bce's real target on side g)."""
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0, -1.0, 0.5, -3.0],
                           device=DEVICE)
    for real, fake, smoothing in [(special, special.flip(0), 0.0),
                                  (special[3:], special[:3], 0.0),
                                  (special[3:], special[3:].flip(0), 0.2)]:
        real_in = None if side == "g" else real
        got = tk.gan_loss_fwd(real_in, fake, kind, side, reduction, smoothing)
        exp = ref.gan_loss_fwd(real_in, fake, kind, side, reduction, smoothing)
        for a, e in zip(got, exp):
            if e is None:
                assert a is None
            else:
                torch.testing.assert_close(a, e, equal_nan=True, atol=1e-5, rtol=1e-5)


def test_gan_loss_float64_and_args():
    x = torch.zeros(4, dtype=torch.float64, device=DEVICE)
    with pytest.raises(TypeError, match="float64"):
        tk.gan_loss_fwd(x, x, "bce", "d", "mean", 0.0)
    y = x.float()
    with pytest.raises(ValueError):
        tk.gan_loss_fwd(y, y, "softplus", "d", "mean", 0.0)
    with pytest.raises(ValueError):
        tk.gan_loss_fwd(y, y, "bce", "x", "mean", 0.0)
