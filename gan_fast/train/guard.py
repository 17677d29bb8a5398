"""What stops a run cleanly: SIGINT/SIGTERM (finish the step, save, say where) and
non-finite values (stop, keep the last finite state)."""
from __future__ import annotations

import signal
import threading
from typing import Iterable, Optional

import torch

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal after saving its state to ``path`` at ``step``."""

    def __init__(self, signum: int, step: int, path):
        self.signum, self.step, self.path = signum, step, path
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; "
                         f"checkpoint saved to {path}")


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or weight; ``path`` holds the last finite state
    (at ``good_step``)."""

    def __init__(self, message: str, step: int, good_step: int, path):
        self.step, self.good_step, self.path = step, good_step, path
        super().__init__(message)


class StopSignals:
    """Context manager: while inside, SIGINT and SIGTERM only set :attr:`received` (the
    loop stops after the step in progress); a second one raises KeyboardInterrupt at
    once. The previous handlers come back on exit. Outside the main thread (where Python
    cannot install handlers) it does nothing."""

    def __init__(self):
        self.received: Optional[int] = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: aborted")
        self.received = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every floating-point tensor holds only finite values (one sync)."""
    flags = [t.isfinite().all() for t in tensors
             if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not flags:
        return True
    return bool(torch.stack([f.to(flags[0].device) for f in flags]).all())
