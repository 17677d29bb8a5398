"""torch.compile(fullgraph=True) traces fused models without graph breaks."""
import copy

import pytest
import torch
from torch import nn

import gan_fast


def small_gd():
    g = nn.Sequential(nn.ConvTranspose2d(8, 6, 4, 1, 0), nn.BatchNorm2d(6), nn.ReLU(),
                      nn.ConvTranspose2d(6, 3, 4, 2, 1), nn.Tanh())
    d = nn.Sequential(nn.Conv2d(3, 6, 4, 2, 1), nn.BatchNorm2d(6), nn.LeakyReLU(0.2),
                      nn.Conv2d(6, 1, 4, 1, 0), nn.Flatten())
    return g, d


@pytest.mark.parametrize("momentum", [0.1, None])
def test_compiled_fused_model_matches_eager(backend, momentum):
    name, device = backend
    torch._dynamo.reset()
    torch.manual_seed(0)
    g, d = small_gd()
    for m in (g, d):
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.momentum = momentum
    model = nn.Sequential(g, d).to(device)
    eager = gan_fast.fuse(copy.deepcopy(model), verbose=False)
    compiled_model = gan_fast.fuse(copy.deepcopy(model), verbose=False)
    compiled = torch.compile(compiled_model, fullgraph=True)
    loss = gan_fast.nn.GANLoss("bce", "g")
    for step in range(2):
        z = torch.randn(4, 8, 1, 1, device=device)
        le = loss(eager(z))
        lc = loss(compiled(z))
        torch.testing.assert_close(lc, le, atol=1e-5, rtol=1e-5)
        le.backward(), lc.backward()
    for (n, a), b in zip(eager.named_parameters(), compiled_model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=lambda m: f"{n}: {m}")
    for (n, a), b in zip(eager.named_buffers(), compiled_model.buffers()):
        torch.testing.assert_close(b, a, msg=lambda m: f"{n}: {m}")
    compiled_model.eval(), eager.eval()
    torch.testing.assert_close(compiled(z), eager(z), atol=1e-5, rtol=1e-5)


def test_fake_impls_are_consistent():
    """torch.library's own checker: schema, fake impl, autograd registration."""
    x = torch.randn(2, 3, 4, 4).requires_grad_()
    w, b = torch.rand(3).requires_grad_(), torch.randn(3).requires_grad_()
    torch.library.opcheck(torch.ops.gan_fast.bn_act_train, (x, w, b, 1e-5, 0.2))
    torch.library.opcheck(torch.ops.gan_fast.bn_act_eval, (x, w, b, torch.zeros(3), torch.ones(3), 1e-5, 0.2))
    torch.library.opcheck(torch.ops.gan_fast.gan_loss, (torch.randn(5).requires_grad_(), torch.randn(7).requires_grad_(), "bce", "d", "mean", 0.0))
    torch.library.opcheck(torch.ops.gan_fast.gan_loss, (None, torch.randn(7).requires_grad_(), "hinge", "g", "sum", 0.0))
