"""Triton backend: the kernel contract of ``gan_fast.reference`` on GPUs
(and on CPU tensors under ``TRITON_INTERPRET=1``)."""
from .bn_act import bn_act_bwd, bn_act_eval_fwd, bn_act_train_fwd
from .gan_loss import gan_loss_fwd

__all__ = ["bn_act_train_fwd", "bn_act_eval_fwd", "bn_act_bwd", "gan_loss_fwd"]
