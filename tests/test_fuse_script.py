"""TorchScript and torch.jit.trace on gan_fast modules.

torch.jit.script cannot compile gan_fast's forwards: every gan_fast module (fuse's fused
and absorbed modules, gan_fast.nn's blocks and GANLoss) refuses it before anything is
compiled, with an error that names TorchScript and the ways out, and the model is left as
it was. The ways out the error names work: the stock layers script (gan_fast.unfuse,
to_stock()). torch.jit.trace records the ops a call ran: on the C++ backend a fused model
traces, saves and loads, and computes what the stock model computes, in training mode too.
"""
import copy
import io

import pytest
import torch
from torch import nn

import gan_fast
from gan_fast import backends
from helpers import require_cpu_extension

NOT_SUPPORTED = r"TorchScript \(torch.jit.script\) is not supported by gan_fast"
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")


class Nested(nn.Module):
    """A custom forward: a Sequential chain, then an attribute chain whose activation is a
    function call (so only its conv + BatchNorm are fused)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.LeakyReLU(0.2))
        self.conv, self.bn = nn.Conv2d(8, 4, 3, 2, 1, bias=False), nn.BatchNorm2d(4)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(self.head(x))))


def generator():
    return nn.Sequential(
        nn.ConvTranspose2d(8, 6, 4, 1, 0, bias=False), nn.BatchNorm2d(6), nn.ReLU(True),
        nn.ConvTranspose2d(6, 3, 4, 2, 1, bias=False), nn.BatchNorm2d(3), nn.LeakyReLU(0.2),
        nn.ConvTranspose2d(3, 1, 3, 1, 1), nn.Tanh())


MODELS = {"generator": (generator, (2, 8, 1, 1)), "nested": (Nested, (2, 3, 6, 6))}


def _stock(name):
    torch.manual_seed(0)
    make, shape = MODELS[name]
    return make(), torch.randn(shape)


@pytest.mark.parametrize("name", MODELS)
def test_script_of_a_fused_model_says_torchscript_is_not_supported(name):
    stock, x = _stock(name)
    torch.jit.script(copy.deepcopy(stock))  # the stock model scripts: the refusal is gan_fast's
    fused, report = gan_fast.fuse(copy.deepcopy(stock), return_report=True)
    assert report.fused
    classes = [type(m) for m in fused.modules()]
    with pytest.raises(RuntimeError, match=NOT_SUPPORTED) as e:
        torch.jit.script(fused)
    assert "gan_fast.unfuse(model)" in str(e.value) and "torch.compile" in str(e.value)
    assert [type(m) for m in fused.modules()] == classes  # the model is left as it was
    stock.eval(), fused.eval()
    torch.testing.assert_close(fused(x), stock(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_unfused_model_scripts_and_matches_stock(name):
    stock, x = _stock(name)
    scripted = torch.jit.script(gan_fast.unfuse(gan_fast.fuse(copy.deepcopy(stock))))
    stock.eval(), scripted.eval()
    torch.testing.assert_close(scripted(x), stock(x), atol=0, rtol=0)


@pytest.mark.parametrize("make", [
    lambda: gan_fast.nn.Conv2dBNAct(3, 4, 3, padding=1),
    lambda: gan_fast.nn.ConvTranspose2dBNAct(3, 4, 4, 2, 1),
    lambda: nn.Sequential(gan_fast.nn.Conv2dBNAct(3, 4, 3), nn.Flatten()),
    lambda: gan_fast.nn.GANLoss("hinge"),
], ids=["Conv2dBNAct", "ConvTranspose2dBNAct", "nested-block", "GANLoss"])
def test_script_of_gan_fast_nn_modules_says_torchscript_is_not_supported(make):
    with pytest.raises(RuntimeError, match=NOT_SUPPORTED):
        torch.jit.script(make())


@pytest.mark.parametrize("cls", [gan_fast.nn.Conv2dBNAct, gan_fast.nn.ConvTranspose2dBNAct])
def test_block_to_stock_scripts_and_matches_the_block(cls):
    torch.manual_seed(0)
    block, x = cls(3, 4, 3, padding=1).eval(), torch.randn(2, 3, 5, 5)
    scripted = torch.jit.script(block.to_stock())
    torch.testing.assert_close(scripted(x), block(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_trace_of_a_fused_model_on_the_cpp_backend_matches_stock(train):
    """torch.jit.trace records the one C++ op per block (gan_fast_C::conv_bn_act_eager),
    which updates the running statistics itself; the trace (saved and loaded) computes what
    the stock model does, for the mode and backend it was traced in."""
    require_cpu_extension()
    stock, x = _stock("generator")
    stock.train(train)
    with backends.use_backend("cpu"):
        fused = gan_fast.fuse(copy.deepcopy(stock)).train(train)
        traced = torch.jit.trace(fused, (x,), check_trace=False)  # runs forward once
        stock(x)
        ys, yt = stock(x), traced(x)
        torch.testing.assert_close(yt, ys, atol=1e-5, rtol=1e-4)
        if train:
            (ys * ys).sum().backward()
            (yt * yt).sum().backward()
            for (n, a), b in zip(stock.named_parameters(), fused.parameters()):
                torch.testing.assert_close(b.grad, a.grad, atol=1e-4, rtol=1e-4, msg=lambda m: f"{n}: {m}")
        for (n, a), b in zip(stock.named_buffers(), fused.buffers()):
            torch.testing.assert_close(b, a, msg=lambda m: f"{n}: {m}")
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
        buf.seek(0)
        loaded, same = torch.jit.load(buf), copy.deepcopy(stock)  # copies of the state at save
        torch.testing.assert_close(loaded(x), same(x), atol=1e-5, rtol=1e-4)
        for (n, a), b in zip(same.named_buffers(), loaded.buffers()):
            torch.testing.assert_close(b, a, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_trace_records_the_chain_ops_not_their_insides(train):
    """The eager C++ ops are called directly (gan_fast.kernels.cpp.eager_entry) except while
    torch.jit.trace records: the trace holds each op (a BatchNorm block's, an InstanceNorm
    chain's, a norm-free chain's), so the loaded trace updates running statistics and
    differentiates as the model does."""
    require_cpu_extension()
    torch.manual_seed(0)
    stock = nn.Sequential(
        nn.Conv2d(3, 6, 3, 1, 1), nn.InstanceNorm2d(6, affine=True, track_running_stats=True),
        nn.ReLU(True), nn.Conv2d(6, 4, 4, 2, 1), nn.LeakyReLU(0.2, True),
        nn.ConvTranspose2d(4, 3, 4, 2, 1, bias=False), nn.BatchNorm2d(3), nn.ReLU()).train(train)
    x = torch.randn(2, 3, 8, 8)
    with backends.use_backend("cpu"):
        fused = gan_fast.fuse(copy.deepcopy(stock)).train(train)
        traced = torch.jit.trace(fused, (x,), check_trace=False)
        graph = str(traced.inlined_graph)
        for op in ("conv_in_act_eager", "conv_act_eager", "conv_bn_act_eager"):
            assert f"gan_fast_C::{op}" in graph, graph
        stock(x)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
        buf.seek(0)
        loaded, same = torch.jit.load(buf), copy.deepcopy(stock)
        xs, xl = x.clone().requires_grad_(), x.clone().requires_grad_()
        ys, yl = same(xs), loaded(xl)
        torch.testing.assert_close(yl, ys, atol=1e-5, rtol=1e-4)
        ys.square().sum().backward(), yl.square().sum().backward()
        torch.testing.assert_close(xl.grad, xs.grad, atol=1e-4, rtol=1e-4)
        for (n, a), b in zip(same.named_buffers(), loaded.buffers()):
            torch.testing.assert_close(b, a, msg=lambda m: f"{n}: {m}")
