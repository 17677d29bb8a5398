"""gan_fast.fuse changes no behaviour it cannot prove safe (issue 14, points 2 and 3).

Exactness checks run in float64 on the reference backend: the fused model must give
the stock model's outputs, every parameter gradient, running statistics and
num_batches_tracked, in training and in eval mode.
"""
import copy

import pytest
import torch
from torch import nn

import gan_fast
from gan_fast.fuse import FusedConv2d, FusedConvTranspose2d
from helpers import assert_fused_same

NZ, NGF, NDF, NC = 100, 4, 4, 3  # pytorch/examples' nz; widths reduced for speed (published: 64)


class Generator(nn.Module):
    """pytorch/examples dcgan/main.py's Generator, verbatim but for the widths."""

    def __init__(self, ngpu):
        super().__init__()
        self.ngpu = ngpu
        self.main = nn.Sequential(
            nn.ConvTranspose2d(NZ, NGF * 8, 4, 1, 0, bias=False),
            nn.BatchNorm2d(NGF * 8),
            nn.ReLU(True),
            nn.ConvTranspose2d(NGF * 8, NGF * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(NGF * 4),
            nn.ReLU(True),
            nn.ConvTranspose2d(NGF * 4, NGF * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(NGF * 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(NGF * 2, NGF, 4, 2, 1, bias=False),
            nn.BatchNorm2d(NGF),
            nn.ReLU(True),
            nn.ConvTranspose2d(NGF, NC, 4, 2, 1, bias=False),
            nn.Tanh()
        )

    def forward(self, input):
        if input.is_cuda and self.ngpu > 1:
            output = nn.parallel.data_parallel(self.main, input, range(self.ngpu))
        else:
            output = self.main(input)
        return output


class Discriminator(nn.Module):
    """pytorch/examples dcgan/main.py's Discriminator, verbatim but for the widths."""

    def __init__(self, ngpu):
        super().__init__()
        self.ngpu = ngpu
        self.main = nn.Sequential(
            nn.Conv2d(NC, NDF, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(NDF, NDF * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(NDF * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(NDF * 2, NDF * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(NDF * 4),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(NDF * 4, NDF * 8, 4, 2, 1, bias=False),
            nn.BatchNorm2d(NDF * 8),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(NDF * 8, 1, 4, 1, 0, bias=False),
            nn.Sigmoid()
        )

    def forward(self, input):
        if input.is_cuda and self.ngpu > 1:
            output = nn.parallel.data_parallel(self.main, input, range(self.ngpu))
        else:
            output = self.main(input)

        return output.view(-1, 1).squeeze(1)


class ConvCalledAlone(nn.Module):
    """Calls the chain's conv on its own as well: the chain must stay stock."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.tail = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(0.2))

    def forward(self, x):
        if x.is_cuda and x.shape[0] > 10 ** 9:  # fx cannot trace this; a run follows it
            return x
        return self.tail(self.body(x)) + self.body[0](x)


class OneChain(nn.Module):
    """body = Conv2d -> BatchNorm2d -> ReLU, called as ``how(self, x)`` says."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x):
        return self.how(self, x)


class Skips(nn.Module):
    """A BatchNorm output used by a skip concatenation, a conv output used by a residual add."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1, self.a1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()
        self.c2, self.b2, self.a2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()

    def forward(self, x):
        h = self.b1(self.c1(x))
        y = torch.cat([self.a1(h), h], 1)[:, :4]  # b1's output also feeds the concatenation
        z = self.c2(y)
        return self.a2(self.b2(z) + z)  # c2's output also feeds the residual add


@pytest.fixture
def reference():
    with gan_fast.use_backend("reference"):
        yield


def _fused(stock, **kw):
    return gan_fast.fuse(copy.deepcopy(stock), return_report=True, **kw)


def _assert_same(stock, fused, x, steps=2):
    assert_fused_same(stock, fused, x, steps=steps)


def _blocks(model):
    return sum(isinstance(m, (FusedConv2d, FusedConvTranspose2d)) for m in model.modules())


@pytest.mark.parametrize("example", [True, False], ids=["example_inputs", "guessed_input"])
def test_pytorch_examples_dcgan_is_analysed_and_fused_exactly(reference, example):
    torch.manual_seed(0)
    g, d = Generator(1).double(), Discriminator(1).double()
    z, img = torch.randn(4, NZ, 1, 1, dtype=torch.float64), torch.randn(4, NC, 64, 64, dtype=torch.float64)
    gf, rg = _fused(g, example_inputs=(z,) if example else None)
    df, rd = _fused(d, example_inputs=(img,) if example else None)
    for report, n in ((rg, 4), (rd, 4)):  # D's first Conv -> LeakyReLU(inplace) has no norm
        assert "ran forward on fake tensors" in report.how and "not analysed" not in report.how, str(report)
        assert len(report.fused) == n and not report.left, str(report)
    assert _blocks(gf) == 4 and _blocks(df) == 4
    assert all(isinstance(gf.main[i], nn.Identity) for i in (2, 5, 8, 11))
    assert all(isinstance(df.main[i], nn.Identity) for i in (1, 4, 7, 10))
    _assert_same(g, gf, z)
    _assert_same(d, df, img)


def test_conv_called_outside_its_chain_is_left_alone(reference):
    """Defect 2: the Sequential fallback fused body.0 although forward calls it alone."""
    torch.manual_seed(0)
    stock = ConvCalledAlone().double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    for kw in ({}, {"example_inputs": (x,)}):
        fused, report = _fused(stock, **kw)
        _assert_same(stock, fused, x)
        assert type(fused.body[0]) is nn.Conv2d and type(fused.body[1]) is nn.BatchNorm2d, str(report)
        assert isinstance(fused.tail[0], FusedConv2d), str(report)  # the other chain is fine
        assert any(s.startswith("body.0 -> body.1:") and "called more than once" in s for s in report.left), str(report)


def test_outputs_used_elsewhere(reference):
    torch.manual_seed(0)
    stock = Skips().double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    fused, report = _fused(stock, example_inputs=(x,))
    text = str(report)
    # b1's output goes to a1 and to cat: conv+BN are fused, the activation stays
    assert isinstance(fused.c1, FusedConv2d) and type(fused.a1) is nn.ReLU, text
    assert "activation left in place" in text and "cat()" in text
    # c2's output goes to b2 and to the add: the chain stays stock
    assert type(fused.c2) is nn.Conv2d and any(s.startswith("c2 -> b2:") and "add" in s for s in report.left), text
    _assert_same(stock, fused, x)


def test_unanalysable_model_fuses_nothing_unless_assume_sequential(reference):
    stock = OneChain(lambda self, x: self.body(x) if x.sum() > 0 else self.body(-x)).double()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    fused, report = _fused(stock, example_inputs=(x,))
    assert not report.fused and _blocks(fused) == 0
    assert "not analysed" in report.how and "tensor values" in report.how
    assert "assume_sequential=True" in report.how and "example_inputs" in report.how
    assert report.left == ["body.0 -> body.1 -> body.2: the model was not analysed"]
    fused, report = _fused(stock, assume_sequential=True)
    assert len(report.fused) == 1 and "assume_sequential=True" in report.how
    _assert_same(stock, fused, x)


def test_training_and_eval_paths_are_both_checked(reference):
    stock = OneChain(lambda self, x: self.body(x) if self.training else self.body[0](x)).double()
    fused, report = _fused(stock)
    assert not report.fused and "in eval mode" in report.left[0], str(report)
    _assert_same(stock, fused, torch.randn(2, 3, 6, 6, dtype=torch.float64))


def test_analysis_changes_no_state():
    torch.manual_seed(0)
    g = Generator(1)
    g.main.append(nn.Dropout(0.5))
    before, z = copy.deepcopy(g.state_dict()), torch.randn(2, NZ, 1, 1)
    rng = torch.get_rng_state()
    gan_fast.fuse(g, example_inputs=(z,))
    assert torch.equal(rng, torch.get_rng_state())
    for k, v in g.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(m.training for m in g.modules())
    sn = nn.Sequential(nn.utils.spectral_norm(nn.Conv2d(3, 4, 3)), nn.BatchNorm2d(4), nn.ReLU())
    sn.eval()(torch.randn(2, 3, 5, 5))
    weight = sn[0].weight
    gan_fast.fuse(sn, example_inputs=(torch.randn(2, 3, 5, 5),))
    assert sn[0].weight is weight  # the hook's tensor attribute, not a fake one from the run


@pytest.mark.parametrize("register", ["register_forward_hook", "register_forward_pre_hook",
                                      "register_full_backward_hook", "register_full_backward_pre_hook"])
@pytest.mark.parametrize("index", [0, 1, 2], ids=["fused_conv", "absorbed_bn", "absorbed_act"])
def test_hooks_on_absorbed_modules_raise(register, index):
    """Defect 3: a hook registered after fuse on an absorbed module saw the fused values."""
    model = gan_fast.fuse(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    with pytest.raises(RuntimeError, match="register hooks before fuse .* gan_fast.unfuse"):
        getattr(model[index], register)(lambda *a: None)
    with pytest.raises(RuntimeError, match="BatchNorm2d into the conv before it"):
        model[1].register_forward_hook(lambda *a: None)
    gan_fast.unfuse(model)  # then hooks see what stock shows them
    seen = []
    model[1].register_forward_hook(lambda m, i, o: seen.append(o))
    model(torch.randn(2, 3, 5, 5))
    assert len(seen) == 1 and type(model[1]) is nn.BatchNorm2d


def test_hooks_present_before_fuse_keep_the_chain_stock(reference):
    stock = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).double()
    for what, index in (("forward", 1), ("full_backward", 1), ("forward_pre", 0)):
        model = copy.deepcopy(stock)
        getattr(model[index], f"register_{what}_hook")(lambda *a: None)
        fused, report = gan_fast.fuse(model, return_report=True)
        assert not report.fused and "hooks" in report.left[0], str(report)
    model = copy.deepcopy(stock)
    seen = []
    model[2].register_forward_hook(lambda m, i, o: seen.append((i[0].clone(), o.clone())))
    fused, report = gan_fast.fuse(model, return_report=True)
    assert isinstance(fused[0], FusedConv2d) and type(fused[2]) is nn.ReLU, str(report)
    assert "activation left in place" in report.fused[0] and "hooks" in report.fused[0]
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    out, ref = fused(x), stock(x)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(seen[0][0], stock[1](stock[0](x)))  # the hook saw BatchNorm's output


def test_every_chain_left_has_a_reason():
    conv = nn.Conv2d(3, 4, 3)
    shared = nn.Sequential(conv, nn.BatchNorm2d(4), nn.ReLU(), conv)
    class OwnBatchNorm(nn.BatchNorm2d):  # (nn.SyncBatchNorm chains are fused: issue 15)
        pass
    subclass = nn.Sequential(nn.Conv2d(3, 4, 3), OwnBatchNorm(4), nn.ReLU())
    unused, alone = OneChain(lambda self, x: x), OneChain(lambda self, x: self.body[0](x))
    for model in (shared, subclass, unused, alone):
        _, report = gan_fast.fuse(model, return_report=True)
        assert not report.fused and len(report.left) == 1 and ": " in report.left[0], str(report)
        assert model is not unused or "did not call body.0" in report.left[0]
    assert "does not pass the output of body.0 to body.1" in report.left[0]


def test_fuse_rejects_what_is_not_a_module():
    for bad in (None, "model", torch.zeros(1)):
        with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
            gan_fast.fuse(bad)
        with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
            gan_fast.unfuse(bad)
    with pytest.raises(TypeError, match="example_inputs"):
        gan_fast.fuse(nn.Conv2d(1, 1, 1), example_inputs=[torch.zeros(1, 1, 1, 1)])


def test_absorbed_modules_return_their_input_without_the_module_call_machinery():
    """An absorbed norm or activation is called as a plain function returning its input
    (no nn.Module.__call__: about 2 us saved per absorbed module in an nn.Sequential): a
    global module hook sees the fused conv, never them."""
    torch.manual_seed(0)
    model = gan_fast.fuse(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                        nn.Conv2d(4, 4, 3), nn.InstanceNorm2d(4), nn.LeakyReLU(0.2)))
    x = torch.randn(2, 3, 8, 8)
    seen = []
    handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: seen.append(type(m).__name__))
    try:
        y = model(x)
    finally:
        handle.remove()
    assert seen == ["FusedConv2d", "FusedConv2d", "Sequential"], seen
    for i in (1, 2, 4, 5):
        assert model[i](y) is y
