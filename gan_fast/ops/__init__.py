"""torch.library custom ops: schema, fake (meta) implementation, autograd, dispatch.

Each op is opaque to torch.compile (it sees the fake implementation), and picks
its backend at run time through gan_fast.backends.
"""
from gan_fast.ops import bn_act, conv_bn_act, gan_loss  # noqa: F401  (registers the ops)
from gan_fast.ops import in_act  # noqa: F401  (InstanceNorm + activation on the bn_act ops)
from gan_fast.ops import conv_act, conv_in_act  # noqa: F401  (norm-free and InstanceNorm fused convs)
from gan_fast.ops import conv_block  # noqa: F401  (the blocks' entry point: fused_block)
from gan_fast.ops import double_backward  # noqa: F401  (the create_graph=True backward of every op)
