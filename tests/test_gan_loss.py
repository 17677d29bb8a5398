"""gan_loss on every backend against the float64 oracle and stock PyTorch losses."""
import pytest
import torch
import torch.nn.functional as F

import gan_fast
from gan_fast import BackendUnavailable, functional, nn as gnn, reference
from helpers import TOL, require_cpu_extension

KINDS = ["bce", "hinge", "lsgan", "wgan"]


def run(real, fake, kind, side, reduction="mean", smoothing=0.0):
    r = None if real is None else real.detach().clone().requires_grad_()
    f = fake.detach().clone().requires_grad_()
    loss = functional.gan_loss(r, f, kind, side, reduction, smoothing)
    inputs = [t for t in (r, f) if t is not None]
    grads = torch.autograd.grad(loss * 1.5, inputs)  # a grad_output != 1 exercises the scaling
    return loss, grads


def oracle(real, fake, kind, side, reduction="mean", smoothing=0.0):
    r = None if real is None else real.detach().double().requires_grad_()
    f = fake.detach().double().requires_grad_()
    loss = reference.gan_loss(kind, r, f, side, reduction, smoothing)
    inputs = [t for t in (r, f) if t is not None]
    return loss, torch.autograd.grad(loss * 1.5, inputs)


def close(a, b, dtype, scale=1.0):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(a.double().cpu(), b.double().cpu(), atol=atol * scale, rtol=rtol, equal_nan=True)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("side", ["d", "g"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_matches_oracle(backend, kind, side, reduction, dtype):
    name, device = backend
    if dtype == torch.float64 and (name == "triton" or device == "cuda"):
        with pytest.raises(BackendUnavailable, match="no float64 kernels"):
            functional.gan_loss(torch.zeros(3, dtype=dtype, device=device), torch.zeros(3, dtype=dtype, device=device))
        return
    real = (torch.randn(37, 1) * 3).to(device=device, dtype=dtype) if side == "d" else None
    fake = (torch.randn(53) * 3).to(device=device, dtype=dtype)  # other size and shape than real
    loss, grads = run(real, fake, kind, side, reduction)
    want, want_grads = oracle(real, fake, kind, side, reduction)
    assert loss.dim() == 0 and loss.dtype == dtype
    close(loss, want, dtype, scale=(50.0 if reduction == "sum" else 1.0))
    for g, w, t in zip(grads, want_grads, [x for x in (real, fake) if x is not None]):
        assert g.shape == t.shape and g.dtype == dtype
        close(g, w, dtype)


@pytest.mark.parametrize("smoothing", [0.1, 0.3])
def test_label_smoothing(backend, smoothing):
    name, device = backend
    real, fake = torch.randn(64, device=device), torch.randn(64, device=device)
    loss, grads = run(real, fake, "bce", "d", "mean", smoothing)
    want, want_grads = oracle(real, fake, "bce", "d", "mean", smoothing)
    close(loss, want, torch.float32)
    for g, w in zip(grads, want_grads):
        close(g, w, torch.float32)


def test_matches_stock_losses(backend):
    """The four kinds are exactly the usual eager formulations."""
    name, device = backend
    real = torch.randn(32, 1, device=device) * 2
    fake = torch.randn(32, 1, device=device) * 2
    stock = {
        "bce": lambda r, f: F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
        + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f)),
        "hinge": lambda r, f: F.relu(1 - r).mean() + F.relu(1 + f).mean(),
        "lsgan": lambda r, f: F.mse_loss(r, torch.ones_like(r)) + F.mse_loss(f, torch.zeros_like(f)),
        "wgan": lambda r, f: f.mean() - r.mean(),
    }
    stock_g = {
        "bce": lambda f: F.binary_cross_entropy_with_logits(f, torch.ones_like(f)),
        "hinge": lambda f: -f.mean(), "lsgan": lambda f: F.mse_loss(f, torch.ones_like(f)),
        "wgan": lambda f: -f.mean(),
    }
    for kind in KINDS:
        r, f = real.clone().requires_grad_(), fake.clone().requires_grad_()
        want = stock[kind](r, f)
        want.backward()
        loss, (gr, gf) = run(real, fake, kind, "d")
        close(loss, want.detach(), torch.float32)
        close(gr, r.grad * 1.5, torch.float32)
        close(gf, f.grad * 1.5, torch.float32)
        f = fake.clone().requires_grad_()
        want = stock_g[kind](f)
        want.backward()
        loss, (gf,) = run(None, fake, kind, "g")
        close(loss, want.detach(), torch.float32)
        close(gf, f.grad * 1.5, torch.float32)


def test_ties(backend):
    """Hinge margins of exactly 1 have gradient 0 (relu's convention); bce at 0 is exact."""
    name, device = backend
    # repeated so that the values also reach the vector lanes of the kernels, not only a tail
    real = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.0], device=device).repeat(7)
    fake = torch.tensor([-1.0, -0.5, -2.0, 0.0], device=device).repeat(9)
    for kind in KINDS:
        loss, grads = run(real, fake, kind, "d")
        want, want_grads = oracle(real, fake, kind, "d")
        close(loss, want, torch.float32)
        for g, w in zip(grads, want_grads):
            close(g, w, torch.float32)
    _, (gr, gf) = run(real, fake, "hinge", "d")
    assert gr[0] == 0 and gr[3] == 0 and gf[0] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_nan_and_inf_like_pytorch(backend, kind):
    """Non-finite logits give the same loss and gradients as the eager formulation."""
    name, device = backend
    bad = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.5], device=device).repeat(9)
    good = torch.tensor([0.1, -0.3, 0.2], device=device).repeat(7)
    for real, fake in ((bad, good), (good, bad)):
        loss, grads = run(real, fake, kind, "d")
        want, want_grads = oracle(real, fake, kind, "d")
        close(loss, want, torch.float32)
        for g, w in zip(grads, want_grads):
            close(g, w, torch.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_large_logits(backend, kind):
    """PatchGAN-sized logits: the kernels' chunked (parallel) reduction, not only small inputs."""
    name, device = backend
    gen = torch.Generator().manual_seed(5)
    real = (torch.randn(3, 1, 150, 151, generator=gen) * 3).to(device)  # 67950 values
    fake = (torch.randn(70001, generator=gen) * 3).to(device)
    for side in ("d", "g"):
        r = real if side == "d" else None
        loss, grads = run(r, fake, kind, side)
        want, want_grads = oracle(r, fake, kind, side)
        close(loss, want, torch.float32)
        for g, w in zip(grads, want_grads):
            close(g, w, torch.float32)


def test_module(backend):
    name, device = backend
    d, g = gnn.GANLoss("hinge", "d"), gnn.GANLoss("hinge", "g")
    real, fake = torch.randn(8, device=device), torch.randn(8, device=device)
    close(d(real, fake), reference.gan_loss("hinge", real.double(), fake.double()), torch.float32)
    close(g(fake), reference.gan_loss("hinge", None, fake.double(), "g"), torch.float32)
    with pytest.raises(TypeError, match="real_logits, fake_logits"):
        d(fake)


def test_eager_autograd_node(backend):
    """Eager mode on the compiled backends runs the C++ autograd node (the Python one costs
    several times the kernel at DCGAN sizes); the others run the Python Function."""
    name, device = backend
    real = torch.randn(4, device=device, requires_grad=True)
    with gan_fast.use_backend(name):
        node = functional.gan_loss(real, real.detach(), "hinge", "d").grad_fn.name()
    assert ("CppNode<" in node and "LossFn" in node) == (name in ("cpu", "cuda")), node


def test_non_contiguous_logits(backend):
    """Strided logits (a column of a wider output, a transposed patch map) give the
    gradient in the caller's shape, equal to the contiguous result."""
    name, device = backend
    wide = torch.randn(8, 3, device=device)
    patch = torch.randn(2, 1, 5, 6, device=device).transpose(2, 3)
    with gan_fast.use_backend(name):
        for real, fake in ((wide[:, 1], wide[:, 2]), (patch, patch.flip(0))):
            loss, grads = run(real, fake, "bce", "d")
            ref_loss, ref_grads = run(real.contiguous(), fake.contiguous(), "bce", "d")
            close(loss, ref_loss, torch.float32)
            for g, rg, t in zip(grads, ref_grads, (real, fake)):
                assert g.shape == t.shape
                close(g, rg, torch.float32)


def test_backward_twice_and_accumulation(backend):
    """The backward hands out the saved gradient itself when grad_output is 1 (CPU): a
    second backward of a retained graph and accumulation into existing .grad must still
    give 2x and 3x the gradient, never a gradient altered by the first backward."""
    name, device = backend
    real = torch.randn(5, device=device, requires_grad=True)
    fake = torch.randn(7, device=device, requires_grad=True)
    with gan_fast.use_backend(name):
        loss = functional.gan_loss(real, fake, "bce", "d")
        once = torch.autograd.grad(loss, [real, fake], retain_graph=True)
        loss.backward(retain_graph=True)
        loss.backward(retain_graph=True)
        close(real.grad, 2 * once[0], torch.float32)
        close(fake.grad, 2 * once[1], torch.float32)
        loss.backward()
        close(real.grad, 3 * once[0], torch.float32)
        close(fake.grad, 3 * once[1], torch.float32)


def test_module_resolves_once_per_device_dtype_and_backend(monkeypatch):
    """GANLoss resolves its kernel once per (device, dtype, requested backend), not per call;
    a backend asked for after construction (use_backend, GAN_FAST_BACKEND) still takes effect."""
    from gan_fast import backends
    calls = []
    resolve = backends.resolve
    monkeypatch.setattr(backends, "resolve", lambda *a, **k: calls.append(a) or resolve(*a, **k))
    monkeypatch.delenv("GAN_FAST_BACKEND", raising=False)
    crit = gnn.GANLoss("bce", "g")
    x = torch.randn(6, requires_grad=True)
    with gan_fast.use_backend("cpu"):
        for _ in range(3):
            node = crit(x).grad_fn.name()
    assert len(calls) == 1 and "CppNode<" in node
    with gan_fast.use_backend("reference"):
        assert "CppNode<" not in crit(x).grad_fn.name()
        crit(x.double())  # another dtype: resolved once more
    assert len(calls) == 3
    # the variable is read when the requested backend may change (set_backend(None): back to it)
    monkeypatch.setenv("GAN_FAST_BACKEND", "reference")
    gan_fast.set_backend(None)
    assert "CppNode<" not in crit(x).grad_fn.name()
    monkeypatch.setenv("GAN_FAST_BACKEND", "cpu")
    gan_fast.set_backend(None)
    assert "CppNode<" in crit(x).grad_fn.name()
    assert len(calls) == 3  # both (name, cpu, float32) were cached before


def test_module_canonical_and_picklable():
    import copy
    import pickle
    crit = gnn.GANLoss("nonsaturating", "d", label_smoothing=0)
    assert (crit.kind, crit.side, crit.reduction, crit.label_smoothing) == ("bce", "d", "mean", 0.0)
    assert isinstance(crit.label_smoothing, float)
    real, fake = torch.randn(5), torch.randn(7)
    want = crit(real, fake)
    for other in (pickle.loads(pickle.dumps(crit)), copy.deepcopy(crit)):
        torch.testing.assert_close(other(real, fake), want)
    assert functional.loss_args("ns", "g", "sum", 0) == ("bce", "g", "sum", 0.0)


@pytest.mark.parametrize("side", ["d", "g"])
def test_autocast_returns_stock_dtype_and_value(side):
    """Under torch.autocast the stock BCE runs in float32 (autocast's fp32 list) and returns
    float32; GANLoss on low-precision logits must return the same dtype and value."""
    gen = torch.Generator().manual_seed(0)
    fake = (torch.randn(97, generator=gen) * 3 + 2.5).to(torch.bfloat16).requires_grad_()
    real = (torch.randn(61, generator=gen) * 3).to(torch.bfloat16).requires_grad_()
    from gan_fast.train.losses import stock_gan_loss
    stock, crit = stock_gan_loss("bce", side), gnn.GANLoss("bce", side, reduction="mean")
    args = (real, fake) if side == "d" else (fake,)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = stock(*args)
        got = crit(*args)
        got_f = functional.gan_loss(real if side == "d" else None, fake, "bce", side)
    assert want.dtype == got.dtype == got_f.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_f, want, rtol=1e-6, atol=1e-6)
    assert want.to(torch.bfloat16).float() != want  # bf16 could not hold the value
    grads = torch.autograd.grad(got, args)
    want_grads = torch.autograd.grad(stock(*(a.float() for a in args)), args)
    for g, w, a in zip(grads, want_grads, args):
        assert g.dtype == a.dtype == torch.bfloat16
        torch.testing.assert_close(g, w)
    # outside autocast: the logits' dtype, as before
    assert crit(*args).dtype == torch.bfloat16


def test_sum_under_autocast_keeps_fp32_precision():
    """The case of issue 12: stock's loss reads 121.16 where a bf16 result would read 121.0."""
    x = torch.tensor([-7.578125] * 15 + [-7.7265625], dtype=torch.bfloat16)  # exact in bf16
    crit = gnn.GANLoss("bce", "g", reduction="sum")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.binary_cross_entropy_with_logits(x, torch.ones_like(x), reduction="sum")
        got = crit(x)
    assert got.dtype == want.dtype == torch.float32
    assert want.to(torch.bfloat16).item() == 121.0 and want.item() > 121.1
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)


def test_module_under_torch_compile():
    """Traced by dynamo (fullgraph): the custom op, not the cached eager callable."""
    crit = gnn.GANLoss("hinge", "d")
    fn = torch.compile(lambda r, f: crit(r, f) * 2, backend="aot_eager", fullgraph=True)
    real, fake = torch.randn(5, requires_grad=True), torch.randn(7, requires_grad=True)
    got = fn(real, fake)
    want = 2 * reference.gan_loss("hinge", real.detach().double(), fake.detach().double())
    close(got, want, torch.float32)
    got.backward()
    assert real.grad is not None and fake.grad is not None


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_compiled_op_takes_the_canonical_loss_arguments_only(device):
    """The compiled op (CPU and CUDA kernels: one list, csrc/cuda/contract.h) takes the
    canonical kinds; the Python API resolves the aliases ('nonsaturating') before it."""
    require_cpu_extension()  # CUDA is parametrized only where a GPU is
    import gan_fast.kernels.cpp  # noqa: F401  (loads gan_fast._C)
    op = torch.ops.gan_fast_C.gan_loss_fwd
    r, f = torch.randn(4, device=device), torch.randn(4, device=device)
    for kind in reference.LOSS_KINDS:
        loss, _, _ = op(r, f, kind, "d", "mean", 0.0)
        torch.testing.assert_close(loss, reference.gan_loss_fwd(r, f, kind, "d", "mean", 0.0)[0])
    for args, match in (((r, f, "nonsaturating", "d", "mean", 0.0), "kind must be one of"),
                        ((r, f, "bce", "both", "mean", 0.0), "side must be"),
                        ((r, f, "bce", "d", "none", 0.0), "reduction must be")):
        with pytest.raises(ValueError, match=match):
            op(*args)
    assert float(functional.gan_loss(r, f, "nonsaturating")) == float(
        functional.gan_loss(r, f, "bce"))
