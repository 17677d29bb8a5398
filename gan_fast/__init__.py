"""gan_fast: fused kernels that make GAN training in PyTorch faster.

Drop-in modules (``gan_fast.nn``), a functional API (``gan_fast.functional``),
``fuse(model)`` / ``unfuse(model)`` for existing models, and backend selection
(``set_backend`` / ``use_backend`` / ``GAN_FAST_BACKEND``).
"""
from gan_fast import ops  # noqa: F401  (registers the custom ops)
from gan_fast import functional, nn
from gan_fast.backends import BackendUnavailable, set_backend, use_backend
from gan_fast.fuse import FuseReport, fuse, unfuse

__version__ = "0.1.0"  # the only copy: pyproject.toml reads it (tool.setuptools.dynamic)
__all__ = ["functional", "nn", "fuse", "unfuse", "FuseReport", "set_backend", "use_backend",
           "BackendUnavailable", "__version__"]
