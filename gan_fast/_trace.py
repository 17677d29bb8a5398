"""How a model calls its modules: what ``gan_fast.fuse`` needs to know to fuse safely.

Both recorders describe one forward as a list of ``Call`` (one per module call, in call
order), each saying where it was called from, what its argument was and what used its
output:

* ``run_calls(model, args, kwargs)`` runs ``model(*args, **kwargs)`` once on fake tensors
  (``FakeTensorMode``: shapes, dtypes and devices, no data, no kernels), with every
  parameter and buffer replaced by a fake copy, so the model's tensors, BatchNorm
  statistics and the RNG are untouched (and the model's own hooks do not run). Python control flow runs as written; control flow
  on tensor *values* (``if x.sum() > 0``) raises, since fake tensors have none. Module
  calls are recorded by temporary forward hooks on the model's submodules, every other
  torch operation by a ``TorchFunctionMode``.
* ``fx_calls(model)`` reads the same from a ``torch.fx`` symbolic trace (no inputs, but
  no control flow on the inputs either); the caller is then the parent module's path.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import NamedTuple

import torch
import torch.fx
from torch import Tensor, nn
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

__all__ = ["Call", "Empty", "run_calls", "fx_calls", "analyse"]

_GUESSED_SIZES = (1, 4, 8, 16, 32, 64, 128, 256)
_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
               "_backward_pre_hooks")


class Empty(NamedTuple):
    """An input for ``run_calls`` made only as a fake tensor (no memory is allocated)."""
    shape: tuple
    dtype: torch.dtype
    device: torch.device


@dataclasses.dataclass(eq=False)
class Call:
    """One call of a submodule during one forward.

    path: the module's qualified name in the model ("" is the model itself).
    frame: where it was called from (the enclosing ``Call``, or for fx the parent path);
        compare with ``==``.
    simple: called with one positional tensor argument and no keyword arguments.
    src: the ``Call`` in the same frame whose output that argument is, else None.
    uses: everything that used the output in the calling frame: a ``Call`` that took
        it as an argument, or a string naming another use (an operation, a return).
    """
    path: str
    frame: object
    simple: bool
    src: "Call | None"
    uses: list = dataclasses.field(default_factory=list)
    input_ids: frozenset = frozenset()
    first_read: object = None  # run_calls only: the first leaf module Call or function, in
    #                            any frame, that read the output (None: nothing, or fx)


def _name(func) -> str:
    return getattr(func, "__name__", None) or str(func)


class _Recorder(TorchFunctionMode):
    """Records module calls (via hooks) and the uses of their outputs (via torch functions).

    A tensor object stands for the output of the module call that last returned it (an
    in-place activation returns its input: from then on the object is the activation's).
    A use counts in the frame that made the call; uses inside a module that took the tensor
    as an argument (BatchNorm's own ops on its input) belong to that module's call. Apart
    from that, each call's ``first_read`` is the first operation anywhere that read its
    output: a leaf module's call or a torch function (passing a tensor on to a module that
    has submodules is not a read).
    """

    def __init__(self, paths):
        super().__init__()
        self.paths, self.calls, self.stack, self.producer, self.keep = paths, [], [], {}, []

    def _use(self, t, user, reads=True):
        p = self.producer.get(id(t))
        if p is None:
            return
        if reads and p.first_read is None:
            p.first_read = user
        if (self.stack[-1] if self.stack else None) is not p.frame:
            start = self.stack.index(p.frame) + 1 if p.frame in self.stack else 0
            if any(id(t) in c.input_ids for c in self.stack[start:]):
                return
        p.uses.append(user)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, Tensor):
                where = self.stack[-1].path if self.stack else ""
                self._use(t, f"the function call {_name(func)}() in {where or 'the model'}")
        return func(*args, **kwargs)

    def pre_hook(self, module, args, kwargs):
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        frame = self.stack[-1] if self.stack else None
        simple = len(args) == 1 and not kwargs and isinstance(args[0], Tensor)
        src = self.producer.get(id(args[0])) if simple else None
        call = Call(self.paths[id(module)], frame, simple, src if src is not None and src.frame is frame else None,
                    input_ids=frozenset(id(t) for t in tensors))
        leaf = not module._modules
        for t in tensors:
            self._use(t, call, reads=leaf)
        self.calls.append(call)
        self.stack.append(call)

    def post_hook(self, module, args, kwargs, output):
        call = self.stack.pop()
        for t in tree_leaves(output):
            if isinstance(t, Tensor):
                p = self.producer.get(id(t))
                if p is not None and p.frame is call:
                    p.uses.append(f"the return value of {call.path or 'the model'}")
                self.producer[id(t)] = call
                self.keep.append(t)  # ids stay unique while the record lives


@contextlib.contextmanager
def _quiet_fake_tensor_log():
    """FakeTensorMode logs a traceback for every shape error before raising it; the error
    raised is what the analysis reports (a guessed input that does not fit is expected)."""
    logger = logging.getLogger("torch._subclasses.fake_tensor")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def run_calls(model: nn.Module, args: tuple, kwargs: dict | None = None) -> list:
    """The module calls of ``model(*args, **kwargs)`` run on fake tensors (module docstring).

    args / kwargs: what forward takes; tensors are replaced by fake copies, ``Empty``
    by a fake tensor of that shape.

    Raises what forward raises (e.g. ``DataDependentOutputException`` for control flow on
    tensor values, a shape error for inputs the model does not take).
    """
    paths = {id(m): name for name, m in model.named_modules()}
    rec = _Recorder(paths)
    handles = []
    state = {**dict(model.named_parameters(remove_duplicate=False)),
             **dict(model.named_buffers(remove_duplicate=False))}
    # Tensors forward keeps as plain attributes (spectral_norm's weight) must not stay fake.
    attrs = [(m, {k: v for k, v in vars(m).items() if isinstance(v, Tensor)}) for m in model.modules()]
    # The user's hooks do not run on the fake tensors (no side effects; a chain whose
    # modules carry hooks is never fused anyway); the recorder's run alone.
    hooks = [(m, {k: getattr(m, k) for k in _HOOK_DICTS if hasattr(m, k)}) for m in model.modules()]
    try:
        for m, saved in hooks:
            for k, v in saved.items():
                setattr(m, k, type(v)())
        for m in model.modules():  # the stock methods: fused modules refuse new hooks
            handles.append(nn.Module.register_forward_pre_hook(m, rec.pre_hook, with_kwargs=True))
            handles.append(nn.Module.register_forward_hook(m, rec.post_hook, with_kwargs=True,
                                                           always_call=True))
        with torch.random.fork_rng(devices=[]), _quiet_fake_tensor_log(), \
                FakeTensorMode(allow_non_fake_inputs=True) as mode:
            def fake(v):
                if isinstance(v, Empty):
                    return torch.empty(v.shape, dtype=v.dtype, device=v.device)
                return mode.from_tensor(v) if isinstance(v, Tensor) else v
            state = {k: fake(v) for k, v in state.items()}
            args = tuple(fake(a) for a in args)
            kwargs = {k: fake(v) for k, v in (kwargs or {}).items()}
            with rec:
                torch.func.functional_call(model, state, args, kwargs)
    finally:
        for h in handles:
            h.remove()
        for m, saved in hooks:
            for k, v in saved.items():
                setattr(m, k, v)
        for m, saved in attrs:
            for k in [k for k, v in vars(m).items() if isinstance(v, Tensor) and k not in saved]:
                delattr(m, k)
            vars(m).update(saved)
    return rec.calls


class _FxTracer(torch.fx.Tracer):
    def is_leaf_module(self, m, qualname):
        return super().is_leaf_module(m, qualname) or type(m).__module__.startswith("gan_fast")


def fx_calls(model: nn.Module) -> list:
    """The module calls of a ``torch.fx`` symbolic trace of ``model`` (raises if it fails)."""
    graph = _FxTracer().trace(model)
    calls = {}
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        a = node.args
        simple = len(a) == 1 and not node.kwargs and isinstance(a[0], torch.fx.Node)
        parent = node.target.rpartition(".")[0]
        src = calls.get(a[0]) if simple else None
        calls[node] = Call(node.target, parent, simple, src if src is not None and src.frame == parent else None)
    for node, call in calls.items():
        for user in node.users:
            if user in calls and calls[user].src is call:
                call.uses.append(calls[user])
            elif user.op == "output":
                call.uses.append("the return value of the model")
            else:
                call.uses.append(f"the function call {_name(user.target)}()" if user.op != "call_module"
                                 else f"{user.target} (called with other arguments or from elsewhere)")
    return list(calls.values())


def _in_both_modes(model, record):
    """[(mode, record())] in training and in eval mode; every module's flag is restored
    (set directly: a model's own train() may do more than set it)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        traces = []
        for training in (True, False):
            for m, _ in flags:
                m.training = training
            traces.append(("in training mode" if training else "in eval mode", record()))
        return traces
    finally:
        for m, training in flags:
            m.training = training


def _why(e: Exception) -> str:
    if isinstance(e, DataDependentOutputException):
        return "its control flow depends on tensor values (e.g. `if x.sum() > 0`)"
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160] if text else ''}"


class _TracedSyncBatchNorm(nn.BatchNorm2d):
    """Stands in for an nn.SyncBatchNorm while forward runs on fake tensors: the same call
    (any input of 2+ dims) without stock's refusal of CPU tensors and without collectives."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")


@contextlib.contextmanager
def _sync_bn_traced_plainly(model):
    swapped = [m for m in model.modules() if type(m) is nn.SyncBatchNorm]
    for m in swapped:
        m.__class__ = _TracedSyncBatchNorm
    try:
        yield
    finally:
        for m in swapped:
            m.__class__ = nn.SyncBatchNorm


def analyse(model: nn.Module, example_inputs: tuple | None):
    """How forward calls the modules, in training and in eval mode: ``(traces, how)`` with
    traces ``[(mode, [Call, ...]), ...]`` from the first recorder that works (a run on fake
    tensors with example_inputs, or without them on a guessed input (N=2, the first conv's
    in_channels, S x S); then a torch.fx trace), or ``(None, why none did)``. Each nn.SyncBatchNorm runs
    as a plain BatchNorm meanwhile (no process group needed)."""
    with _sync_bn_traced_plainly(model):
        return _analyse(model, example_inputs)


def _analyse(model, example_inputs):
    failed = []
    if example_inputs is not None:
        try:
            return (_in_both_modes(model, lambda: run_calls(model, example_inputs)),
                    "ran forward on fake tensors with example_inputs, in training and eval mode")
        except Exception as e:
            failed.append(f"forward on fake tensors with example_inputs failed: {_why(e)}")
    else:  # a run sees the order of in-place operations, which an fx graph does not keep
        traces, why = _guessed_run(model)
        if traces is not None:
            return traces, why
        failed += [why] if why else []
    try:
        how = "traced by torch.fx, in training and eval mode"
        return _in_both_modes(model, lambda: fx_calls(model)), "; ".join(failed + [how])
    except Exception as e:
        failed.append(f"torch.fx could not trace it ({_why(e)})")
    return None, "; ".join(failed)


def _guessed_run(model):
    """(traces, how) from a run on a guessed input (N=2, the first conv's in_channels, S x S,
    the first S that runs), or (None, why none ran; '' when the model has no conv)."""
    conv = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))), None)
    if conv is None:
        return None, ""
    whys = {}
    for size in _GUESSED_SIZES:
        x = Empty((2, conv.in_channels, size, size), conv.weight.dtype, conv.weight.device)
        try:
            traces = _in_both_modes(model, lambda: run_calls(model, (x,)))
        except Exception as e:
            whys.setdefault(_why(e), size)
            continue
        return traces, (f"ran forward on fake tensors with a guessed input of shape {x.shape}, "
                        "in training and eval mode")
    return None, (f"no guessed input (2, {conv.in_channels}, S, S), S in {_GUESSED_SIZES}, ran ("
                  + "; ".join(f"S={s}: {w}" for w, s in list(whys.items())[-2:]) + ")")
