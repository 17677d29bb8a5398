"""Input factories and tolerances shared by the tests."""
import torch

# (atol, rtol) when a backend's result in this dtype is compared with a float64 oracle
# computed from the same (already rounded) inputs.
TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (4e-3, 4e-3),
    torch.bfloat16: (3e-2, 3e-2),
}


def layout(t, channels_last):
    return t.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def image(shape, dtype=torch.float32, device="cpu", channels_last=False, mean=0.0, seed=None):
    """A random (N, C, H, W) tensor with a per-channel offset of about `mean`."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    x = torch.randn(shape, generator=g, dtype=torch.float64) * (0.5 + torch.rand(shape[1], 1, 1, generator=g, dtype=torch.float64))
    x = x + mean + torch.randn(shape[1], 1, 1, generator=g, dtype=torch.float64)
    return layout(x.to(dtype).to(device), channels_last)


def tied_image(shape, dtype=torch.float32, device="cpu", channels_last=False, mean=0.0):
    """Integer-valued data whose per-channel mean is exactly `mean`: with weight>0 and
    bias 0 the normalised value is exactly 0 where x == mean (the activation's kink)."""
    n, c, h, w = shape
    length = n * h * w
    half = length // 2
    vals = (torch.arange(half, dtype=torch.float64) % 3)  # 0, 1, 2, 0, ...: zeros included
    base = torch.cat([vals, -vals, torch.zeros(length - 2 * half, dtype=torch.float64)])
    x = base.view(n, h, w, 1).permute(0, 3, 1, 2).expand(n, c, h, w) + mean
    return layout(x.to(dtype).to(device).clone(), channels_last)


def assert_close(actual, expected, dtype, scale=1.0, what=""):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), atol=atol * scale,
                               rtol=rtol, equal_nan=True, msg=lambda m: f"{what}: {m}")


# The Triton conv kernels the fused blocks call (gan_fast.kernels.triton.conv).
TRITON_CONV_KERNELS = ("conv2d_stats", "conv_transpose2d_stats", "conv2d_bn_act_eval",
                       "conv_transpose2d_bn_act_eval", "bn_act_conv_backward")


def require_triton(device):
    """Call at the top of a Triton test module, before importing gan_fast's Triton
    kernels: skips the module where triton cannot run on `device` (triton not installed),
    saying why, unless GAN_FAST_REQUIRE_TRITON=1 (set by .ci/run), where that is an error:
    CI must not lose the Triton tests to a failed install. TRITON_INTERPRET is set for
    CPU-only machines by conftest.py."""
    import os

    import pytest

    from gan_fast import backends
    reason = backends.why_unavailable("triton", device)
    if reason is None:
        return
    if os.environ.get("GAN_FAST_REQUIRE_TRITON") == "1":
        raise RuntimeError(f"GAN_FAST_REQUIRE_TRITON=1 but the triton backend cannot run on "
                           f"{device}: {reason}")
    pytest.skip(f"triton backend unavailable: {reason}", allow_module_level=True)


def require_cpu_extension():
    """Skip only where the suite runs without the C++ extension on purpose
    (GAN_FAST_NO_EXT=1, a pure-Python install); anywhere else a missing extension fails."""
    import os

    import pytest
    if os.environ.get("GAN_FAST_NO_EXT") == "1":
        pytest.skip("GAN_FAST_NO_EXT=1: pure-Python install, no C++ extension")


def count_calls(monkeypatch, module, names):
    """Wraps module.<name> for each name so calls are counted; returns {name: count}."""
    counts = dict.fromkeys(names, 0)
    for name in names:
        fn = getattr(module, name)

        def counted(*args, _fn=fn, _name=name, **kwargs):
            counts[_name] += 1
            return _fn(*args, **kwargs)
        monkeypatch.setattr(module, name, counted)
    return counts


def assert_fused_same(stock, fused, *inputs, steps=2, atol=1e-12, rtol=1e-10):
    """A model and its fused copy compute the same function: forward, the inputs' and every
    parameter's gradient, and every buffer (running statistics, num_batches_tracked), in
    training (`steps` steps, so the running statistics move) and in eval mode."""
    stock.zero_grad(), fused.zero_grad()
    gen = torch.Generator().manual_seed(0)
    for training in (True, False):
        stock.train(training), fused.train(training)
        for _ in range(steps if training else 1):
            xa = [x.clone().requires_grad_() for x in inputs]
            xb = [x.clone().requires_grad_() for x in inputs]
            ya, yb = stock(*xa), fused(*xb)
            torch.testing.assert_close(yb, ya, atol=atol, rtol=rtol)
            grad = torch.randn(ya.shape, generator=gen, dtype=ya.dtype).to(ya.device)
            ya.backward(grad), yb.backward(grad)
            for a, b in zip(xa, xb):
                torch.testing.assert_close(b.grad, a.grad, atol=atol, rtol=rtol)
    for (n, a), b in zip(stock.named_parameters(), fused.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=10 * atol, rtol=rtol, msg=lambda m: f"{n}: {m}")
    for (n, a), b in zip(stock.named_buffers(), fused.buffers()):
        torch.testing.assert_close(b, a, atol=atol, rtol=rtol, msg=lambda m: f"{n}: {m}")


def assert_same_step(a, b, *inputs, atol=1e-5, rtol=1e-4, param_atol=1e-4):
    """One forward and backward (of the output's sum) of modules `a` and `b` on clones of
    `inputs`: the outputs, the inputs' gradients, every parameter's gradient (accumulated)
    and every buffer agree. Returns the two outputs."""
    xa = [x.clone().requires_grad_() for x in inputs]
    xb = [x.clone().requires_grad_() for x in inputs]
    ya, yb = a(*xa), b(*xb)
    torch.testing.assert_close(yb, ya, atol=atol, rtol=rtol)
    ya.sum().backward(), yb.sum().backward()
    for u, v in zip(xa, xb):
        torch.testing.assert_close(v.grad, u.grad, atol=atol, rtol=rtol)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=param_atol, rtol=rtol, msg=lambda m: f"{n}: {m}")
    for (n, p), q in zip(a.named_buffers(), b.buffers()):
        torch.testing.assert_close(q, p, msg=lambda m: f"{n}: {m}")
    return ya, yb
