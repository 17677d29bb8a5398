"""Under torch.autocast every fused op and loss returns the dtype stock returns for the
same layers (losses float32), with values close to stock's (issue 15). CPU: bfloat16;
CUDA (where present): float16 and bfloat16, and a GradScaler fp16 step."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gan_fast
from gan_fast import backends
from gan_fast.nn import Conv2dBNAct, ConvTranspose2dBNAct, GANLoss

CASES = [("cpu", torch.bfloat16)] + [("cuda", d) for d in (torch.float16, torch.bfloat16)
                                     if torch.cuda.is_available()]
BACKENDS = [n for n in ("cpu", "reference", "triton", "cuda")
            if backends.why_unavailable(n, "cpu") is None or n == "cuda"]


def _blocks():
    torch.manual_seed(0)
    return [Conv2dBNAct(3, 4, 3, padding=1), ConvTranspose2dBNAct(3, 4, 4, 2, 1),
            Conv2dBNAct(3, 4, 3, sync=True)]  # no process group: plain BatchNorm, as stock


def _stock_loss(kind, side, real, fake):
    from gan_fast.train.losses import stock_gan_loss
    fn = stock_gan_loss(kind, side)
    return fn(real, fake) if side == "d" else fn(fake)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("name", BACKENDS)
def test_blocks_and_fused_models_return_stock_dtypes(device, dtype, name):
    if backends.why_unavailable(name, device):
        pytest.skip(backends.why_unavailable(name, device))
    with backends.use_backend(name):
        for block in _blocks():
            block.to(device)
            for training in (True, False):
                block.train(training)
                stock = copy.deepcopy(block.to_stock())
                x = torch.randn(2, 3, 6, 6, device=device)
                xs, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
                with torch.autocast(device, dtype=dtype):
                    out, ref = block(xf), stock(xs)
                assert out.dtype == ref.dtype == dtype, (type(block).__name__, training)
                torch.testing.assert_close(out.float(), ref.float(), atol=5e-2, rtol=5e-2)
                out.float().sum().backward()
                ref.float().sum().backward()
                assert xf.grad.dtype == xs.grad.dtype
                for p, q in zip(block.parameters(), stock.parameters()):
                    assert p.grad.dtype == q.grad.dtype
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.LeakyReLU(0.2)).to(device)
        fused = gan_fast.fuse(copy.deepcopy(model), verbose=False)
        with torch.autocast(device, dtype=dtype):
            x = torch.randn(2, 3, 6, 6, device=device)
            assert fused(x).dtype == model(x).dtype == dtype


@pytest.mark.parametrize("device,dtype", CASES)
def test_functional_blocks_and_losses_return_stock_dtypes(device, dtype):
    x = torch.randn(2, 3, 6, 6, device=device)
    w = torch.randn(4, 3, 3, 3, device=device)
    with torch.autocast(device, dtype=dtype):
        out = gan_fast.functional.conv2d_bn_act(x, w, None, None, None, training=True)
        ref = F.leaky_relu(F.batch_norm(F.conv2d(x, w), None, None, training=True), 0.2)
        assert out.dtype == ref.dtype
        y = torch.randn(2, 3, 6, 6, device=device, dtype=dtype)
        assert gan_fast.functional.bn_act(y, None, None, training=True).dtype == \
            F.relu(F.batch_norm(y, None, None, training=True)).dtype
        real = torch.randn(8, device=device, dtype=dtype)
        fake = torch.randn(8, device=device, dtype=dtype)
        for kind in ("bce", "hinge", "lsgan", "wgan"):
            for side in ("d", "g"):
                args = (real, fake) if side == "d" else (fake,)
                loss = GANLoss(kind, side)(*args)
                stock = _stock_loss(kind, side, real.float(), fake.float())
                assert loss.dtype == torch.float32, (kind, side)
                torch.testing.assert_close(loss, stock, atol=1e-2, rtol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GradScaler with fp16 needs a CUDA GPU "
                    "(none on this machine)")
def test_gradscaler_fp16_step_matches_stock():
    torch.manual_seed(0)
    stock = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.LeakyReLU(0.2),
                          nn.Conv2d(8, 1, 4)).cuda()
    fused = gan_fast.fuse(copy.deepcopy(stock), verbose=False)
    x = torch.randn(4, 3, 6, 6, device="cuda")
    for model in (stock, fused):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cuda")
        with torch.autocast("cuda", dtype=torch.float16):
            loss = GANLoss("bce", "g")(model(x).reshape(-1))
        assert loss.dtype == torch.float32
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    for p, q in zip(fused.parameters(), stock.parameters()):
        torch.testing.assert_close(p, q, atol=2e-3, rtol=2e-3)
