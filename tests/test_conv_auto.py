"""``auto``'s measured choice between the fused Triton conv and the stock conv + bn_act
(gan_fast/ops/conv_block.py: _fused_conv_mode, _fused_is_faster).

``auto`` times the fused conv only on CUDA tensors (``_measures_on``); here that function
is patched so the choice is timed on CPU tensors with the Triton interpreter, on tiny
shapes. The timer (``backends._median_seconds``) is replaced by one that runs each way
once, notes whether it called the fused kernels, and returns the time the test sets, so
either outcome can be forced. The kernel calls made by the timing are not counted in
``calls``: what is counted is what the user's call ran.
"""
import copy
import logging
import types

import pytest
import torch

from helpers import TRITON_CONV_KERNELS as KERNELS, assert_same_step, count_calls, require_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
require_triton(DEVICE)

import gan_fast  # noqa: E402
from gan_fast import backends  # noqa: E402
from gan_fast.kernels.triton import conv as tconv  # noqa: E402
from gan_fast.nn import Conv2dBNAct, ConvTranspose2dBNAct  # noqa: E402
from gan_fast.ops import conv_block as cba  # noqa: E402

SHAPE = (2, 3, 4, 4)  # k4 s2 p1: 4x4 -> 2x2 (Conv2d), 4x4 -> 8x8 (ConvTranspose2d)
OUT_SHAPE = {Conv2dBNAct: (2, 4, 2, 2), ConvTranspose2dBNAct: (2, 4, 8, 8)}


def _clear_choices():
    for k in [k for k in backends._choices if k[0] == cba._OP]:
        del backends._choices[k]


def _conv_choices():
    return {k[1]: v for k, v in backends.choices().items() if k[0] == cba._OP}


@pytest.fixture(autouse=True)
def plain_auto(monkeypatch):
    """Backend auto, GAN_FAST_FUSED_CONV unset, no conv_bn_act choice cached before or after."""
    monkeypatch.delenv("GAN_FAST_FUSED_CONV", raising=False)
    monkeypatch.delenv("GAN_FAST_BACKEND", raising=False)
    _clear_choices()
    with gan_fast.use_backend("auto"):
        yield
    _clear_choices()


@pytest.fixture
def measuring(monkeypatch):
    """auto considers the fused conv on this device (CPU included)."""
    monkeypatch.setattr(cba, "_measures_on", lambda device_type: True)


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls into the Triton conv kernels."""
    return count_calls(monkeypatch, tconv, KERNELS)


@pytest.fixture
def timer(monkeypatch, calls):
    """Replaces backends._median_seconds: runs the way once, records in `timed` whether it
    was the fused one (it called the fused kernels) and returns times[way]; the kernel calls
    it made are taken back out of `calls`."""
    state = types.SimpleNamespace(times={"fused": 1.0, "unfused": 2.0}, timed=[])

    def fake_median_seconds(fn, device_type, reps=5):
        before = dict(calls)
        fn()
        way = "fused" if calls != before else "unfused"
        calls.update(before)
        state.timed.append(way)
        return state.times[way]
    monkeypatch.setattr(backends, "_median_seconds", fake_median_seconds)
    return state


def _make(cls=Conv2dBNAct, seed=0, **kwargs):
    torch.manual_seed(seed)
    block = cls(3, 4, 4, 2, 1, **kwargs)
    with torch.no_grad():
        block.bn.weight.uniform_(0.5, 1.5)
        block.bn.bias.uniform_(-0.3, 0.3)
    block = block.to(DEVICE)
    return block, copy.deepcopy(block.to_stock())


def _train_step(block, x, g):
    xa = x.clone().requires_grad_()
    out = block(xa)
    out.backward(g)
    return out, xa.grad


def _assert_same_state(a, b, exact=False):
    check = torch.equal if exact else (
        lambda u, v: torch.allclose(u.float(), v.float(), atol=1e-4, rtol=1e-4))
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert (p.grad is None) == (q.grad is None), n
        assert p.grad is None or check(p.grad, q.grad), f"{n}.grad"
    for (n, s), (_, t) in zip(a.named_buffers(), b.named_buffers()):
        assert check(s, t), n


# ------------------------------------------------------------------------------ tests
def test_only_cuda_is_measured_by_default():
    assert cba._measures_on("cuda") and not cba._measures_on("cpu")


def test_tf32_is_part_of_the_key_for_fp32_on_cuda(monkeypatch):
    cfg = cba._Config("cuda:0", False, SHAPE, "torch.float32", False, (4, 3, 4, 4), True, (2, 2),
                      (1, 1), (0, 0), True, "torch.float32", True, True, True, False)
    for allow in (True, False):
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", allow)
        assert cba._tf32(cfg) is allow
        assert cba._tf32(cfg._replace(dtype="torch.bfloat16")) is False
        assert cba._tf32(cfg._replace(device="cpu")) is False


def test_measured_once_per_key_and_listed(measuring, timer, calls):
    block, _ = _make()
    block.eval()
    with torch.no_grad():
        block(torch.randn(SHAPE, device=DEVICE))
        assert timer.timed == ["fused", "unfused"]
        block(torch.randn(SHAPE, device=DEVICE))
        assert timer.timed == ["fused", "unfused"]  # cached: not timed again
        block(torch.randn((3,) + SHAPE[1:], device=DEVICE))  # another shape: timed
    assert timer.timed == ["fused", "unfused"] * 2
    chosen = _conv_choices()
    assert len(chosen) == 2 and set(chosen.values()) == {"fused"}
    assert {cfg.x_shape for cfg in chosen} == {SHAPE, (3,) + SHAPE[1:]}
    cfg = next(iter(chosen))
    assert (cfg.transposed, cfg.batch_stats, cfg.grad_x, cfg.grad_params) == (False, False, False, False)
    assert calls["conv2d_bn_act_eval"] == 3
    # gradients wanted (for the parameters; then also for x): two more keys
    block(torch.randn(SHAPE, device=DEVICE))
    block(torch.randn(SHAPE, device=DEVICE, requires_grad=True))
    assert timer.timed == ["fused", "unfused"] * 4
    grads = {(cfg.grad_x, cfg.grad_params) for cfg in _conv_choices() if cfg.x_shape == SHAPE}
    assert grads == {(False, False), (False, True), (True, True)}


@pytest.mark.parametrize("cls", [Conv2dBNAct, ConvTranspose2dBNAct], ids=["conv", "convT"])
@pytest.mark.parametrize("winner", ["fused", "unfused"])
def test_the_faster_way_runs_and_matches_stock(measuring, timer, calls, cls, winner):
    timer.times = {"fused": 1.0, "unfused": 2.0} if winner == "fused" else {"fused": 2.0, "unfused": 1.0}
    block, twin = _make(cls)
    x = torch.randn(SHAPE, device=DEVICE)
    g = torch.randn(OUT_SHAPE[cls], device=DEVICE)
    out, gx = _train_step(block, x, g)
    ref, gref = _train_step(twin, x, g)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gx, gref, atol=1e-5, rtol=1e-4)
    _assert_same_state(block, twin)
    assert timer.timed == ["fused", "unfused"]
    assert list(_conv_choices().values()) == [winner]
    stats = "conv_transpose2d_stats" if cls is ConvTranspose2dBNAct else "conv2d_stats"
    fused = winner == "fused"
    assert (calls[stats], calls["bn_act_conv_backward"]) == ((1, 1) if fused else (0, 0)), calls

    block.eval(), twin.eval()
    with torch.no_grad():  # another key (running statistics, no gradients): timed again
        torch.testing.assert_close(block(x), twin(x), atol=1e-5, rtol=1e-4)
    evalk = "conv_transpose2d_bn_act_eval" if cls is ConvTranspose2dBNAct else "conv2d_bn_act_eval"
    assert timer.timed == ["fused", "unfused"] * 2
    assert calls[evalk] == (1 if fused else 0), calls


@pytest.mark.parametrize("winner", ["fused", "unfused"])
def test_measurement_leaves_the_user_state_alone(monkeypatch, measuring, timer, winner):
    """The block that was timed ends up exactly as a copy that ran the chosen way untimed."""
    timer.times = {"fused": 1.0, "unfused": 2.0} if winner == "fused" else {"fused": 2.0, "unfused": 1.0}
    block, _ = _make(ConvTranspose2dBNAct, momentum=None)
    copy_ = copy.deepcopy(block)
    x = torch.randn(SHAPE, device=DEVICE)
    g = torch.randn(OUT_SHAPE[ConvTranspose2dBNAct], device=DEVICE)
    xa = x.clone().requires_grad_()
    rng = torch.get_rng_state()
    out = block(xa)
    assert timer.timed == ["fused", "unfused"]
    assert torch.equal(torch.get_rng_state(), rng)
    assert xa.grad is None and all(p.grad is None for p in block.parameters())
    assert torch.equal(xa, x)
    out.backward(g)

    monkeypatch.setenv("GAN_FAST_FUSED_CONV", "1" if winner == "fused" else "0")
    ref, gref = _train_step(copy_, x, g)
    assert torch.equal(out, ref) and torch.equal(xa.grad, gref)
    _assert_same_state(block, copy_, exact=True)
    assert int(block.bn.num_batches_tracked) == 1


@pytest.mark.parametrize("flag,fused", [("0", False), ("1", True)])
def test_fused_conv_flag_decides_without_timing(monkeypatch, measuring, timer, calls, flag, fused):
    monkeypatch.setenv("GAN_FAST_FUSED_CONV", flag)
    block, twin = _make()
    x = torch.randn(SHAPE, device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(block(x), twin(x), atol=1e-5, rtol=1e-4)
    assert timer.timed == [] and _conv_choices() == {}
    assert calls["conv2d_stats"] == (1 if fused else 0), calls


@pytest.mark.parametrize("patched", [True, False], ids=["measuring", "cuda-only"])
def test_explicit_triton_fuses_without_timing(monkeypatch, timer, calls, patched):
    if patched:
        monkeypatch.setattr(cba, "_measures_on", lambda device_type: True)
    block, twin = _make()
    x = torch.randn(SHAPE, device=DEVICE)
    with gan_fast.use_backend("triton"), torch.no_grad():
        torch.testing.assert_close(block(x), twin(x), atol=1e-5, rtol=1e-4)
    assert timer.timed == [] and _conv_choices() == {}
    assert calls["conv2d_stats"] == 1, calls


def test_a_failing_fused_conv_is_logged_once_and_the_stock_way_kept(monkeypatch, measuring, calls,
                                                                     caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("triton compile failed (test)")
    monkeypatch.setattr(tconv, "conv2d_stats", broken)  # real timer: its warm-up run raises
    block, twin = _make()
    x = torch.randn(SHAPE, device=DEVICE)
    with caplog.at_level(logging.WARNING, logger="gan_fast"), torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(block(x), twin(x), atol=1e-5, rtol=1e-4)
    warnings = [r for r in caplog.records if "triton compile failed (test)" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert list(_conv_choices().values()) == ["unfused"]
    _assert_same_state(block, twin)


def test_a_channel_mismatch_is_not_timed_and_raises_the_stock_error(measuring, timer, calls):
    block, twin = _make()
    x = torch.randn(2, 5, 4, 4, device=DEVICE)
    with pytest.raises(RuntimeError) as stock:
        twin(x)
    with pytest.raises(RuntimeError) as ours:
        block(x)
    assert str(ours.value) == str(stock.value)
    assert timer.timed == [] and not any(calls.values())


def test_cpu_tensors_under_plain_auto_are_never_timed(timer, calls):
    block, twin = _make()
    x = torch.randn(SHAPE)
    block, twin = block.cpu(), twin.cpu()
    out, gx = _train_step(block, x, g := torch.randn(OUT_SHAPE[Conv2dBNAct]))
    ref, gref = _train_step(twin, x, g)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gx, gref, atol=1e-5, rtol=1e-4)
    assert timer.timed == [] and _conv_choices() == {} and not any(calls.values())


def test_compile_fullgraph_times_at_trace_time(measuring, timer, calls):
    """torch.compile(fullgraph=True) on a block whose choice auto times: the timing runs
    eagerly while dynamo traces (once per key), the choice is a constant of the graph."""
    torch._dynamo.reset()
    block, twin = _make()
    compiled = torch.compile(block, fullgraph=True)
    x = torch.randn(SHAPE, device=DEVICE)
    for _ in range(2):
        assert_same_step(twin, compiled, x)
    assert timer.timed == ["fused", "unfused"]
    assert list(_conv_choices().values()) == ["fused"]
    assert calls["conv2d_stats"] == 2 and calls["bn_act_conv_backward"] == 2, calls
    _assert_same_state(block, twin)


def test_compile_dynamic_shapes_time_each_shape(measuring, timer, calls):
    """With dynamic shapes the timed key specializes x's shape: one choice per shape."""
    torch._dynamo.reset()
    block, twin = _make()
    block.eval(), twin.eval()
    compiled = torch.compile(block, fullgraph=True, dynamic=True)
    with torch.no_grad():
        for n in (2, 3):
            x = torch.randn((n,) + SHAPE[1:], device=DEVICE)
            torch.testing.assert_close(compiled(x), twin(x), atol=1e-5, rtol=1e-4)
    assert timer.timed == ["fused", "unfused"] * 2
    assert {cfg.x_shape[0] for cfg in _conv_choices()} == {2, 3}
    assert calls["conv2d_bn_act_eval"] == 2, calls


@pytest.mark.parametrize("winner", ["fused", "unfused"])
def test_a_blocks_later_calls_reuse_its_choice_without_rebuilding_the_key(
        monkeypatch, measuring, timer, calls, winner):
    """A block memoises auto's choice per call shape (x's shape and strides, gradients,
    batch statistics): repeated calls cost a dict lookup, not the full configuration key;
    a new shape or gradient need builds it again. A stale choice after the conv is
    changed in place can only cost speed: the fused conv's own checks still run."""
    timer.times = {"fused": 1.0, "unfused": 2.0} if winner == "fused" else {"fused": 2.0, "unfused": 1.0}
    keys = []
    real = cba._config_key
    monkeypatch.setattr(cba, "_config_key", lambda *a: keys.append(1) or real(*a))
    block, twin = _make()
    x = torch.randn(SHAPE, device=DEVICE)
    for _ in range(3):
        block(x)
    assert len(keys) == 1
    block(torch.randn((3,) + SHAPE[1:], device=DEVICE))
    with torch.no_grad():
        block(x)
    assert len(keys) == 3
    block.conv.padding_mode = twin[0].padding_mode = "reflect"  # the fused conv does not apply
    before = dict(calls)
    torch.testing.assert_close(block(x), twin(x), atol=1e-5, rtol=1e-4)
    assert calls == before
