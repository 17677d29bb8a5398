"""Backend implementations of the kernel contract (see ``gan_fast.reference``).

* ``gan_fast.kernels.cpp``: the compiled C++/CUDA extension ``gan_fast._C``
  (backend names ``"cpu"`` and ``"cuda"``).
* ``gan_fast.kernels.triton``: Triton kernels (backend name ``"triton"``).

Only ``gan_fast.backends`` picks among them; nothing else imports these directly.
"""
