"""Bad input gets a clear error naming the argument, before any kernel runs."""
import pytest
import torch

import gan_fast
from gan_fast import functional
from gan_fast.nn import Conv2dBNAct, GANLoss


def bn(x, c=None, training=True, **kw):
    c = x.shape[1] if c is None and x.dim() > 1 else (c or 3)
    return functional.bn_act(x, torch.zeros(c), torch.ones(c), torch.ones(c), torch.zeros(c), training, **kw)


def test_wrong_rank():
    with pytest.raises(ValueError, match=r"x must be 4-D"):
        bn(torch.randn(2, 3, 4))


def test_wrong_channel_count():
    with pytest.raises(ValueError, match=r"running_mean must have shape \(5,\)"):
        bn(torch.randn(2, 5, 4, 4), c=3)
    block = Conv2dBNAct(3, 4, 3)
    with pytest.raises(RuntimeError, match="channels"):  # the stock conv's own message
        block(torch.randn(2, 5, 8, 8))


def test_wrong_dtypes():
    with pytest.raises(TypeError, match=r"x must have dtype in"):
        bn(torch.randint(0, 5, (2, 3, 4, 4)))
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(TypeError, match=r"weight must be float32 or the input's dtype"):
        functional.bn_act(x, None, None, torch.ones(3, dtype=torch.float16), torch.zeros(3, dtype=torch.float16), True)
    with pytest.raises(TypeError, match="real and fake must have the same dtype"):
        functional.gan_loss(torch.randn(4), torch.randn(4, dtype=torch.float64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU to mix devices")
def test_device_mix():
    with pytest.raises(ValueError, match="running_mean is on cpu but x is on cuda"):
        bn(torch.randn(2, 3, 4, 4, device="cuda"))
    with pytest.raises(ValueError, match="real is on"):
        functional.gan_loss(torch.randn(4), torch.randn(4, device="cuda"))


def test_device_mix_meta():
    """The device check itself, exercised without a GPU through the meta device."""
    with pytest.raises(ValueError, match="running_mean is on cpu but x is on meta"):
        bn(torch.randn(2, 3, 4, 4, device="meta"))


def test_one_value_per_channel_in_training():
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        bn(torch.randn(1, 3, 1, 1))
    bn(torch.randn(1, 3, 1, 1), training=False)  # eval mode is fine, as in PyTorch
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        torch.nn.functional.batch_norm(torch.randn(1, 3, 1, 1), None, None, training=True)


def test_loss_arguments():
    with pytest.raises(ValueError, match="kind must be one of"):
        GANLoss("wasserstein-gp")
    with pytest.raises(ValueError, match="side must be"):
        GANLoss("bce", side="both")
    with pytest.raises(ValueError, match="reduction must be one of"):
        functional.gan_loss(torch.randn(2), torch.randn(2), reduction="none")
    with pytest.raises(ValueError, match="label_smoothing applies to the bce"):
        GANLoss("hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="needs the discriminator's logits on real"):
        functional.gan_loss(None, torch.randn(2), side="d")
    with pytest.raises(ValueError, match="pass real=None"):
        functional.gan_loss(torch.randn(2), torch.randn(2), side="g")
    with pytest.raises(ValueError, match="fake is empty"):
        functional.gan_loss(torch.randn(2), torch.randn(0))


def test_unknown_backend_and_forced_unavailable_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        gan_fast.set_backend("tpu")
    with gan_fast.use_backend("cuda"):
        with pytest.raises(gan_fast.BackendUnavailable, match="'cuda' was requested but cannot run"):
            bn(torch.randn(2, 3, 4, 4))


def test_loss_argument_types():
    """A wrong type is a TypeError naming the argument and what it accepts, raised at
    construction (GANLoss) or before any kernel (functional), never inside a backend."""
    with pytest.raises(TypeError, match=r"label_smoothing must be a real number \(a float in \[0, 1\)\), got str '0.1'"):
        GANLoss(label_smoothing="0.1")
    with pytest.raises(TypeError, match="label_smoothing must be a real number"):
        functional.gan_loss(torch.randn(2), torch.randn(2), label_smoothing=None)
    with pytest.raises(TypeError, match=r"kind must be a str, one of \(.*'bce'.*\), got int"):
        GANLoss(kind=1)
    with pytest.raises(TypeError, match=r"side must be a str, one of \('d', 'g'\), got NoneType"):
        GANLoss("bce", side=None)
    with pytest.raises(TypeError, match=r"reduction must be a str, one of \('mean', 'sum'\), got bytes"):
        functional.gan_loss(None, torch.randn(2), side="g", reduction=b"mean")
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\), got nan"):
        GANLoss(label_smoothing=float("nan"))
    crit = GANLoss("bce", "d")
    with pytest.raises(TypeError, match="real must be a torch.Tensor of logits, got list"):
        crit([0.5], torch.randn(2))
    with pytest.raises(TypeError, match="fake must be a torch.Tensor of logits, got float"):
        GANLoss("bce", "g")(0.5)
    with pytest.raises(TypeError, match="fake must have dtype in"):
        GANLoss("bce", "g")(torch.ones(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="real is on cpu but fake is on meta"):
        crit(torch.randn(2), torch.randn(2, device="meta"))
    with pytest.raises(ValueError, match="real is empty"):
        crit(torch.randn(0), torch.randn(2))
    with pytest.raises(TypeError, match="real and fake must have the same dtype"):
        crit(torch.randn(2), torch.randn(2, dtype=torch.float64))
