"""Input validation shared by the functional API: clear errors before any kernel runs."""
from __future__ import annotations

import torch

from gan_fast._formats import DTYPES as FLOAT_DTYPES  # the one list (gan_fast._formats)


def tensor(name, t, *, dim=None, dtypes=FLOAT_DTYPES):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D (N, C, H, W), got {t.dim()}-D with shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")


def same_device(ref_name, ref, **others):
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}: "
                             "move them to the same device")


def per_channel(c, x_name, **tensors):
    for name, t in tensors.items():
        if t is None:
            continue
        tensor(name, t, dtypes=None)
        if t.dim() != 1 or t.shape[0] != c:
            raise ValueError(f"{name} must have shape ({c},) to match the {c} channels of {x_name}, "
                             f"got {tuple(t.shape)} (check num_features / out_channels)")


def param_dtype(name, t, x):
    if t is not None and t.dtype not in (torch.float32, x.dtype):
        raise TypeError(f"{name} must be float32 or the input's dtype {x.dtype}, got {t.dtype}")


def bn_eps(eps, batch_stats: bool):
    """F.batch_norm's rule for eps (with its messages): > 0 with batch statistics, >= 0 else."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__} {eps!r}")
    if batch_stats and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")


def momentum(value):
    """BatchNorm's momentum as a float, or None (cumulative average); a clear TypeError else."""
    if value is None or type(value) is float:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"momentum must be a float or None, got {type(value).__name__} {value!r}")
    return float(value)
