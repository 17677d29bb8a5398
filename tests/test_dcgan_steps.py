"""A few Adam steps of a small DCGAN (pytorch/examples layout), stock vs fused,
from the same seed: the same losses and weights within the stated tolerance."""
import copy

import torch
import torch.nn.functional as F
from torch import nn

import gan_fast

# fp32 with different summation orders. Losses agree closely; weights get a looser bound
# because Adam moves every weight by about lr per step whatever its gradient's size,
# so a near-zero gradient whose sign is decided by rounding may move a weight by
# up to 2 * lr * steps the other way.
STEPS, LR = 4, 2e-4
LOSS_ATOL, RTOL = 2e-4, 2e-3
WEIGHT_ATOL = 2 * LR * STEPS


def dcgan(nz=16, ngf=8, ndf=8, nc=1):
    g = nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
        nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())
    d = nn.Sequential(
        nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 4, 1, 4, 1, 0, bias=False), nn.Flatten())
    for m in list(g.modules()) + list(d.modules()):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return g, d


def train(g, d, steps, fused_loss, device):
    opt_g = torch.optim.Adam(g.parameters(), LR, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), LR, betas=(0.5, 0.999))
    gen = torch.Generator(device="cpu").manual_seed(1)
    losses = []
    for _ in range(steps):
        real = (torch.rand(8, 1, 32, 32, generator=gen) * 2 - 1).to(device)
        z = torch.randn(8, 16, 1, 1, generator=gen).to(device)
        fake = g(z)
        opt_d.zero_grad()
        lr, lf = d(real), d(fake.detach())
        if fused_loss:
            loss_d = gan_fast.functional.d_loss(lr, lf, "bce")
        else:
            loss_d = (F.binary_cross_entropy_with_logits(lr, torch.ones_like(lr))
                      + F.binary_cross_entropy_with_logits(lf, torch.zeros_like(lf)))
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad()
        out = d(fake)
        loss_g = (gan_fast.functional.g_loss(out, "bce") if fused_loss
                  else F.binary_cross_entropy_with_logits(out, torch.ones_like(out)))
        loss_g.backward()
        opt_g.step()
        losses.append((loss_d.item(), loss_g.item()))
    return losses


def test_stock_and_fused_dcgan_train_alike(backend):
    name, device = backend
    torch.manual_seed(0)
    g, d = dcgan()
    g, d = g.to(device), d.to(device)
    gf, df = gan_fast.fuse(copy.deepcopy(g), verbose=False), gan_fast.fuse(copy.deepcopy(d), verbose=False)
    stock = train(g, d, STEPS, False, device)
    fused = train(gf, df, STEPS, True, device)
    torch.testing.assert_close(torch.tensor(fused), torch.tensor(stock), atol=LOSS_ATOL, rtol=RTOL)
    for (n, a), b in zip(list(g.state_dict().items()) + list(d.state_dict().items()),
                         list(gf.state_dict().values()) + list(df.state_dict().values())):
        torch.testing.assert_close(b.float(), a.float(), atol=WEIGHT_ATOL, rtol=RTOL, msg=lambda m: f"{n}: {m}")
